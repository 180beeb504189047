package vaultfetch_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/vaultfetch"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
)

func debugLogger(buf *testutil.SyncBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func requireNoSecret(t *testing.T, text string, values ...string) {
	t.Helper()
	for _, v := range values {
		require.NotEmpty(t, v)
		require.NotContains(t, text, v, "a secret value leaked")
	}
}

// localFetcher stands for another fetcher (rekey's local backend).
type localFetcher struct{}

func (localFetcher) Fetch(_ context.Context, tenant, secret string) (agent.Secret, error) {
	return agent.Secret{Version: "local-1", Value: []byte("LOCAL-" + tenant + "-" + secret)}, nil
}

// TestMux: one agent fetcher reads a Vault KV secret, database credentials
// and everything else from another fetcher.
func TestMux(t *testing.T) {
	t.Parallel()
	v, pg := vaulttest.NeedDatabase(t)
	ctx := t.Context()
	kvSecret := testutil.Uniq("kv-key")
	writeKV(t, "tenants/acme/"+kvSecret, rekeyData("acme", "v9", "VALUE-mux-s3cr3t"))
	role := testutil.Uniq("acme-mux")
	dynamicRole(t, role, "1m", "5m")

	kv := newKV(t, vaultfetch.KVConfig{})
	db, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{DynamicRoles: map[string]string{"reports-db": role}})
	require.NoError(t, err)
	routes := map[string]agent.Fetcher{kvSecret: kv}
	for _, s := range db.Secrets() {
		routes[s] = db
	}
	mux, err := vaultfetch.NewMux(vaultfetch.MuxConfig{Routes: routes, Default: localFetcher{}})
	require.NoError(t, err)

	s, err := mux.Fetch(ctx, "acme", kvSecret)
	require.NoError(t, err)
	require.Equal(t, "v9", s.Version)
	s, err = mux.Fetch(ctx, "acme", "reports-db")
	require.NoError(t, err)
	c := credentials(t, s)
	require.NoError(t, pg.Login(ctx, c.Username, c.Password))
	s, err = mux.Fetch(ctx, "acme", "anything-else")
	require.NoError(t, err)
	require.Equal(t, "local-1", s.Version)

	strict, err := vaultfetch.NewMux(vaultfetch.MuxConfig{Routes: routes})
	require.NoError(t, err)
	_, err = strict.Fetch(ctx, "acme", "anything-else")
	require.ErrorIs(t, err, agent.ErrNotFound)
	require.ErrorIs(t, err, vaultfetch.ErrNotConfigured)

	_, err = vaultfetch.NewMux(vaultfetch.MuxConfig{Routes: map[string]agent.Fetcher{"x": nil}})
	require.ErrorContains(t, err, "nil fetcher")
	_, err = vaultfetch.NewMux(vaultfetch.MuxConfig{Routes: map[string]agent.Fetcher{"Bad Name!": kv}})
	require.Error(t, err)
}
