package daemon_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/orchestrator"
)

// TestShutdownLosesNothing: rekeyd is stopped while rotations are in
// flight and more are queued; after a restart on the same data dir every
// request was rotated or coalesced and nothing is left staged.
func TestShutdownLosesNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Rotation.Concurrency = 2
	slow := daemon.Options{StepHook: func(ctx context.Context, step string) error {
		if step == handlers.StepSet {
			select {
			case <-time.After(150 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}}
	d := start(t, cfg, slow)
	var ids []string
	for round := 0; round < 5; round++ {
		for _, tenant := range []string{"acme", "globex"} {
			for _, secret := range []string{"openai-key", "billing-db"} {
				ids = append(ids, rotate(t, d, tenant, secret))
			}
		}
	}
	time.Sleep(200 * time.Millisecond) // some rotations are now mid-saga
	d.stop()

	d2 := start(t, testConfig(t, dir), daemonOpts())
	ctx := context.Background()
	waitRotateDrained(t, d2, 30*time.Second)

	handled := handledRequests(t, d2, "acme", "globex")
	for _, tenant := range []string{"acme", "globex"} {
		for _, secret := range []string{"openai-key", "billing-db"} {
			ref := handlers.SecretRef{Tenant: tenant, Secret: secret, Backend: "local"}
			staged, err := d2.Local().Staged(ctx, ref)
			require.NoError(t, err)
			require.Empty(t, staged, "%s left staged", ref)
			st, err := d2.State().SecretStatus(ctx, tenant, secret)
			require.NoError(t, err)
			cur, err := d2.Local().Current(ctx, ref)
			require.NoError(t, err)
			require.Equal(t, cur.ID, st.Version, "status and backend disagree for %s", ref)
			require.Equal(t, orchestrator.SecretIdle, st.State)
		}
	}
	for i, id := range ids {
		require.Contains(t, handled, id, fmt.Sprintf("request %d (%s) lost", i, id))
	}
}
