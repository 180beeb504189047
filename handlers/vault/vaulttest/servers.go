package vaulttest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/rekey-dev/rekey/internal/testutil"
)

// DBConnection is the name of the database connection Servers.Database
// configures.
const DBConnection = "pg"

// Servers starts a Vault dev server and a PostgreSQL cluster lazily, once
// per test binary, for the tests that need them; Stop them in TestMain.
// A test that needs one that cannot be found fails with how to get it,
// never skips.
type Servers struct {
	vault testutil.Lazy[*Vault]
	pg    testutil.Lazy[*Postgres]

	dbOnce sync.Once
	dbErr  error
}

// Vault returns the dev server, starting it on first use.
func (s *Servers) Vault(t testing.TB) *Vault {
	t.Helper()
	return s.vault.Get(t, "a Vault dev server", 90*time.Second, StartVault)
}

// Postgres returns the PostgreSQL cluster, starting it on first use.
func (s *Servers) Postgres(t testing.TB) *Postgres {
	t.Helper()
	return s.pg.Get(t, "PostgreSQL", 120*time.Second, StartPostgres)
}

// Database mounts the database secrets engine at "database" on the dev
// server, with the connection DBConnection to the PostgreSQL cluster, once.
func (s *Servers) Database(t testing.TB) (*Vault, *Postgres) {
	t.Helper()
	v, pg := s.Vault(t), s.Postgres(t)
	s.dbOnce.Do(func() {
		ctx := context.Background()
		if s.dbErr = v.Client.Sys().MountWithContext(ctx, "database", &api.MountInput{Type: "database"}); s.dbErr != nil {
			return
		}
		_, s.dbErr = v.Client.Logical().WriteWithContext(ctx, "database/config/"+DBConnection, map[string]any{
			"plugin_name":    "postgresql-database-plugin",
			"allowed_roles":  "*",
			"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@%s:%d/postgres?sslmode=disable", pg.Host, pg.Port),
			"username":       pg.User,
			"password":       pg.Password,
			// Enough connections for hundreds of credentials made in parallel.
			"max_open_connections": 8,
		})
	})
	if s.dbErr != nil {
		t.Fatalf("database secrets engine: %v", s.dbErr)
	}
	return v, pg
}

// Stop stops whatever was started (safe when nothing was).
func (s *Servers) Stop() {
	s.pg.Value().Stop()
	s.vault.Value().Stop()
}
