// Command vault is HashiCorp Vault v1.14.0 built from the Go module proxy for
// rekey's tests (a dev-mode server only). .ci/vault.sh builds it into
// .cache/bin/vault; this module (go.mod, go.sum) pins what it is built from.
// It is Vault's own main.go without internal.PatchSha1, which a module
// outside Vault cannot import.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
