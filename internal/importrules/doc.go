// Package importrules holds no code: its test checks the import rules of
// DESIGN.md ("Packages and the way imports go") over `go list -deps`, so a
// change that breaks them fails `go test ./...` and CI.
package importrules
