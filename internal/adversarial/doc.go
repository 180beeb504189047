// Package adversarial holds rekey's attack suite: tests that run a real
// rekeyd (embedded NATS, local backend, the example configuration) and
// attack it from one tenant's agent credentials, from a tenant token and
// from a revoked tenant's stolen agent. Every case asserts the refusal and
// that no stream or KV entry of any tenant changed, and the suite ends with
// a scan of all stored data for every value the attacker saw.
//
// The package has no code outside its tests; it exists so that
// `go test ./...` runs the suite.
package adversarial
