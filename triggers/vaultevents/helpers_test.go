package vaultevents_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/vaultevents"
)

// vaultServer is a Vault dev server with the event stream
// (-experiment events.alpha1), started by TestMain.
var vaultServer *vaulttest.Vault

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	v, err := vaulttest.StartVaultWith(ctx, "-experiment", "events.alpha1")
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vaultevents tests need the Vault binary:", err)
		os.Exit(1)
	}
	vaultServer = v
	code := m.Run()
	v.Stop()
	os.Exit(code)
}

const tokenEnv = "REKEY_TEST_VAULTEVENTS_TOKEN"

var mounts atomic.Int64

// env is one test's KV mount, NATS and trigger configuration.
type env struct {
	t       *testing.T
	mount   string
	vault   *api.Client // root, directly
	proxy   *testutil.Proxy
	bus     *orchestrator.Bus
	metrics *orchestrator.Metrics
	logs    *testutil.SyncBuffer
	log     *slog.Logger
	cfg     vaultevents.Config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, mount: fmt.Sprintf("kv%d", mounts.Add(1)), vault: vaultServer.Client, metrics: orchestrator.NewMetrics(), logs: &testutil.SyncBuffer{}}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", e.logs.String())
		}
	})
	require.NoError(t, e.vault.Sys().MountWithContext(ctx, e.mount, mountInput()))
	e.proxy = testutil.StartProxy(t, vaultServer.Addr[len("http://"):])
	t.Setenv(tokenEnv, vaultServer.RootToken)

	srv := testutil.StartNATS(t, -1, "")
	var err error
	e.bus, err = orchestrator.Connect(ctx, srv.ClientURL(), "vaultevents-test", orchestrator.NATSConfig{}, e.log)
	require.NoError(t, err)
	t.Cleanup(e.bus.Close)
	require.NoError(t, e.bus.EnsureStreams(ctx))

	e.cfg = vaultevents.Defaults()
	e.cfg.Address = "http://" + e.proxy.Addr()
	e.cfg.TokenEnv = tokenEnv
	e.cfg.Tenants = []string{"acme", "globex"}
	e.cfg.OwnWriteGrace = time.Second
	e.cfg.ReconnectMin, e.cfg.ReconnectMax = 50*time.Millisecond, 200*time.Millisecond
	// Vault 1.14 drops a few events (BenchmarkVaultEventDelivery): the
	// periodic resync finds those changes.
	e.cfg.ResyncEvery = time.Second
	e.cfg.Secrets = []vaultevents.Location{
		{Tenant: "acme", Secret: "openai-key", Mount: e.mount, Path: "tenants/acme/openai-key"},
		{Tenant: "globex", Secret: "openai-key", Mount: e.mount, Path: "tenants/globex/openai-key"},
		{Tenant: "initech", Secret: "api-key", Mount: e.mount, Path: "tenants/initech/api-key"}, // not allowed
	}
	for _, p := range []string{"tenants/acme/openai-key", "tenants/globex/openai-key", "tenants/initech/api-key"} {
		e.put(p, map[string]any{"value": "initial"})
	}
	return e
}

// start runs the trigger until the test ends and waits until it has
// subscribed and read the secrets once.
func (e *env) start() {
	e.t.Helper()
	tr, err := vaultevents.New(e.cfg, orchestrator.Deps{Bus: e.bus, Audit: orchestrator.NewAuditor(e.bus, "test", e.log), Metrics: e.metrics, Log: e.log})
	require.NoError(e.t, err)
	testutil.Run(e.t, tr)
	require.Eventually(e.t, func() bool { return e.subscribed() }, 20*time.Second, 20*time.Millisecond)
}

// subscribed: the first resync is over once the initial reads happened;
// a canary write to an unmanaged path is seen as unmapped.
func (e *env) subscribed() bool {
	before := e.count(vaultevents.OutcomeUnmapped)
	e.put("canary", map[string]any{"v": time.Now().String()})
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if e.count(vaultevents.OutcomeUnmapped) > before {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func mountInput() *api.MountInput {
	return &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}
}

// put writes data at path, as a person with the vault CLI would.
func (e *env) put(path string, data map[string]any) int {
	e.t.Helper()
	sec, err := e.vault.Logical().WriteWithContext(context.Background(), e.mount+"/data/"+path, map[string]any{"data": data})
	require.NoError(e.t, err)
	v, err := sec.Data["version"].(interface{ Int64() (int64, error) }).Int64()
	require.NoError(e.t, err)
	return int(v)
}

// count is rekey_vault_events_total{outcome}.
func (e *env) count(outcome string) float64 {
	families, err := e.metrics.Registry.Gather()
	require.NoError(e.t, err)
	for _, f := range families {
		if f.GetName() != "rekey_vault_events_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func (e *env) waitCount(outcome string, n float64) {
	e.t.Helper()
	require.Eventually(e.t, func() bool { return e.count(outcome) >= n }, 20*time.Second, 20*time.Millisecond,
		"%s: %v, want %v", outcome, e.count(outcome), n)
}

// events decodes every event of a stream (subjects matching filter).
func (e *env) events(stream, filter string) []schemas.Event {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.bus.JS.Stream(ctx, stream)
	require.NoError(e.t, err)
	var out []schemas.Event
	for next := uint64(1); ; {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		require.NoError(e.t, err)
		ev, err := schemas.Decode(m.Data)
		require.NoError(e.t, err)
		out = append(out, ev)
		next = m.Sequence + 1
	}
}

// decoded decodes the data of every event of a stream (matching filter).
func decoded[T any](e *env, stream, filter, typ string) []T {
	var out []T
	for _, ev := range e.events(stream, filter) {
		var v T
		require.NoError(e.t, ev.DecodeData(typ, &v))
		out = append(out, v)
	}
	return out
}

func (e *env) changes() []schemas.ExternalChange {
	return decoded[schemas.ExternalChange](e, schemas.StreamEvents, schemas.EventsSubject("*", schemas.KindExternalChange), schemas.TypeExternalChange)
}

func (e *env) syncs() []schemas.RotationRequested {
	return decoded[schemas.RotationRequested](e, schemas.StreamRotate, ">", schemas.TypeRotationRequested)
}

func (e *env) audits() []schemas.AuditRecord {
	return decoded[schemas.AuditRecord](e, schemas.StreamAudit, ">", schemas.TypeAuditRecord)
}
