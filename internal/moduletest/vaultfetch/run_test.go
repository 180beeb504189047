package vaultfetch_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/vaultfetch"
	"github.com/rekey-dev/rekey/handlers/vault"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// runAgent starts an agent of acme whose per-run credentials come from
// the dynamic role role (secret "run-db").
func runAgent(t *testing.T, role string) (*agent.Agent, *vaultfetch.Database) {
	return runAgentOf(t, "acme", role)
}

func runAgentOf(t *testing.T, tenant, role string) (*agent.Agent, *vaultfetch.Database) {
	t.Helper()
	v, _ := vaulttest.NeedDatabase(t)
	d, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{RunRoles: map[string]string{"run-db": role}})
	require.NoError(t, err)
	srv := testutil.StartNATS(t, -1, t.TempDir())
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(t.Context(), jetstream.StreamConfig{Name: schemas.StreamInvalidate,
		Subjects: []string{schemas.SubjectInvalidateAll}, MaxMsgsPerSubject: 1, AllowDirect: true})
	require.NoError(t, err)
	a, err := agent.New(nc, d, agent.Config{Tenant: tenant, Instance: "runner-1", RunIssuer: d})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	require.NoError(t, a.Start(t.Context()))
	return a, d
}

// pgRoleExists reports whether PostgreSQL has a role named user.
func pgRoleExists(t testing.TB, pg *vaulttest.Postgres, user string) bool {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_roles WHERE rolname = $1", user).Scan(&n))
	return n > 0
}

// TestRunsGetTheirOwnDatabaseUsers: 200 concurrent runs each get a
// distinct PostgreSQL user that logs in, the same one for every Get of a
// run; after End each user is gone from PostgreSQL and the run refuses.
func TestRunsGetTheirOwnDatabaseUsers(t *testing.T) {
	_, pg := vaulttest.NeedDatabase(t)
	role := testutil.Uniq("acme-run")
	dynamicRole(t, role, "1h", "2h")
	a, _ := runAgent(t, role)
	ctx := t.Context()

	const n = 200
	runs := make([]*agent.Run, n)
	users := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			r := a.BeginRun(ctx, fmt.Sprintf("run-%d", i), agent.RunTTL(time.Minute))
			runs[i] = r
			s, err := r.Get(ctx, "run-db")
			if err != nil {
				errs <- err
				return
			}
			again, err := r.Get(ctx, "run-db")
			if err != nil || again.Version != s.Version {
				errs <- fmt.Errorf("run %d: a second Get gave other credentials (%v)", i, err)
				return
			}
			c, err := vaultfetch.ParseCredentials(s.Value)
			if err != nil {
				errs <- err
				return
			}
			users[i] = c.Username
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	seen := map[string]bool{}
	for _, u := range users {
		require.False(t, seen[u], "user %s given to two runs", u)
		seen[u] = true
	}
	// Shared secrets still come from the agent (here: not configured).
	_, err := runs[0].Get(ctx, "other")
	require.ErrorIs(t, err, agent.ErrNotFound)

	for i, r := range runs {
		require.NoError(t, r.End())
		require.False(t, pgRoleExists(t, pg, users[i]), "user of run %d still in PostgreSQL after End", i)
	}
	_, err = runs[0].Get(ctx, "run-db")
	require.ErrorIs(t, err, agent.ErrRunEnded)
}

// TestRunLeftOpenExpires: a run never ended loses its user after its TTL,
// and Vault's lease of it is no longer than the run.
func TestRunLeftOpenExpires(t *testing.T) {
	v, pg := vaulttest.NeedDatabase(t)
	role := testutil.Uniq("acme-run")
	dynamicRole(t, role, "1h", "2h")
	a, _ := runAgent(t, role)
	ctx := t.Context()
	r := a.BeginRun(ctx, "forgotten", agent.RunTTL(3*time.Second))
	s, err := r.Get(ctx, "run-db")
	require.NoError(t, err)
	c, err := vaultfetch.ParseCredentials(s.Value)
	require.NoError(t, err)
	require.NoError(t, pg.Login(ctx, c.Username, c.Password))
	lease, err := v.Client.Sys().LookupWithContext(ctx, s.Version)
	require.NoError(t, err)
	ttl, err := lease.Data["ttl"].(interface{ Int64() (int64, error) }).Int64()
	require.NoError(t, err)
	require.LessOrEqual(t, ttl, int64(3), "the lease is bound to the run")
	require.Eventually(t, func() bool { return !pgRoleExists(t, pg, c.Username) }, 15*time.Second, 100*time.Millisecond)
	_, err = r.Get(ctx, "run-db")
	require.True(t, errors.Is(err, agent.ErrRunEnded), "%v", err)
}

// BenchmarkRun: one run begun, its first Get (a new PostgreSQL user made
// by Vault, its lease bound to the run) and its End (the user dropped),
// against the real Vault and PostgreSQL; reports runs/s and the first
// Get's latency.
func BenchmarkRun(b *testing.B) {
	role := testutil.Uniq("acme-run")
	dynamicRole(b, role, "1h", "2h")
	v, _ := vaulttest.NeedDatabase(b)
	d, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{RunRoles: map[string]string{"run-db": role}})
	require.NoError(b, err)
	srv := testutil.StartNATS(b, -1, b.TempDir())
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(b, err)
	defer nc.Close()
	a, err := agent.New(nc, d, agent.Config{Tenant: "acme", Instance: "bench-1", RunIssuer: d})
	require.NoError(b, err)
	require.NoError(b, a.Start(context.Background()))
	defer a.Close()
	ctx := context.Background()
	var first time.Duration
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		r := a.BeginRun(ctx, fmt.Sprintf("bench-%d", i), agent.RunTTL(time.Minute))
		t0 := time.Now()
		if _, err := r.Get(ctx, "run-db"); err != nil {
			b.Fatal(err)
		}
		first += time.Since(t0)
		if err := r.End(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "runs/s")
	b.ReportMetric(float64(first.Microseconds())/float64(b.N)/1000, "first-get-ms")
}

// TestKillSwitchRevokesOpenRuns: the Vault backend's tenant revocation
// (the kill switch's Vault part) revokes every open run's lease of the
// tenant, counts them, and every run's user is gone; another tenant's run
// keeps its user.
func TestKillSwitchRevokesOpenRuns(t *testing.T) {
	v, pg := vaulttest.NeedDatabase(t)
	role := testutil.Uniq("killrun-run")
	dynamicRole(t, role, "1h", "2h")
	other := testutil.Uniq("keeprun-run")
	dynamicRole(t, other, "1h", "2h")
	a, _ := runAgentOf(t, "killrun", role)
	b, _ := runAgentOf(t, "keeprun", other)
	ctx := t.Context()
	var users []string
	for i := range 20 {
		s, err := a.BeginRun(ctx, fmt.Sprintf("run-%d", i)).Get(ctx, "run-db")
		require.NoError(t, err)
		c, err := vaultfetch.ParseCredentials(s.Value)
		require.NoError(t, err)
		users = append(users, c.Username)
	}
	s, err := b.BeginRun(ctx, "kept").Get(ctx, "run-db")
	require.NoError(t, err)
	kept, err := vaultfetch.ParseCredentials(s.Value)
	require.NoError(t, err)

	require.NoError(t, os.Setenv("REKEY_TEST_VAULT_ROOT_TOKEN", v.RootToken))
	backend, err := vault.New(ctx, vault.Config{Address: v.Addr, Timeout: 10 * time.Second,
		Auth: vault.AuthConfig{Method: vault.AuthToken, TokenEnv: "REKEY_TEST_VAULT_ROOT_TOKEN"}}, nil)
	require.NoError(t, err)
	n, err := backend.RevokeTenant(ctx, "killrun")
	require.NoError(t, err)
	require.Equal(t, 20, n, "the report counts every open run's lease")
	for _, u := range users {
		require.False(t, pgRoleExists(t, pg, u), "user %s of an open run survived the kill switch", u)
	}
	require.True(t, pgRoleExists(t, pg, kept.Username), "another tenant's run keeps its user")
}
