package vaultfetch_test

import (
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
)

// The servers are started by the first test that needs them and stopped by
// TestMain. A test that needs one that cannot be found fails with how to
// get it (vaulttest says), never skips.
var servers vaulttest.Servers

func TestMain(m *testing.M) { servers.Main(m) }

func needVault(t testing.TB) *vaulttest.Vault { t.Helper(); return servers.Vault(t) }

const dbConnection = vaulttest.DBConnection

// needDatabase mounts the database secrets engine at "database" with a
// connection to the shared PostgreSQL.
func needDatabase(t testing.TB) (*vaulttest.Vault, *vaulttest.Postgres) {
	t.Helper()
	return servers.Database(t)
}

// clientWithToken is a new client on the dev server with token.
func clientWithToken(t testing.TB, token string) *api.Client {
	t.Helper()
	v := needVault(t)
	conf := api.DefaultConfig()
	conf.Address = v.Addr
	conf.MaxRetries = 0
	c, err := api.NewClient(conf)
	require.NoError(t, err)
	c.SetToken(token)
	return c
}
