package vault_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// TestVaultUnreachableSteps: with Vault cut off after Create, every step
// fails with a temporary error (not ErrPermanent, not ErrNotFound), so the
// worker retries; after Vault is back the rollback and a new rotation
// succeed, and the live value was never touched in between.
func TestVaultUnreachableSteps(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	p := testutil.StartProxy(t, strings.TrimPrefix(v.Addr, "http://"))
	cfg := baseConfig(t, "http://"+p.Addr())
	cfg.Timeout = 2 * time.Second
	b := newBackend(t, cfg, nil)
	ctx := t.Context()
	ref := kvRef("acme", testutil.Uniq("outage"))
	before := rotate(t, ctx, b, ref)
	_, value, err := b.Read(ctx, ref)
	require.NoError(t, err)

	staged, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	p.Cut()
	begin := time.Now()
	for _, step := range []struct {
		name string
		err  error
	}{
		{"set", b.Set(ctx, ref, staged)},
		{"test", b.Test(ctx, ref, staged)},
		{"finish", b.Finish(ctx, ref, staged)},
		{"rollback", b.Rollback(ctx, ref, staged)},
		{"create", func() error { _, err := b.Create(ctx, ref, schemas.NewULID()); return err }()},
		{"current", func() error { _, err := b.Current(ctx, ref); return err }()},
	} {
		require.Error(t, step.err, step.name)
		require.NotErrorIs(t, step.err, handlers.ErrPermanent, "%s: an unreachable Vault must be retried", step.name)
		require.NotErrorIs(t, step.err, handlers.ErrNotFound, step.name)
	}
	t.Logf("6 calls failed against the cut proxy in %s", time.Since(begin))
	p.Restore()

	list, err := b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, []string{staged.ID}, ids(list), "only the version staged before the outage")
	require.NoError(t, b.Rollback(ctx, ref, staged))
	version, after, err := b.Read(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, before.ID, version, "live version changed during the outage")
	require.Equal(t, value, after)
	next := rotate(t, ctx, b, ref)
	cur, err := b.Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, next.ID, cur.ID)
	list, err = b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, list)
}

// TestVaultOutageDuringRotation drives the real saga (handlers.Rotator)
// while Vault is cut off for 3 seconds right after Create: attempts fail
// and are retried with backoff, the rotation completes once Vault is back,
// exactly one new KV version reaches the live path, and after the next
// rotation (which removes leftovers of attempts whose rollback could not
// reach Vault) nothing is staged.
func TestVaultOutageDuringRotation(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	p := testutil.StartProxy(t, strings.TrimPrefix(v.Addr, "http://"))
	cfg := baseConfig(t, "http://"+p.Addr())
	cfg.Timeout = time.Second
	b := newBackend(t, cfg, nil)
	ctx := t.Context()
	ref := kvRef("acme", testutil.Uniq("outage-saga"))
	rotate(t, ctx, b, ref)
	kv := v.Client.KVv2("secret")
	path := "tenants/acme/" + ref.Secret
	md, err := kv.GetMetadata(ctx, path)
	require.NoError(t, err)
	kvBefore := md.CurrentVersion

	var once sync.Once
	restored := make(chan struct{})
	rot, bus := newRotator(t, ref, b, func(_ context.Context, step string) error {
		if step == handlers.StepCreate {
			once.Do(func() {
				p.Cut()
				go func() {
					time.Sleep(3 * time.Second)
					p.Restore()
					close(restored)
				}()
			})
		}
		return nil
	})
	begin := time.Now()
	done, err := rot.Rotate(ctx, handlers.Job{Tenant: ref.Tenant, Secret: ref.Secret, RequestID: schemas.NewULID(), Delivery: 1})
	require.NoError(t, err)
	<-restored
	t.Logf("rotation across a 3s Vault outage completed in %s after %d attempts", time.Since(begin), done.Attempts)
	require.Greater(t, done.Attempts, 1)

	cur, err := b.Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, done.Version, cur.ID)
	md, err = kv.GetMetadata(ctx, path)
	require.NoError(t, err)
	require.Equal(t, kvBefore+1, md.CurrentVersion, "exactly one new live version")

	actions := auditActions(t, bus, ref.Tenant)
	require.Contains(t, actions, "rotation.set/retrying", "the outage did not fail a step: %v", actions)
	require.Contains(t, actions, "rotation.complete/succeeded")

	// Attempts whose rollback could not reach Vault left a staged entry;
	// none of them is live, and the next rotation removes them.
	left, err := b.Staged(ctx, ref)
	require.NoError(t, err)
	for _, s := range left {
		require.NotEqual(t, done.Version, s.ID)
	}
	t.Logf("%d staged leftovers after the outage (rollback failed while Vault was cut)", len(left))
	_, err = rot.Rotate(ctx, handlers.Job{Tenant: ref.Tenant, Secret: ref.Secret, RequestID: schemas.NewULID(), Delivery: 1})
	require.NoError(t, err)
	left, err = b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, left, "leftovers survived the next rotation")
}

func ids(vs []handlers.Version) []string {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		out = append(out, v.ID)
	}
	slices.Sort(out)
	return out
}
