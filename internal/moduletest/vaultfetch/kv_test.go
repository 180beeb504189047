package vaultfetch_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/vaultfetch"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// writeKV writes a new KV v2 version the way rekey's Vault backend does:
// the value next to rekey_version and rekey_tenant.
func writeKV(t testing.TB, path string, data map[string]any) {
	t.Helper()
	_, err := vaulttest.NeedVault(t).Client.Logical().WriteWithContext(t.Context(), "secret/data/"+path, map[string]any{"data": data})
	require.NoError(t, err)
}

func rekeyData(tenant, version, value string) map[string]any {
	return map[string]any{"value": value, "rekey_version": version, "rekey_tenant": tenant, "rekey_request_id": "req-" + version}
}

func newKV(t testing.TB, cfg vaultfetch.KVConfig) *vaultfetch.KV {
	t.Helper()
	kv, err := vaultfetch.NewKV(vaulttest.NeedVault(t).Client, cfg)
	require.NoError(t, err)
	return kv
}

// TestKVFetch: versions written as rekey writes them are read with their
// rekey_version; a value rekey did not write gets kv-<n>; overrides of
// path and field apply; missing, deleted and foreign entries are refused.
func TestKVFetch(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	secret := testutil.Uniq("openai-key")
	kv := newKV(t, vaultfetch.KVConfig{})
	require.Equal(t, "secret/data/tenants/acme/"+secret, kv.Path("acme", secret))

	writeKV(t, "tenants/acme/"+secret, rekeyData("acme", "v1", "VALUE-1-s3cr3t"))
	s, err := kv.Fetch(ctx, "acme", secret)
	require.NoError(t, err)
	require.Equal(t, "v1", s.Version)
	require.Equal(t, "VALUE-1-s3cr3t", string(s.Value))

	writeKV(t, "tenants/acme/"+secret, rekeyData("acme", "v2", "VALUE-2-s3cr3t"))
	s, err = kv.Fetch(ctx, "acme", secret)
	require.NoError(t, err)
	require.Equal(t, "v2", s.Version)
	require.Equal(t, "VALUE-2-s3cr3t", string(s.Value))

	// Written by someone else: the KV version names it, as in the backend.
	writeKV(t, "tenants/acme/"+secret, map[string]any{"value": "VALUE-3-s3cr3t"})
	s, err = kv.Fetch(ctx, "acme", secret)
	require.NoError(t, err)
	require.Equal(t, "kv-3", s.Version)

	// Deleted live version.
	_, err = vaulttest.NeedVault(t).Client.Logical().DeleteWithContext(ctx, "secret/data/tenants/acme/"+secret)
	require.NoError(t, err)
	_, err = kv.Fetch(ctx, "acme", secret)
	require.ErrorIs(t, err, agent.ErrNotFound)

	// Per-secret path and field.
	other := testutil.Uniq("legacy")
	writeKV(t, "apps/acme/"+other, map[string]any{"api_key": "VALUE-legacy-s3cr3t", "rekey_version": "r7", "rekey_tenant": "acme"})
	kv2 := newKV(t, vaultfetch.KVConfig{
		Paths:  map[string]string{other: "apps/{tenant}/{secret}"},
		Fields: map[string]string{other: "api_key"},
	})
	s, err = kv2.Fetch(ctx, "acme", other)
	require.NoError(t, err)
	require.Equal(t, "r7", s.Version)
	require.Equal(t, "VALUE-legacy-s3cr3t", string(s.Value))
	_, err = kv.Fetch(ctx, "acme", other) // not at the default path
	require.ErrorIs(t, err, agent.ErrNotFound)

	// Missing field.
	nofield := testutil.Uniq("nofield")
	writeKV(t, "tenants/acme/"+nofield, map[string]any{"other": "x", "rekey_version": "v1", "rekey_tenant": "acme"})
	_, err = kv.Fetch(ctx, "acme", nofield)
	require.ErrorIs(t, err, agent.ErrNotFound)
	require.ErrorContains(t, err, `field "value"`)
}

func TestKVNotFound(t *testing.T) {
	t.Parallel()
	_, err := newKV(t, vaultfetch.KVConfig{}).Fetch(t.Context(), "acme", testutil.Uniq("never-written"))
	require.ErrorIs(t, err, agent.ErrNotFound)
}

// TestKVWrongTenant: a path that leads to an entry of another tenant is
// refused, and the error does not hold the value.
func TestKVWrongTenant(t *testing.T) {
	t.Parallel()
	secret := testutil.Uniq("shared")
	writeKV(t, "shared/"+secret, rekeyData("globex", "v1", "VALUE-globex-s3cr3t"))
	kv := newKV(t, vaultfetch.KVConfig{PathTemplate: "shared/{secret}"})
	_, err := kv.Fetch(t.Context(), "acme", secret)
	require.ErrorIs(t, err, vaultfetch.ErrWrongTenant)
	require.NotContains(t, err.Error(), "VALUE-globex-s3cr3t")
	s, err := kv.Fetch(t.Context(), "globex", secret)
	require.NoError(t, err)
	require.Equal(t, "v1", s.Version)
}

// TestKVPermissionDenied: a token whose policy does not reach the path is
// refused with ErrPermissionDenied, without the value.
func TestKVPermissionDenied(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	ctx := t.Context()
	secret := testutil.Uniq("denied")
	writeKV(t, "tenants/globex/"+secret, rekeyData("globex", "v1", "VALUE-denied-s3cr3t"))
	writeKV(t, "tenants/acme/"+secret, rekeyData("acme", "v1", "VALUE-allowed-s3cr3t"))
	policy := testutil.Uniq("acme-read")
	require.NoError(t, v.Client.Sys().PutPolicyWithContext(ctx, policy, `path "secret/data/tenants/acme/*" { capabilities = ["read"] }`))
	tok, err := v.Client.Auth().Token().CreateWithContext(ctx, &api.TokenCreateRequest{Policies: []string{policy}, TTL: "10m"})
	require.NoError(t, err)
	kv, err := vaultfetch.NewKV(clientWithToken(t, tok.Auth.ClientToken), vaultfetch.KVConfig{})
	require.NoError(t, err)

	s, err := kv.Fetch(ctx, "acme", secret)
	require.NoError(t, err)
	require.Equal(t, "VALUE-allowed-s3cr3t", string(s.Value))
	_, err = kv.Fetch(ctx, "globex", secret)
	require.ErrorIs(t, err, vaultfetch.ErrPermissionDenied)
	require.NotErrorIs(t, err, agent.ErrNotFound)
	require.NotContains(t, err.Error(), "s3cr3t")
}

func TestKVConfigValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  vaultfetch.KVConfig
		err  string
	}{
		{"defaults", vaultfetch.KVConfig{}, ""},
		{"per-tenant mount", vaultfetch.KVConfig{Mount: "kv-{tenant}", PathTemplate: "{secret}"}, ""},
		{"no secret", vaultfetch.KVConfig{PathTemplate: "tenants/{tenant}/x"}, "must contain {secret}"},
		{"dotdot", vaultfetch.KVConfig{PathTemplate: "../{tenant}/{secret}"}, "segment"},
		{"unknown placeholder", vaultfetch.KVConfig{PathTemplate: "{team}/{secret}"}, "placeholder"},
		{"secret in mount", vaultfetch.KVConfig{Mount: "{secret}"}, "placeholder"},
		{"bad override", vaultfetch.KVConfig{Paths: map[string]string{"k": "a//{secret}"}}, "segment"},
		{"bad field", vaultfetch.KVConfig{Fields: map[string]string{"k": "a b"}}, "field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.err)
		})
	}
}

// TestAgentReadsVaultKV: an agent reading Vault KV with the fetcher serves
// the cached version until rekey publishes an invalidation, then the new
// one.
func TestAgentReadsVaultKV(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	secret := testutil.Uniq("api-key")
	writeKV(t, "tenants/acme/"+secret, rekeyData("acme", "v1", "VALUE-agent-1-s3cr3t"))

	srv := testutil.StartNATS(t, -1, t.TempDir())
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name: schemas.StreamInvalidate, Subjects: []string{schemas.SubjectInvalidateAll},
		MaxMsgsPerSubject: 1, AllowDirect: true,
	})
	require.NoError(t, err)

	logs := &testutil.SyncBuffer{}
	applied := make(chan agent.Invalidated, 16)
	a, err := agent.New(nc, newKV(t, vaultfetch.KVConfig{}), agent.Config{
		Tenant: "acme", Instance: "acme-agent-1",
		Logger:       slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnInvalidate: func(ev agent.Invalidated) { applied <- ev },
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	require.NoError(t, a.Start(ctx))

	s, err := a.Get(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, "v1", s.Version)
	require.Equal(t, "VALUE-agent-1-s3cr3t", string(s.Value))

	// rekey rotates: a new KV version, then the invalidation.
	writeKV(t, "tenants/acme/"+secret, rekeyData("acme", "v2", "VALUE-agent-2-s3cr3t"))
	s, err = a.Get(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, "v1", s.Version, "served from the cache until invalidated")

	inv := schemas.Invalidation{Tenant: "acme", Secret: secret, Kind: schemas.InvalidationRotated, Version: "v2",
		Reason: "test", RequestID: schemas.NewULID(), PublishedAt: time.Now().UTC()}
	ev, err := schemas.NewEvent("rekey/fanout", schemas.TypeInvalidation, "acme", "acme/"+secret, inv)
	require.NoError(t, err)
	b, err := ev.Encode()
	require.NoError(t, err)
	_, err = js.Publish(ctx, schemas.InvalidateSubject("acme", secret), b)
	require.NoError(t, err)
	select {
	case got := <-applied:
		require.Equal(t, secret, got.Invalidation.Secret)
	case <-time.After(10 * time.Second):
		t.Fatal("invalidation not applied within 10s")
	}

	s, err = a.Get(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, "v2", s.Version)
	require.Equal(t, "VALUE-agent-2-s3cr3t", string(s.Value))

	require.NoError(t, a.Close())
	for _, v := range []string{"VALUE-agent-1-s3cr3t", "VALUE-agent-2-s3cr3t"} {
		require.False(t, bytes.Contains([]byte(logs.String()), []byte(v)), "a value leaked into the agent's logs")
	}
	require.NotContains(t, fmt.Sprint(s), "VALUE-agent-2-s3cr3t")
}
