package agent_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout"
	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

const tenant = "acme"

// startServer runs an embedded nats-server with JetStream for one test.
func startServer(tb testing.TB) *server.Server {
	tb.Helper()
	return startServerAt(tb, -1, tb.TempDir())
}

// startServerAt runs the server with rekeyd's resync server attached (what
// agents resync from), which follows the server through restarts.
func startServerAt(tb testing.TB, port int, dir string) *server.Server {
	tb.Helper()
	srv := testutil.StartNATS(tb, port, dir)
	nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	require.NoError(tb, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = fanout.NewResyncServer(nc, nil, nil).Run(ctx)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
		nc.Close()
	})
	return srv
}

// proxy is a TCP proxy that the test can cut, to make a client miss
// messages while the server stays up.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newProxy(tb testing.TB, target string) *proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	p := &proxy{ln: ln, target: target}
	go p.serve()
	tb.Cleanup(func() { _ = ln.Close(); p.cut() })
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(s, c); _ = s.Close() }()
		go func() { _, _ = io.Copy(c, s); _ = c.Close() }()
	}
}

// cut closes every proxied connection and refuses new ones.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// connect opens a connection with the tenant's agent inbox prefix (the
// resync server answers no other reply subject); opts may override it.
func connect(tb testing.TB, s *server.Server, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	opts = append([]nats.Option{nats.CustomInboxPrefix(schemas.AgentInboxPrefix(tenant))}, opts...)
	nc, err := nats.Connect(s.ClientURL(), opts...)
	require.NoError(tb, err)
	tb.Cleanup(nc.Close)
	return nc
}

// createStream creates the INVALIDATE stream as rekeyd does.
func createStream(tb testing.TB, nc *nats.Conn) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(nc)
	require.NoError(tb, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:              schemas.StreamInvalidate,
		Subjects:          []string{schemas.SubjectInvalidateAll},
		MaxMsgsPerSubject: 1,
		AllowDirect:       true,
	})
	require.NoError(tb, err)
	return js
}

// fakeFetcher serves versioned values from memory and counts its calls.
// A fetch reads the version when it starts, then waits on the block channel
// current at that moment, if any: a blocked fetch returns an old version.
type fakeFetcher struct {
	mu       sync.Mutex
	versions map[string]int
	calls    map[string]int
	block    chan struct{}
	started  chan string
	delay    time.Duration // max random delay of a fetch, after reading the version
	total    atomic.Int64
}

func newFakeFetcher() *fakeFetcher {
	return &fakeFetcher{versions: map[string]int{}, calls: map[string]int{}}
}

func (f *fakeFetcher) set(secret string, version int) {
	f.mu.Lock()
	f.versions[secret] = version
	f.mu.Unlock()
}

func (f *fakeFetcher) setBlock(block chan struct{}, started chan string) {
	f.mu.Lock()
	f.block, f.started = block, started
	f.mu.Unlock()
}

func (f *fakeFetcher) callsFor(secret string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[secret]
}

func (f *fakeFetcher) Fetch(ctx context.Context, tenant, secret string) (agent.Secret, error) {
	f.mu.Lock()
	v, ok := f.versions[secret]
	f.calls[secret]++
	block, started, delay := f.block, f.started, f.delay
	f.mu.Unlock()
	if delay > 0 {
		time.Sleep(rand.N(delay))
	}
	f.total.Add(1)
	if started != nil {
		started <- secret
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return agent.Secret{}, ctx.Err()
		}
	}
	if !ok {
		return agent.Secret{}, agent.ErrNotFound
	}
	return agent.Secret{Version: version(v), Value: []byte(value(tenant, secret, v))}, nil
}

func version(v int) string { return "v" + strconv.Itoa(v) }

func value(tenant, secret string, v int) string {
	return fmt.Sprintf("VALUE-%s-%s-%d-s3cr3t", tenant, secret, v)
}

// parseVersion returns N of "vN", or -1.
func parseVersion(s string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(s, "v"))
	if err != nil {
		return -1
	}
	return n
}

// invalidation returns the CloudEvent rekey's fanout publishes.
func invalidation(tb testing.TB, tenant, secret, kind, version string) []byte {
	tb.Helper()
	inv := schemas.Invalidation{Tenant: tenant, Secret: secret, Kind: kind, Version: version,
		Reason: "test", RequestID: schemas.NewULID(), PublishedAt: time.Now().UTC()}
	subject := tenant
	if secret != "" {
		subject += "/" + secret
	}
	ev, err := schemas.NewEvent("rekey/fanout", schemas.TypeInvalidation, tenant, subject, inv)
	require.NoError(tb, err)
	b, err := ev.Encode()
	require.NoError(tb, err)
	return b
}

// publishRotated stores a rotated invalidation in the stream (and so
// delivers it to subscribers).
func publishRotated(tb testing.TB, js jetstream.JetStream, tenant, secret string, v int) {
	tb.Helper()
	publish(tb, js, schemas.InvalidateSubject(tenant, secret), invalidation(tb, tenant, secret, schemas.InvalidationRotated, version(v)))
}

func publishTenant(tb testing.TB, js jetstream.JetStream, tenant, kind string) {
	tb.Helper()
	publish(tb, js, schemas.InvalidateSubject(tenant, schemas.TenantToken), invalidation(tb, tenant, "", kind, ""))
}

func publish(tb testing.TB, js jetstream.JetStream, subject string, data []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := js.Publish(ctx, subject, data)
	require.NoError(tb, err)
}

// hook collects OnInvalidate calls.
type hook struct{ ch chan agent.Invalidated }

func newHook() *hook { return &hook{ch: make(chan agent.Invalidated, 1024)} }

func (h *hook) fn(ev agent.Invalidated) { h.ch <- ev }

func (h *hook) wait(t *testing.T) agent.Invalidated {
	t.Helper()
	select {
	case ev := <-h.ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no invalidation applied within 5s")
		return agent.Invalidated{}
	}
}

func (h *hook) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case ev := <-h.ch:
		t.Fatalf("unexpected invalidation applied: %+v", ev.Invalidation)
	case <-time.After(d):
	}
}

// startAgent creates and starts an agent, closed at the end of the test.
func startAgent(tb testing.TB, nc *nats.Conn, f agent.Fetcher, cfg agent.Config) *agent.Agent {
	tb.Helper()
	a := newAgent(tb, nc, f, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(tb, a.Start(ctx))
	return a
}

func newAgent(tb testing.TB, nc *nats.Conn, f agent.Fetcher, cfg agent.Config) *agent.Agent {
	tb.Helper()
	if cfg.Tenant == "" {
		cfg.Tenant = tenant
	}
	if cfg.Instance == "" {
		cfg.Instance = "agent-1"
	}
	a, err := agent.New(nc, f, cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = a.Close() })
	return a
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer = testutil.SyncBuffer

func debugLogger(buf *syncBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// collect subscribes to subject and returns the channel of its messages.
func collect(tb testing.TB, nc *nats.Conn, subject string) chan *nats.Msg {
	tb.Helper()
	ch := make(chan *nats.Msg, 65536)
	sub, err := nc.ChanSubscribe(subject, ch)
	require.NoError(tb, err)
	require.NoError(tb, nc.Flush())
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
	return ch
}

func next(t *testing.T, ch chan *nats.Msg, d time.Duration) *nats.Msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(d):
		t.Fatalf("no message within %s", d)
		return nil
	}
}

func get(t *testing.T, a *agent.Agent, secret string) agent.Secret {
	t.Helper()
	s, err := a.Get(context.Background(), secret)
	require.NoError(t, err)
	return s
}
