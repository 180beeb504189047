package vaulttest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// shared are the servers of this test binary, for the packages whose
// TestMain is Main.
var shared Servers

// Main runs the tests of a package, then stops the servers NeedVault and
// NeedDatabase started, and exits; call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	shared.Stop()
	os.Exit(code)
}

// NeedVault returns the test binary's Vault dev server, starting it on
// first use; see Servers.Vault.
func NeedVault(t testing.TB) *Vault { t.Helper(); return shared.Vault(t) }

// NeedDatabase returns the test binary's Vault and PostgreSQL with the
// database secrets engine mounted at "database" and the connection
// DBConnection; see Servers.Database.
func NeedDatabase(t testing.TB) (*Vault, *Postgres) { t.Helper(); return shared.Database(t) }

// Login opens and closes a connection as user/password; nil when the
// login worked.
func (p *Postgres) Login(ctx context.Context, user, password string) error {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://%s:%d/postgres?sslmode=disable&connect_timeout=10", p.Host, p.Port))
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

// Exec runs SQL as the superuser and fails t when it fails.
func (p *Postgres) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), p.URL("postgres"))
	if err != nil {
		t.Fatalf("postgres: connect as the superuser: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("postgres: sql %s: %v", sql, err)
	}
}

// Count runs a query that returns one number as the superuser.
func (p *Postgres) Count(t testing.TB, sql string, args ...any) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), p.URL("postgres"))
	if err != nil {
		t.Fatalf("postgres: connect as the superuser: %v", err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("postgres: sql %s: %v", sql, err)
	}
	return n
}

// IsAuthFailure reports whether err is PostgreSQL refusing a login
// (invalid password, or the role does not exist any more).
func IsAuthFailure(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "28P01") || strings.Contains(s, "password authentication failed") || strings.Contains(s, "28000")
}
