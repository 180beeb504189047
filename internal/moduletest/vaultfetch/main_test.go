package vaultfetch_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
)

// The servers are started by the first test that needs them and stopped by
// TestMain. A test that needs one that cannot be found fails with how to
// get it (vaulttest says), never skips.
var servers vaulttest.Servers

func TestMain(m *testing.M) {
	code := m.Run()
	servers.Stop()
	os.Exit(code)
}

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

var uniqN struct {
	sync.Mutex
	n int
}

// uniq makes a name no other test uses.
func uniq(prefix string) string {
	uniqN.Lock()
	defer uniqN.Unlock()
	uniqN.n++
	return fmt.Sprintf("%s-%d", prefix, uniqN.n)
}

// pgLogin opens and closes a connection as user/password; nil when the
// login worked.
func pgLogin(ctx context.Context, pg *vaulttest.Postgres, user, password string) error {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://%s:%d/postgres?sslmode=disable&connect_timeout=10", pg.Host, pg.Port))
	if err != nil {
		return err
	}
	cfg.User, cfg.Password = user, password
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

func pgExec(t testing.TB, pg *vaulttest.Postgres, sql string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(t.Context(), sql)
	require.NoError(t, err, "sql: %s", sql)
}
