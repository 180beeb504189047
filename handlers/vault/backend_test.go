package vault_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/backendtest"
	"github.com/rekey-dev/rekey/handlers/vault"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// TestBackendSuite runs the shared suite against kv secrets in the dev
// server's KV v2 mount, then checks that no value it read was logged.
func TestBackendSuite(t *testing.T) {
	t.Parallel()
	logs := &backendtest.LogBuffer{}
	b := newBackend(t, baseConfig(t, ""), logs.Logger())
	read := backendtest.ReadsNotLogged(t, logs, b.Read)
	backendtest.Run(t, backendtest.Features{Read: true}, func(t *testing.T) backendtest.Fixture {
		return backendtest.Fixture{Backend: b, Ref: kvRef("acme", testutil.Uniq("suite")), Read: read}
	})
}

// TestBackendSuiteOptions runs the suite on secrets with a custom path and
// field, in a tenant-per-mount layout.
func TestBackendSuiteOptions(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	// The dev server lives as long as the test binary (-count=2 runs this twice).
	if err := v.Client.Sys().MountWithContext(t.Context(), "kv-globex", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		require.ErrorContains(t, err, "path is already in use")
	}
	cfg := baseConfig(t, "")
	cfg.KVMount = "kv-{tenant}"
	cfg.PathTemplate = "{secret}"
	b := newBackend(t, cfg, nil)
	backendtest.Run(t, backendtest.Features{Read: true}, func(t *testing.T) backendtest.Fixture {
		ref := kvRef("globex", testutil.Uniq("opt"))
		ref.Options = map[string]string{vault.OptPath: "llm/{secret}/key", vault.OptField: "api_key"}
		ref.Generator = handlers.Generator{Style: handlers.StyleAPIKey, Length: 40, Prefix: "sk-globex-"}.Defaults()
		return backendtest.Fixture{Backend: b, Ref: ref, Read: b.Read}
	})
}

// TestKVLayout checks what readers of Vault see: the staged value is not
// at the live path before Finish, the previous value stays readable as the
// previous KV version, other fields are kept, custom_metadata names the
// request, and the staging entry is gone after Finish.
func TestKVLayout(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	b := newBackend(t, baseConfig(t, ""), nil)
	ctx := t.Context()
	ref := kvRef("acme", testutil.Uniq("layout"))
	kv := v.Client.KVv2("secret")
	path := "tenants/acme/" + ref.Secret

	// A secret created outside rekey, with a second field.
	_, err := kv.Put(ctx, path, map[string]any{"value": "initial-value", "org": "acme-org"})
	require.NoError(t, err)
	cur, err := b.Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, "kv-1", cur.ID, "a value rekey did not write")

	tok := schemas.NewULID()
	staged, err := b.Create(ctx, ref, tok)
	require.NoError(t, err)
	require.Equal(t, tok, staged.ID, "the version id is the token")
	live, err := kv.Get(ctx, path)
	require.NoError(t, err)
	require.Equal(t, "initial-value", live.Data["value"], "staged value visible at the live path")
	require.Equal(t, 1, live.VersionMetadata.Version)
	st, err := kv.Get(ctx, path+"/_staged/"+tok)
	require.NoError(t, err)
	newValue := st.Data["value"].(string)
	require.Len(t, newValue, 32)

	require.NoError(t, b.Set(ctx, ref, staged))
	require.NoError(t, b.Test(ctx, ref, staged))
	require.NoError(t, b.Finish(ctx, ref, staged))

	live, err = kv.Get(ctx, path)
	require.NoError(t, err)
	require.Equal(t, 2, live.VersionMetadata.Version, "one new KV version")
	require.Equal(t, newValue, live.Data["value"])
	require.Equal(t, "acme-org", live.Data["org"], "other fields are kept")
	require.Equal(t, tok, live.Data["rekey_version"])
	require.Equal(t, "acme", live.Data["rekey_tenant"])
	require.Equal(t, tok, live.CustomMetadata["rekey_version"])
	require.Equal(t, tok, live.CustomMetadata["rekey_request_id"])
	prev, err := kv.GetVersion(ctx, path, 1)
	require.NoError(t, err)
	require.Equal(t, "initial-value", prev.Data["value"], "previous version readable")
	_, err = kv.Get(ctx, path+"/_staged/"+tok)
	require.Error(t, err, "staging entry left after Finish")

	// A Finish that promoted but could not delete its staging entry: the
	// entry is not listed as staged and Staged removes it.
	tok2 := schemas.NewULID()
	v2, err := b.Create(ctx, ref, tok2)
	require.NoError(t, err)
	st2, err := kv.Get(ctx, path+"/_staged/"+tok2)
	require.NoError(t, err)
	_, err = kv.Put(ctx, path, st2.Data, api.WithCheckAndSet(2))
	require.NoError(t, err)
	got, err := b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, got)
	_, err = kv.Get(ctx, path+"/_staged/"+tok2)
	require.Error(t, err, "residue not removed")
	require.NoError(t, b.Finish(ctx, ref, v2), "Finish of the live version")
}

// TestFinishCheckAndSet: another writer changes the live path between
// Finish's read and its write; the check-and-set write fails with a
// temporary error instead of overwriting it, and the next attempt promotes.
func TestFinishCheckAndSet(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	b := newBackend(t, baseConfig(t, ""), nil)
	ctx := t.Context()
	ref := kvRef("acme", testutil.Uniq("cas"))
	rotate(t, ctx, b, ref)
	path := "tenants/acme/" + ref.Secret

	var interfered atomic.Bool
	vault.WrapAPI(b, func(_ string, lg vault.Logical) vault.Logical {
		return &beforeWrite{Logical: lg, path: "secret/data/" + path, fn: func() {
			if interfered.CompareAndSwap(false, true) {
				_, err := v.Client.KVv2("secret").Patch(context.Background(), path, map[string]any{"note": "another writer"})
				require.NoError(t, err)
			}
		}}
	})
	staged, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	err = b.Finish(ctx, ref, staged)
	require.Error(t, err)
	require.NotErrorIs(t, err, handlers.ErrPermanent)
	require.ErrorContains(t, err, "another writer")
	live, err := v.Client.KVv2("secret").Get(ctx, path)
	require.NoError(t, err)
	require.NotEqual(t, staged.ID, live.Data["rekey_version"], "the stale write went through")
	require.Equal(t, "another writer", live.Data["note"])

	require.NoError(t, b.Finish(ctx, ref, staged), "next attempt")
	live, err = v.Client.KVv2("secret").Get(ctx, path)
	require.NoError(t, err)
	require.Equal(t, staged.ID, live.Data["rekey_version"])
	require.Equal(t, "another writer", live.Data["note"], "the other writer's field was kept")
}

// beforeWrite runs fn before each write to path.
type beforeWrite struct {
	vault.Logical
	path string
	fn   func()
}

func (w *beforeWrite) WriteWithContext(ctx context.Context, path string, data map[string]any) (*api.Secret, error) {
	if path == w.path {
		w.fn()
	}
	return w.Logical.WriteWithContext(ctx, path, data)
}

// TestTenantMismatch: a ref whose path leaves its tenant's prefix is
// refused before any call, and a live value written for another tenant is
// never overwritten.
func TestTenantMismatch(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	b := newBackend(t, baseConfig(t, ""), nil)
	ctx := t.Context()

	globex := kvRef("globex", testutil.Uniq("key"))
	rotate(t, ctx, b, globex)
	_, before, err := b.Read(ctx, globex)
	require.NoError(t, err)

	// acme's secret pointing into globex's prefix.
	evil := kvRef("acme", "stolen")
	evil.Options = map[string]string{vault.OptPath: "tenants/globex/" + globex.Secret}
	_, err = b.Create(ctx, evil, schemas.NewULID())
	require.ErrorIs(t, err, handlers.ErrPermanent)
	require.ErrorContains(t, err, "outside tenant acme's prefix")
	_, err = b.Current(ctx, evil)
	require.ErrorIs(t, err, handlers.ErrPermanent)

	// A value at acme's path that says it is globex's (copied by hand):
	// acme's Finish refuses to overwrite it.
	acme := kvRef("acme", testutil.Uniq("copied"))
	_, err = v.Client.KVv2("secret").Put(ctx, "tenants/acme/"+acme.Secret, map[string]any{
		"value": "globex-value", "rekey_version": "x", "rekey_tenant": "globex",
	})
	require.NoError(t, err)
	staged, err := b.Create(ctx, acme, schemas.NewULID())
	require.NoError(t, err)
	err = b.Finish(ctx, acme, staged)
	require.ErrorIs(t, err, handlers.ErrPermanent)
	require.ErrorContains(t, err, `tenant "globex"`)
	require.NoError(t, b.Rollback(ctx, acme, staged))

	// An unknown option or kind is refused.
	bad := kvRef("acme", "bad")
	bad.Options = map[string]string{"rolle": "x"}
	_, err = b.Current(ctx, bad)
	require.ErrorIs(t, err, handlers.ErrPermanent)
	require.ErrorContains(t, err, "options.rolle")

	_, after, err := b.Read(ctx, globex)
	require.NoError(t, err)
	require.Equal(t, before, after, "globex's value changed")
}

// failingTest is a backend whose Test always fails.
type failingTest struct{ *vault.Backend }

func (f failingTest) Test(context.Context, handlers.SecretRef, handlers.Version) error {
	return fmt.Errorf("the new credential was refused downstream: %w", handlers.ErrPermanent)
}

// TestFailedTestRollsBack drives the real rotation saga (handlers.Rotator)
// with a Test that fails: the staged version is rolled back, the live value
// and version are unchanged, and nothing is left staged.
func TestFailedTestRollsBack(t *testing.T) {
	t.Parallel()
	b := newBackend(t, baseConfig(t, ""), nil)
	ctx := t.Context()
	ref := kvRef("acme", testutil.Uniq("failtest"))
	before := rotate(t, ctx, b, ref)
	_, value, err := b.Read(ctx, ref)
	require.NoError(t, err)

	rot, _ := newRotator(t, ref, failingTest{b}, nil)
	_, err = rot.Rotate(ctx, handlers.Job{Tenant: ref.Tenant, Secret: ref.Secret, RequestID: schemas.NewULID(), Delivery: 1})
	require.ErrorIs(t, err, handlers.ErrPermanent)

	staged, err := b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, staged, "a staged version was left behind")
	version, after, err := b.Read(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, before.ID, version)
	require.Equal(t, value, after)
}

// TestRotatorPromotes: the real saga rotates a vault kv secret.
func TestRotatorPromotes(t *testing.T) {
	t.Parallel()
	b := newBackend(t, baseConfig(t, ""), nil)
	ctx := t.Context()
	ref := kvRef("acme", testutil.Uniq("rotator"))
	rot, _ := newRotator(t, ref, b, nil)
	done, err := rot.Rotate(ctx, handlers.Job{Tenant: ref.Tenant, Secret: ref.Secret, RequestID: schemas.NewULID(), Delivery: 1})
	require.NoError(t, err)
	cur, err := b.Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, done.Version, cur.ID)
	require.Equal(t, 1, done.Attempts)
}

// newRotator builds a handlers.Rotator on an embedded NATS with a catalog
// holding ref (backend vault), for tests of the real saga.
// newRotator returns a rotator of b's secret ref; hook, if set, runs after
// each successful saga step.
func newRotator(t *testing.T, ref handlers.SecretRef, b handlers.Backend,
	hook func(ctx context.Context, step string) error) (*handlers.Rotator, *orchestrator.Bus) {
	t.Helper()
	ctx := t.Context()
	s := testutil.StartNATS(t, -1, "")
	rcfg := orchestrator.Defaults()
	rcfg.Rotation.MaxAttempts = 10
	rcfg.Rotation.BackoffInitial = 200 * time.Millisecond
	rcfg.Rotation.BackoffMax = time.Second
	rcfg.Rotation.StepTimeout = 5 * time.Second
	rcfg.Tenants = map[string]orchestrator.TenantConfig{ref.Tenant: {Secrets: map[string]orchestrator.SecretConfig{
		ref.Secret: {Backend: vault.Name, Options: ref.Options},
	}}}
	require.NoError(t, rcfg.Validate())
	bus, err := orchestrator.Connect(ctx, s.ClientURL(), "vault-test", rcfg.NATS, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	require.NoError(t, bus.EnsureStreams(ctx))
	state, err := orchestrator.NewState(ctx, bus, rcfg.Rotation.LockTTL)
	require.NoError(t, err)
	cat, err := handlers.NewCatalog(&rcfg, b)
	require.NoError(t, err)
	log := slog.New(slog.DiscardHandler)
	return handlers.NewRotator(handlers.Deps{
		Deps: orchestrator.Deps{Rekey: &rcfg, Bus: bus, Audit: orchestrator.NewAuditor(bus, "vault-test", log),
			Metrics: orchestrator.NewMetrics(), Log: log},
		State: state, Catalog: cat, Owner: "vault-test", Source: "vault-test", StepHook: hook,
	}, rcfg.Rotation), bus
}

// auditActions returns "action/outcome" of every audit record of tenant.
func auditActions(t *testing.T, bus *orchestrator.Bus, tenant string) []string {
	t.Helper()
	ctx := t.Context()
	stream, err := bus.JS.Stream(ctx, schemas.StreamAudit)
	require.NoError(t, err)
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	var out []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		msg, err := stream.GetMsg(ctx, seq)
		require.NoError(t, err)
		ev, err := schemas.Decode(msg.Data)
		require.NoError(t, err)
		if ev.Tenant != tenant {
			continue
		}
		var rec schemas.AuditRecord
		require.NoError(t, json.Unmarshal(ev.Data, &rec))
		out = append(out, rec.Action+"/"+rec.Outcome)
	}
	return out
}
