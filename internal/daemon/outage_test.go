package daemon_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// TestVaultOutage: Vault behind a TCP proxy is cut for 20 s while rotation
// requests arrive. The rotations fail as unavailable (not given up), their
// requests are redelivered with backoff, and after Vault is back every
// request is completed or coalesced, none failed, nothing left staged.
func TestVaultOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s outage; skipped with -short")
	}
	ctx := context.Background()
	v, err := vaulttest.StartVault(ctx)
	require.NoError(t, err, "a Vault binary is needed: run `bash .ci/vault.sh` (builds .cache/bin/vault) or set REKEY_VAULT_BIN")
	t.Cleanup(v.Stop)
	t.Setenv("REKEY_TEST_VAULT_TOKEN", v.RootToken)
	p := testutil.StartProxy(t, strings.TrimPrefix(v.Addr, "http://"))

	cfg := testConfig(t, t.TempDir())
	raw, err := yaml.Marshal(map[string]any{
		"address": "http://" + p.Addr(),
		"timeout": "1s",
		"auth":    map[string]any{"method": "token", "token_env": "REKEY_TEST_VAULT_TOKEN"},
	})
	require.NoError(t, err)
	cfg.Backends.Vault = raw
	acme := cfg.Tenants["acme"]
	var secrets []string
	for i := range 5 {
		s := fmt.Sprintf("vault-key-%d", i)
		secrets = append(secrets, s)
		acme.Secrets[s] = orchestrator.SecretConfig{Backend: "vault", Generator: orchestrator.GeneratorConfig{Style: "api-key", Length: 32}}
	}
	cfg.Tenants["acme"] = acme
	require.NoError(t, cfg.Validate())
	d := start(t, cfg, daemonOpts())

	// Give every secret a first version while Vault is reachable.
	for _, s := range secrets {
		id := rotate(t, d, "acme", s)
		waitHandled(t, d, "acme", []string{id}, 20*time.Second)
	}

	p.Cut()
	cutAt := time.Now()
	var ids []string
	for range 2 {
		for _, s := range secrets {
			ids = append(ids, rotate(t, d, "acme", s))
		}
	}
	time.Sleep(20*time.Second - time.Since(cutAt))
	p.Restore()
	t.Logf("Vault cut for %s with %d requests pending", time.Since(cutAt).Round(time.Millisecond), len(ids))
	waitHandled(t, d, "acme", ids, 90*time.Second)
	t.Logf("every request handled %s after Vault came back", time.Since(cutAt.Add(20*time.Second)).Round(time.Millisecond))

	for _, r := range auditRecords(t, d, "acme") {
		if r.Action == "rotation" && r.Outcome == schemas.OutcomeFailed {
			t.Errorf("a rotation was given up during the outage: %+v", r)
		}
	}
	require.Contains(t, d.logs.String(), "will retry", "no rotation saw Vault unavailable")
	for _, s := range secrets {
		ref, b, err := d.Lookup("acme", s)
		require.NoError(t, err)
		staged, err := b.Staged(ctx, ref)
		require.NoError(t, err)
		require.Empty(t, staged, "%s left staged", ref)
		cur, err := b.Current(ctx, ref)
		require.NoError(t, err)
		st, err := d.State().SecretStatus(ctx, "acme", s)
		require.NoError(t, err)
		require.Equal(t, cur.ID, st.Version, "status and Vault disagree for %s", ref)
	}
}

// waitHandled waits until every request id is completed (its rotation
// announced) or coalesced, per the audit trail.
func waitHandled(t *testing.T, d *running, tenant string, ids []string, timeout time.Duration) {
	t.Helper()
	var missing []string
	require.Eventually(t, func() bool {
		handled := handledRequests(t, d, tenant)
		missing = missing[:0]
		for _, id := range ids {
			if _, ok := handled[id]; !ok {
				missing = append(missing, id)
			}
		}
		return len(missing) == 0
	}, timeout, 100*time.Millisecond, "requests not handled: %v", &missing)
}
