package vaultfetch_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent/vaultfetch"
)

// FuzzParseCredentials: any input is either refused with an error that
// does not quote it, or decodes to credentials that encode back the same.
func FuzzParseCredentials(f *testing.F) {
	for _, s := range []string{`{"username":"u","password":"p"}`, `{}`, `null`, `{"username":1}`, `[`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := vaultfetch.ParseCredentials(in)
		if err != nil {
			if len(in) >= 12 {
				require.NotContains(t, err.Error(), string(in))
			}
			return
		}
		b, err := json.Marshal(c)
		require.NoError(t, err)
		again, err := vaultfetch.ParseCredentials(b)
		require.NoError(t, err)
		require.Equal(t, c, again)
	})
}
