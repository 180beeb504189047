package vaultevents_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
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
	proxy   *proxy
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
	require.NoError(t, e.vault.Sys().MountWithContext(ctx, e.mount, &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}))
	e.proxy = startProxy(t, vaultServer.Addr[len("http://"):])
	t.Setenv(tokenEnv, vaultServer.RootToken)

	srv := testutil.StartNATS(t, -1, "")
	var err error
	e.bus, err = orchestrator.Connect(ctx, srv.ClientURL(), "vaultevents-test", orchestrator.NATSConfig{}, e.log)
	require.NoError(t, err)
	t.Cleanup(e.bus.Close)
	require.NoError(t, e.bus.EnsureStreams(ctx))

	e.cfg = vaultevents.Defaults()
	e.cfg.Address = "http://" + e.proxy.addr
	e.cfg.TokenEnv = tokenEnv
	e.cfg.Tenants = []string{"acme", "globex"}
	e.cfg.OwnWriteGrace = time.Second
	e.cfg.ReconnectMin, e.cfg.ReconnectMax = 50*time.Millisecond, 200*time.Millisecond
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
	tr, err := vaultevents.New(e.cfg, e.bus, orchestrator.NewAuditor(e.bus, "test", e.log), e.metrics, e.log)
	require.NoError(e.t, err)
	testutil.Run(e.t, tr)
	require.Eventually(e.t, func() bool { return e.proxy.opened() >= 1 && e.subscribed() }, 20*time.Second, 20*time.Millisecond)
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

func (e *env) changes() []schemas.ExternalChange {
	var out []schemas.ExternalChange
	for _, ev := range e.events(schemas.StreamEvents, schemas.EventsSubject("*", schemas.KindExternalChange)) {
		var c schemas.ExternalChange
		require.NoError(e.t, ev.DecodeData(schemas.TypeExternalChange, &c))
		out = append(out, c)
	}
	return out
}

func (e *env) syncs() []schemas.RotationRequested {
	var out []schemas.RotationRequested
	for _, ev := range e.events(schemas.StreamRotate, ">") {
		var r schemas.RotationRequested
		require.NoError(e.t, ev.DecodeData(schemas.TypeRotationRequested, &r))
		out = append(out, r)
	}
	return out
}

func (e *env) audits() []schemas.AuditRecord {
	var out []schemas.AuditRecord
	for _, ev := range e.events(schemas.StreamAudit, ">") {
		var r schemas.AuditRecord
		require.NoError(e.t, ev.DecodeData(schemas.TypeAuditRecord, &r))
		out = append(out, r)
	}
	return out
}

// proxy forwards TCP connections to Vault; cut closes them all and
// refuses new ones until heal.
type proxy struct {
	addr   string
	target string
	mu     sync.Mutex
	conns  []net.Conn
	down   bool
	opens  atomic.Int64
}

func startProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{addr: l.Addr().String(), target: target}
	t.Cleanup(func() { _ = l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			down := p.down
			p.mu.Unlock()
			if down {
				_ = c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.opens.Add(1)
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	return p
}

func (p *proxy) opened() int64 { return p.opens.Load() }

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *proxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}
