package daemon_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/orchestrator"
)

// TestVaultBackendEndToEnd: rekeyd with a real Vault dev server rotates a
// KV v2 secret through the HTTP API, and agents are invalidated with the
// version Vault now holds.
func TestVaultBackendEndToEnd(t *testing.T) {
	ctx := context.Background()
	v, err := vaulttest.StartVault(ctx)
	require.NoError(t, err, "a Vault binary is needed: run `bash .ci/vault.sh` (builds .cache/bin/vault) or set REKEY_VAULT_BIN")
	t.Cleanup(v.Stop)
	t.Setenv("REKEY_TEST_VAULT_TOKEN", v.RootToken)

	cfg := testConfig(t, t.TempDir())
	raw, err := yaml.Marshal(map[string]any{
		"address": v.Addr,
		"auth":    map[string]any{"method": "token", "token_env": "REKEY_TEST_VAULT_TOKEN"},
	})
	require.NoError(t, err)
	cfg.Backends.Vault = raw
	acme := cfg.Tenants["acme"]
	acme.Secrets["stripe-key"] = orchestrator.SecretConfig{Backend: "vault", Generator: orchestrator.GeneratorConfig{Style: "api-key", Length: 40, Prefix: "sk_live_"}}
	cfg.Tenants["acme"] = acme
	require.NoError(t, cfg.Validate())

	d := start(t, cfg, daemonOpts())
	got := make(chan agent.Invalidated, 4)
	newAgent(t, d, "acme", "vault-agent", func(ev agent.Invalidated) {
		if ev.Invalidation.Secret == "stripe-key" {
			got <- ev
		}
	})
	id := rotate(t, d, "acme", "stripe-key")
	var inv agent.Invalidated
	select {
	case inv = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("no invalidation for acme/stripe-key")
	}
	require.Equal(t, id, inv.Invalidation.RequestID)

	code, st := api(t, d.HTTPAddr(), http.MethodGet, "/v1/tenants/acme/secrets/stripe-key", testToken, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "vault", st["backend"])
	require.Equal(t, inv.Invalidation.Version, st["version"])

	// Vault holds the value, tagged with the version rekey announced.
	sec, err := v.Client.KVv2("secret").Get(ctx, "tenants/acme/stripe-key")
	require.NoError(t, err)
	require.Equal(t, inv.Invalidation.Version, sec.Data["rekey_version"])
	require.Regexp(t, `^sk_live_[A-Za-z0-9]{40}$`, sec.Data["value"])
	requireNoValueIn(t, d, []string{sec.Data["value"].(string)})
}
