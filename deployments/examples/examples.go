// Package examples embeds the example configuration so that rekeyd runs
// the embedded default with no file on disk.
package examples

import _ "embed"

// RekeyYAML is deployments/examples/rekey.yaml.
//
//go:embed rekey.yaml
var RekeyYAML []byte
