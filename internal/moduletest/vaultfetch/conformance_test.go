package vaultfetch_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/agenttest"
	"github.com/rekey-dev/rekey/fanout/agent/vaultfetch"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
)

// kvSource is the Fetcher suite's source for f reading the dev server's
// KV v2 mount as rekey's Vault backend writes it.
func kvSource(f agent.Fetcher) agenttest.Source {
	put := func(t testing.TB, tenant, secret string) {
		version := testutil.Uniq("v")
		writeKV(t, "tenants/"+tenant+"/"+secret, rekeyData(tenant, version, "VALUE-"+tenant+"-"+version+"-s3cr3t"))
	}
	return agenttest.Source{
		Fetcher: f,
		Tenant:  "acme",
		Other:   "globex",
		New: func(t testing.TB) string {
			secret := testutil.Uniq("conf")
			put(t, "acme", secret)
			put(t, "globex", secret)
			return secret
		},
		Missing: "never-written",
		Rotate:  func(t testing.TB, secret string) { put(t, "acme", secret) },
	}
}

// TestKVConformance runs the Fetcher suite on KV.
func TestKVConformance(t *testing.T) {
	t.Parallel()
	agenttest.Run(t, kvSource(newKV(t, vaultfetch.KVConfig{})))
}

// TestMuxConformance runs the Fetcher suite on a Mux that routes a
// database secret to Database and the rest to KV.
func TestMuxConformance(t *testing.T) {
	t.Parallel()
	v, _ := vaulttest.NeedDatabase(t)
	role := testutil.Uniq("acme-mux-conf")
	dynamicRole(t, role, "1m", "5m")
	db, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{DynamicRoles: map[string]string{"reports-db": role}})
	require.NoError(t, err)
	mux, err := vaultfetch.NewMux(vaultfetch.MuxConfig{Routes: map[string]agent.Fetcher{"reports-db": db}, Default: newKV(t, vaultfetch.KVConfig{})})
	require.NoError(t, err)
	agenttest.Run(t, kvSource(mux))
}

// TestDatabaseConformance runs the Fetcher suite on Database with dynamic
// roles: every fetch makes new credentials.
func TestDatabaseConformance(t *testing.T) {
	t.Parallel()
	v, _ := vaulttest.NeedDatabase(t)
	// Database serves the secrets of its configuration: a pool of them,
	// one role each, handed out by New.
	const pool = 10
	roles := map[string]string{}
	for i := range pool {
		role := testutil.Uniq("acme-conf")
		dynamicRole(t, role, "1m", "5m")
		roles[fmt.Sprintf("db-%d", i)] = role
	}
	d, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{DynamicRoles: roles})
	require.NoError(t, err)
	var next atomic.Int64
	agenttest.Run(t, agenttest.Source{
		Fetcher: d,
		Tenant:  "acme",
		Other:   "globex",
		New: func(t testing.TB) string {
			n := next.Add(1) - 1
			if n >= pool {
				t.Fatalf("the pool of %d configured secrets is used up", pool)
			}
			return fmt.Sprintf("db-%d", n)
		},
		Missing: "unconfigured",
		Dynamic: true,
	})
}
