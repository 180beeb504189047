package vaultfetch_test

import (
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
)

// The servers are started by the first test that needs them
// (vaulttest.NeedVault, NeedDatabase) and stopped by TestMain, so
// `go test -run TestConfig` needs neither. A test that needs one that
// cannot be found fails with how to get it, never skips.
func TestMain(m *testing.M) { vaulttest.Main(m) }

// clientWithToken is a new client on the dev server with token.
func clientWithToken(t testing.TB, token string) *api.Client {
	t.Helper()
	v := vaulttest.NeedVault(t)
	conf := api.DefaultConfig()
	conf.Address = v.Addr
	conf.MaxRetries = 0
	c, err := api.NewClient(conf)
	require.NoError(t, err)
	c.SetToken(token)
	return c
}
