package vaultevents_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/vaultevents"
)

// TestExternalWriteAndDelete (issue 16, item 6): a KV v2 write made
// outside rekey is an external_change plus a sync request; a delete of
// the current version an external_change with deleted set, and a sync.
func TestExternalWriteAndDelete(t *testing.T) {
	e := newEnv(t)
	e.start()
	v := e.put("tenants/acme/openai-key", map[string]any{"value": "typed-by-hand"})
	e.waitCount(vaultevents.OutcomePublished, 1)
	chs := e.changes()
	require.Len(t, chs, 1)
	require.Equal(t, "acme", chs[0].Tenant)
	require.Equal(t, "openai-key", chs[0].Secret)
	require.Equal(t, "vault", chs[0].Backend)
	require.Contains(t, []string{"kv-v2/data-write", vaultevents.EventResync}, chs[0].Event, "the event, or the resync if Vault dropped it")
	require.Equal(t, schemas.ExternalSucceeded, chs[0].Outcome)
	require.Equal(t, "kv-"+itoa(v), chs[0].VersionID)
	require.False(t, chs[0].Deleted)
	syncs := e.syncs()
	require.Len(t, syncs, 1)
	require.Equal(t, schemas.RotateModeSync, syncs[0].Mode)
	require.Equal(t, schemas.TriggerVault, syncs[0].Trigger.Kind)

	_, err := e.vault.Logical().DeleteWithContext(context.Background(), e.mount+"/data/tenants/acme/openai-key")
	require.NoError(t, err)
	e.waitCount(vaultevents.OutcomePublished, 2)
	chs = e.changes()
	require.Len(t, chs, 2)
	require.True(t, chs[1].Deleted)
	require.Contains(t, []string{"kv-v2/data-delete", vaultevents.EventResync}, chs[1].Event)
	require.Len(t, e.syncs(), 2)
	n := 0
	for _, r := range e.audits() {
		if r.Action == "external_change" {
			n++
			require.Equal(t, "acme", r.Tenant)
		}
	}
	require.Equal(t, 2, n)
	require.NotContains(t, e.logs.String(), "typed-by-hand", "no value is logged")
}

// TestAttackOwnWritesAndForgedMarkers: rekey's own writes (a staged
// version, a promoted one with its bookkeeping) do nothing, nor do
// writes to paths rekey does not manage or of a tenant outside the
// allow-list; a write that carries rekey's version key without rekey's
// bookkeeping is not taken for rekey's: it is acted on.
func TestAttackOwnWritesAndForgedMarkers(t *testing.T) {
	e := newEnv(t)
	e.start()
	ctx := context.Background()

	// rekey stages, then promotes and records the KV version.
	e.put("tenants/globex/openai-key/_staged/01JREKEYVERSION", map[string]any{"value": "staged", "rekey_version": "01JREKEYVERSION"})
	v := e.put("tenants/globex/openai-key", map[string]any{"value": "promoted", "rekey_version": "01JREKEYVERSION", "rekey_request_id": "req-1"})
	_, err := e.vault.Logical().JSONMergePatch(ctx, e.mount+"/metadata/tenants/globex/openai-key", map[string]any{
		"custom_metadata": map[string]any{"rekey_version": "01JREKEYVERSION", "rekey_kv_version": itoa(v)}})
	require.NoError(t, err)
	e.waitCount(vaultevents.OutcomeOwn, 1)

	// Not allowed, and not managed.
	e.put("tenants/initech/api-key", map[string]any{"value": "x"})
	e.waitCount(vaultevents.OutcomeRefused, 1)
	e.put("elsewhere/acme/openai-key", map[string]any{"value": "x"})

	require.Empty(t, e.changes(), "nothing published for rekey's own writes or unmanaged paths")
	require.Empty(t, e.syncs())
	require.Empty(t, e.audits())

	// A hand-made write that copies rekey's keys: no bookkeeping follows.
	e.put("tenants/globex/openai-key", map[string]any{"value": "forged", "rekey_version": "01JFORGED", "rekey_request_id": "req-2"})
	e.waitCount(vaultevents.OutcomePublished, 1)
	chs := e.changes()
	require.Len(t, chs, 1)
	require.Equal(t, "globex", chs[0].Tenant)
	require.Len(t, e.syncs(), 1)
}

// TestReconnectResync: writes made while the event stream is down are
// not replayed by Vault; after the reconnect the resync finds them.
func TestReconnectResync(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.proxy.Cut()
	v := e.put("tenants/acme/openai-key", map[string]any{"value": "while-away"})
	e.put("tenants/globex/openai-key", map[string]any{"value": "while-away"})
	time.Sleep(300 * time.Millisecond) // a few failed reconnects
	e.proxy.Restore()
	e.waitCount(vaultevents.OutcomePublished, 2)
	chs := e.changes()
	require.Len(t, chs, 2)
	for _, c := range chs {
		require.Equal(t, vaultevents.EventResync, c.Event)
	}
	require.Equal(t, "kv-"+itoa(v), chs[0].VersionID)
	require.Contains(t, e.logs.String(), "Vault event stream lost")
	require.Contains(t, e.logs.String(), "resynced")

	// Back on the stream: a new write is an event again, acted on once.
	e.put("tenants/acme/openai-key", map[string]any{"value": "after"})
	e.waitCount(vaultevents.OutcomePublished, 3)
	require.Len(t, e.syncs(), 3)
}

// TestAttackBadToken: a token Vault refuses subscribes to nothing, reads
// nothing and publishes nothing; the trigger keeps retrying.
func TestAttackBadToken(t *testing.T) {
	e := newEnv(t)
	t.Setenv(tokenEnv, "hvs.not-a-token")
	tr, err := vaultevents.New(e.cfg, orchestrator.Deps{Bus: e.bus, Audit: orchestrator.NewAuditor(e.bus, "test", e.log), Metrics: e.metrics, Log: e.log})
	require.NoError(t, err)
	stop := runTrigger(t, tr)
	e.put("tenants/acme/openai-key", map[string]any{"value": "x"})
	require.Eventually(t, func() bool { return strings.Count(e.logs.String(), "Vault event stream lost") >= 2 }, 20*time.Second, 20*time.Millisecond)
	require.Contains(t, e.logs.String(), "HTTP 403")
	stop()
	require.Empty(t, e.changes())
	require.Empty(t, e.syncs())
	require.NotContains(t, e.logs.String(), "hvs.not-a-token")
}
