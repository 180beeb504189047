package agent_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  agent.Config
		ok   bool
	}{
		{"minimal", agent.Config{Tenant: "acme"}, true},
		{"empty tenant", agent.Config{}, false},
		{"bad tenant", agent.Config{Tenant: "Acme.*"}, false},
		{"negative ttl", agent.Config{Tenant: "acme", TTL: -time.Second}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
}

func TestGetCachedDoesNotRefetch(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	createStream(t, nc)
	f := newFakeFetcher()
	f.set("openai-key", 1)
	a := startAgent(t, nc, f, agent.Config{})

	for range 1000 {
		sec := get(t, a, "openai-key")
		require.Equal(t, "openai-key", sec.Name)
		require.Equal(t, "v1", sec.Version)
		require.Equal(t, value(tenant, "openai-key", 1), string(sec.Value))
		require.False(t, sec.FetchedAt.IsZero())
	}
	require.Equal(t, 1, f.callsFor("openai-key"))

	_, err := a.Get(context.Background(), "missing")
	require.ErrorIs(t, err, agent.ErrNotFound)
	_, err = a.Get(context.Background(), "Not.Valid")
	require.ErrorIs(t, err, schemas.ErrInvalidID)
	require.Equal(t, 0, f.callsFor("Not.Valid"))
}

func TestConcurrentMissesFetchOnce(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	createStream(t, nc)
	f := newFakeFetcher()
	f.set("db-password", 7)
	block, started := make(chan struct{}), make(chan string, 200)
	f.setBlock(block, started)
	a := startAgent(t, nc, f, agent.Config{})

	var wg sync.WaitGroup
	results := make(chan agent.Secret, 100)
	errs := make(chan error, 100)
	for range 100 {
		wg.Go(func() {
			sec, err := a.Get(context.Background(), "db-password")
			if err != nil {
				errs <- err
				return
			}
			results <- sec
		})
	}
	<-started                         // the one fetch is in flight...
	time.Sleep(50 * time.Millisecond) // ...let the others pile up behind it
	close(block)
	wg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	n := 0
	for sec := range results {
		require.Equal(t, "v7", sec.Version)
		n++
	}
	require.Equal(t, 100, n)
	require.Equal(t, 1, f.callsFor("db-password"))
}

// ackFixture is an agent "planner-1" on its own server, whose fetcher
// holds openai-key and other at version 1, with its acks collected and its
// OnInvalidate calls hooked.
type ackFixture struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	acks chan *nats.Msg
	f    *fakeFetcher
	h    *hook
	a    *agent.Agent
}

func newAckFixture(t *testing.T, ackDelay time.Duration) ackFixture {
	t.Helper()
	nc := connect(t, startServer(t))
	x := ackFixture{nc: nc, js: createStream(t, nc), acks: collect(t, nc, "rekey.ack."+tenant+".>"), f: newFakeFetcher(), h: newHook()}
	x.f.set("openai-key", 1)
	x.f.set("other", 1)
	x.a = startAgent(t, nc, x.f, agent.Config{Instance: "planner-1", OnInvalidate: x.h.fn, AckDelay: ackDelay})
	return x
}

func TestInvalidationRefetchesAndAcks(t *testing.T) {
	x := newAckFixture(t, 0)
	js, acks, f, h, a := x.js, x.acks, x.f, x.h, x.a

	require.Equal(t, "v1", get(t, a, "openai-key").Version)
	require.Equal(t, "v1", get(t, a, "other").Version)

	f.set("openai-key", 2)
	publishRotated(t, js, tenant, "openai-key", 2)
	ev := h.wait(t)
	require.Equal(t, "openai-key", ev.Invalidation.Secret)
	require.Equal(t, "v2", ev.Invalidation.Version)
	require.False(t, ev.DroppedAt.Before(ev.ReceivedAt))

	require.Equal(t, "v2", get(t, a, "openai-key").Version)
	require.Equal(t, 2, f.callsFor("openai-key"))
	require.Equal(t, "v1", get(t, a, "other").Version, "other secrets stay cached")
	require.Equal(t, 1, f.callsFor("other"))

	m := next(t, acks, 5*time.Second)
	require.Equal(t, schemas.AckSubject(tenant, "openai-key", "planner-1"), m.Subject)
	e, err := schemas.Decode(m.Data)
	require.NoError(t, err)
	require.Equal(t, schemas.TypeInvalidationAck, e.Type)
	require.Equal(t, "rekey-agent/planner-1", e.Source)
	require.Equal(t, tenant+"/openai-key", e.Subject)
	var ack schemas.InvalidationAck
	require.NoError(t, e.DecodeData(schemas.TypeInvalidationAck, &ack))
	require.Equal(t, "planner-1", ack.Agent)
	require.Equal(t, "v2", ack.Version)
	require.Equal(t, "openai-key", ack.Secret)
	require.Equal(t, ev.Invalidation.RequestID, ack.RequestID)
	require.False(t, ack.DroppedAt.IsZero())
}

// TestAckWaitsForAckDelay: the old value is dropped at once, the ack
// waits for AckDelay (here longer than the test) and acks that waited
// together are sent in order; Close sends the acks still waiting.
func TestAckWaitsForAckDelay(t *testing.T) {
	x := newAckFixture(t, time.Hour)
	js, acks, f, h, a := x.js, x.acks, x.f, x.h, x.a
	get(t, a, "openai-key")
	get(t, a, "other")

	f.set("openai-key", 2)
	f.set("other", 2)
	published := time.Now()
	publishRotated(t, js, tenant, "openai-key", 2)
	publishRotated(t, js, tenant, "other", 2)
	for _, secret := range []string{"openai-key", "other"} {
		require.Eventually(t, func() bool { return get(t, a, secret).Version == "v2" }, 5*time.Second, time.Millisecond, "%s dropped at once", secret)
	}
	require.NoError(t, x.nc.Flush())
	select {
	case m := <-acks:
		t.Fatalf("ack %s sent before AckDelay", m.Subject)
	case <-time.After(200 * time.Millisecond):
	}
	require.Zero(t, len(h.ch), "OnInvalidate runs with the ack, after AckDelay")

	closing := time.Now()
	require.NoError(t, a.Close())
	for _, secret := range []string{"openai-key", "other"} {
		ev := h.wait(t)
		require.Equal(t, secret, ev.Invalidation.Secret)
		require.Equal(t, "v2", ev.Invalidation.Version)
		require.True(t, ev.DroppedAt.After(published) && ev.DroppedAt.Before(closing.Add(-200*time.Millisecond)), "DroppedAt is the drop on arrival, not the decoding at Close")
	}
	for _, secret := range []string{"openai-key", "other"} {
		m := next(t, acks, 5*time.Second)
		require.Equal(t, schemas.AckSubject(tenant, secret, "planner-1"), m.Subject)
		var ack schemas.InvalidationAck
		_, err := schemas.DecodeAs(m.Data, schemas.TypeInvalidationAck, &ack)
		require.NoError(t, err)
		require.Equal(t, "v2", ack.Version)
	}
}

// A fetch that started before an invalidation returns the old version; it
// must not be cached, nor handed to a Get that started after the
// invalidation was applied.
func TestFetchInFlightDuringInvalidation(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	js := createStream(t, nc)
	f := newFakeFetcher()
	f.set("k", 1)
	block, started := make(chan struct{}), make(chan string, 10)
	f.setBlock(block, started)
	h := newHook()
	a := startAgent(t, nc, f, agent.Config{OnInvalidate: h.fn})

	first := make(chan agent.Secret, 1)
	go func() {
		sec, err := a.Get(context.Background(), "k")
		if err != nil {
			t.Error(err)
		}
		first <- sec
	}()
	<-started // fetch 1 read v1 and is blocked

	f.set("k", 2)
	f.setBlock(nil, nil)
	publishRotated(t, js, tenant, "k", 2)
	h.wait(t) // the invalidation is applied

	// Started after the invalidation: must not join fetch 1.
	require.Equal(t, "v2", get(t, a, "k").Version)
	require.Equal(t, 2, f.callsFor("k"))

	close(block) // fetch 1 returns v1, which is not cached; its caller retries
	select {
	case sec := <-first:
		require.Equal(t, "v2", sec.Version)
	case <-time.After(5 * time.Second):
		t.Fatal("first Get did not return")
	}
	require.Equal(t, "v2", get(t, a, "k").Version)
	require.Equal(t, 2, f.callsFor("k"), "fetch 1's retry found v2 cached")
}

// The invariant under load: no Get that starts after invalidation N was
// applied returns a version older than N.
func TestNoStaleVersionAfterInvalidation(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	js := createStream(t, nc)
	f := newFakeFetcher()
	f.set("k", 1)
	f.delay = 2 * time.Millisecond // fetches overlap invalidations
	var applied atomic.Int64
	applied.Store(1)
	a := startAgent(t, nc, f, agent.Config{OnInvalidate: func(ev agent.Invalidated) {
		applied.Store(int64(parseVersion(ev.Invalidation.Version)))
	}})

	const rotations = 150
	done := make(chan struct{})
	var violations, gets atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				runtime.Gosched() // let the subscription run
				floor := applied.Load()
				sec, err := a.Get(context.Background(), "k")
				if err != nil {
					t.Error(err)
					return
				}
				gets.Add(1)
				if int64(parseVersion(sec.Version)) < floor {
					violations.Add(1)
				}
			}
		})
	}
	for v := 2; v <= rotations; v++ {
		f.set("k", v) // the source changes, then rekey announces it
		publishRotated(t, js, tenant, "k", v)
	}
	require.Eventually(t, func() bool { return applied.Load() == rotations }, 5*time.Second, time.Millisecond)
	close(done)
	wg.Wait()
	require.Zero(t, violations.Load(), "stale versions returned (of %d gets)", gets.Load())
	require.Equal(t, version(rotations), get(t, a, "k").Version)
	t.Logf("%d gets, %d fetches over %d rotations", gets.Load(), f.callsFor("k"), rotations)
}

func TestRevokeAndRestore(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	js := createStream(t, nc)
	acks := collect(t, nc, schemas.AckSubject(tenant, schemas.TenantToken, "agent-1"))
	f := newFakeFetcher()
	f.set("a", 1)
	f.set("b", 1)
	h := newHook()
	a := startAgent(t, nc, f, agent.Config{OnInvalidate: h.fn})
	get(t, a, "a")
	get(t, a, "b")

	publishTenant(t, js, tenant, schemas.InvalidationRevoked)
	ev := h.wait(t)
	require.Equal(t, schemas.InvalidationRevoked, ev.Invalidation.Kind)
	require.True(t, a.Revoked())
	for _, name := range []string{"a", "b", "never-fetched"} {
		_, err := a.Get(context.Background(), name)
		require.ErrorIs(t, err, agent.ErrRevoked)
	}
	require.Equal(t, 1, f.callsFor("a"))
	require.Equal(t, 0, f.callsFor("never-fetched"), "a revoked agent does not even fetch")

	m := next(t, acks, 5*time.Second)
	e, err := schemas.Decode(m.Data)
	require.NoError(t, err)
	var ack schemas.InvalidationAck
	require.NoError(t, e.DecodeData(schemas.TypeInvalidationAck, &ack))
	require.Equal(t, "agent-1", ack.Agent)
	require.Empty(t, ack.Secret)
	require.Equal(t, ev.Invalidation.RequestID, ack.RequestID)

	publishTenant(t, js, tenant, schemas.InvalidationRestored)
	h.wait(t)
	require.False(t, a.Revoked())
	require.Equal(t, "v1", get(t, a, "a").Version)
	require.Equal(t, 2, f.callsFor("a"), "the cache was dropped on revocation")
}

func TestStartsRevokedFromStream(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	js := createStream(t, nc)
	publishTenant(t, js, tenant, schemas.InvalidationRevoked)
	publishTenant(t, js, "other", schemas.InvalidationRevoked)
	publishRotated(t, js, tenant, "k", 3)

	f := newFakeFetcher()
	f.set("k", 3)
	acks := collect(t, nc, "rekey.ack.>")
	a := startAgent(t, nc, f, agent.Config{})
	require.True(t, a.Revoked())
	_, err := a.Get(context.Background(), "k")
	require.ErrorIs(t, err, agent.ErrRevoked)
	m := next(t, acks, 5*time.Second)
	require.Equal(t, schemas.AckSubject(tenant, schemas.TenantToken, "agent-1"), m.Subject, "the replayed revocation is confirmed")

	// Restored since: a new agent starts serving.
	publishTenant(t, js, tenant, schemas.InvalidationRestored)
	b := startAgent(t, nc, f, agent.Config{Instance: "agent-2"})
	require.False(t, b.Revoked())
	require.Equal(t, "v3", get(t, b, "k").Version)

	// Another tenant's revocation does not concern this one.
	third := connect(t, s, nats.CustomInboxPrefix(schemas.AgentInboxPrefix("third")))
	c := startAgent(t, third, f, agent.Config{Tenant: "third", Instance: "agent-3"})
	require.False(t, c.Revoked())
}

// After a reconnect the agent replays what it missed while away.
func TestResyncAfterReconnect(t *testing.T) {
	s := startServer(t)
	px := newProxy(t, s.Addr().String())
	nc, err := nats.Connect("nats://"+px.addr(), nats.ReconnectWait(20*time.Millisecond), nats.MaxReconnects(-1),
		nats.CustomInboxPrefix(schemas.AgentInboxPrefix(tenant)))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	direct := connect(t, s)
	js := createStream(t, direct)
	f := newFakeFetcher()
	f.set("k", 1)
	f.set("same", 1)
	publishRotated(t, js, tenant, "same", 1)
	h := newHook()
	var reconnects atomic.Int32
	nc.SetReconnectHandler(func(*nats.Conn) { reconnects.Add(1) }) // set before the agent: kept by its chain
	a := startAgent(t, nc, f, agent.Config{OnInvalidate: h.fn})
	require.Equal(t, "v1", get(t, a, "k").Version)
	require.Equal(t, "v1", get(t, a, "same").Version)

	px.cut()
	require.Eventually(t, func() bool { return !nc.IsConnected() }, 5*time.Second, time.Millisecond)
	f.set("k", 2)
	publishRotated(t, js, tenant, "k", 2) // missed by the agent
	h.none(t, 50*time.Millisecond)
	px.restore()

	ev := h.wait(t) // applied by the resync after the reconnect
	require.Equal(t, "k", ev.Invalidation.Secret)
	require.EqualValues(t, 1, reconnects.Load(), "the handler set before the agent still runs")
	require.Equal(t, "v2", get(t, a, "k").Version)
	require.Equal(t, "v1", get(t, a, "same").Version, "an up-to-date entry is kept")
	require.Equal(t, 1, f.callsFor("same"))
	h.none(t, 100*time.Millisecond)

	// Missed revocation: fail closed after the reconnect.
	px.cut()
	require.Eventually(t, func() bool { return !nc.IsConnected() }, 5*time.Second, time.Millisecond)
	publishTenant(t, js, tenant, schemas.InvalidationRevoked)
	px.restore()
	h.wait(t)
	require.True(t, a.Revoked())
}

func TestIgnoresOtherTenantsAndMalformed(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	js := createStream(t, nc)
	f := newFakeFetcher()
	f.set("k", 1)
	h := newHook()
	logs := &syncBuffer{}
	a := startAgent(t, nc, f, agent.Config{OnInvalidate: h.fn, Logger: debugLogger(logs)})
	get(t, a, "k")

	// Another tenant, same secret name: not even received.
	publishRotated(t, js, "globex", "k", 2)
	publishTenant(t, js, "globex", schemas.InvalidationRevoked)
	require.NoError(t, nc.Flush())
	h.none(t, 200*time.Millisecond)
	require.Equal(t, "v1", get(t, a, "k").Version)
	require.Equal(t, 1, f.callsFor("k"), "another tenant's invalidation dropped nothing")

	subject := schemas.InvalidateSubject(tenant, "k")
	tenantSubject := schemas.InvalidateSubject(tenant, schemas.TenantToken)
	wrongType := func() []byte {
		ev, err := schemas.NewEvent("x", schemas.TypeUsageReport, tenant, tenant+"/k", schemas.Invalidation{Tenant: tenant, Secret: "k", Kind: "rotated"})
		require.NoError(t, err)
		b, _ := ev.Encode()
		return b
	}()
	for _, tc := range []struct {
		name, subject string
		data          []byte
	}{
		{"empty", subject, nil},
		{"not json", subject, []byte("{not json")},
		{"json but no event", subject, []byte(`{"hello":"world"}`)},
		{"wrong type", subject, wrongType},
		{"other tenant in envelope", subject, invalidation(t, "globex", "k", schemas.InvalidationRotated, "v2")},
		{"secret does not match subject", subject, invalidation(t, tenant, "other", schemas.InvalidationRotated, "v2")},
		{"rotated on tenant subject", tenantSubject, invalidation(t, tenant, "k", schemas.InvalidationRotated, "v2")},
		{"bad kind", subject, []byte(strings.Replace(string(invalidation(t, tenant, "k", schemas.InvalidationRotated, "v2")), `"kind":"rotated"`, `"kind":"exploded"`, 1))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, nc.Publish(tc.subject, tc.data))
		})
	}
	require.NoError(t, nc.Publish("rekey.invalidate."+tenant+".k.extra", invalidation(t, tenant, "k", schemas.InvalidationRotated, "v2")))
	require.NoError(t, nc.Flush())
	h.none(t, 200*time.Millisecond)
	require.False(t, a.Revoked())
	require.Equal(t, "v1", get(t, a, "k").Version)
	// On the tenant's subject of a secret the value is dropped on arrival,
	// before decoding (only rekeyd may publish there): the malformed
	// messages cost one fetch, and are not applied, acked or reported.
	require.Equal(t, 2, f.callsFor("k"))
	require.Contains(t, logs.String(), "ignoring invalidation message")

	// Still alive: a valid one is applied.
	f.set("k", 2)
	publishRotated(t, js, tenant, "k", 2)
	h.wait(t)
	require.Equal(t, "v2", get(t, a, "k").Version)
}

func TestTTLBackstop(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	createStream(t, nc)
	f := newFakeFetcher()
	f.set("k", 1)
	a := startAgent(t, nc, f, agent.Config{TTL: 50 * time.Millisecond})
	require.Equal(t, "v1", get(t, a, "k").Version)
	require.Equal(t, "v1", get(t, a, "k").Version)
	require.Equal(t, 1, f.callsFor("k"))

	f.set("k", 2) // changed without an invalidation (lost)
	time.Sleep(80 * time.Millisecond)
	require.Equal(t, "v2", get(t, a, "k").Version)
	require.Equal(t, 2, f.callsFor("k"))
}

func TestUsageReportsAreBatched(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	createStream(t, nc)
	used := collect(t, nc, "rekey.used.>")
	f := newFakeFetcher()
	f.set("k", 4)
	const interval = 700 * time.Millisecond
	h := newHook()
	a := startAgent(t, nc, f, agent.Config{Instance: "billing-1", Tool: "reconcile", UsageInterval: interval, OnInvalidate: h.fn})

	for range 10000 {
		get(t, a, "k")
	}
	m := next(t, used, 3*interval)
	require.Equal(t, schemas.UsedSubject(tenant, "k", "billing-1"), m.Subject)
	e, err := schemas.Decode(m.Data)
	require.NoError(t, err)
	require.Equal(t, schemas.TypeUsageReport, e.Type)
	require.Equal(t, "rekey-agent/billing-1", e.Source)
	require.Equal(t, e.ID, m.Header.Get(nats.MsgIdHdr))
	var r schemas.UsageReport
	require.NoError(t, e.DecodeData(schemas.TypeUsageReport, &r))
	require.Equal(t, schemas.UsageReport{Tenant: tenant, Secret: "k", Version: "v4", Agent: "billing-1", Tool: "reconcile",
		Count: 10000, WindowStart: r.WindowStart, WindowEnd: r.WindowEnd}, r)
	require.True(t, r.WindowEnd.After(r.WindowStart))

	// Nothing used, nothing reported.
	select {
	case m := <-used:
		t.Fatalf("unexpected report: %s", m.Data)
	case <-time.After(2 * interval):
	}

	// Close publishes what is left, per version.
	f.set("k", 5)
	for range 3 {
		get(t, a, "k")
	}
	require.NoError(t, nc.Publish(schemas.InvalidateSubject(tenant, "k"), invalidation(t, tenant, "k", schemas.InvalidationRotated, "v5")))
	h.wait(t)
	require.Equal(t, "v5", get(t, a, "k").Version)
	require.NoError(t, a.Close())
	counts := map[string]int64{}
	for len(used) > 0 || len(counts) < 2 {
		m := next(t, used, 2*time.Second)
		e, err := schemas.Decode(m.Data)
		require.NoError(t, err)
		require.NoError(t, e.DecodeData(schemas.TypeUsageReport, &r))
		counts[r.Version] += r.Count
	}
	require.Equal(t, int64(3), counts["v4"])
	require.Equal(t, int64(1), counts["v5"])
}

func TestLifecycle(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	// No INVALIDATE stream: rekeyd is not running yet. Start still works.
	f := newFakeFetcher()
	f.set("k", 1)
	used := collect(t, nc, "rekey.used.>")
	a := newAgent(t, nc, f, agent.Config{UsageInterval: time.Hour})
	_, err := a.Get(context.Background(), "k")
	require.ErrorIs(t, err, agent.ErrNotStarted)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	require.Eventually(t, func() bool { _, err := a.Get(context.Background(), "k"); return err == nil }, 5*time.Second, time.Millisecond)
	get(t, a, "k")
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	m := next(t, used, 2*time.Second) // flushed at exit
	e, err := schemas.Decode(m.Data)
	require.NoError(t, err)
	var r schemas.UsageReport
	require.NoError(t, e.DecodeData(schemas.TypeUsageReport, &r))
	require.GreaterOrEqual(t, r.Count, int64(2))

	_, err = a.Get(context.Background(), "k")
	require.ErrorIs(t, err, agent.ErrClosed)
	require.ErrorIs(t, a.Start(context.Background()), agent.ErrClosed)
	require.NoError(t, a.Close())
}

func TestGetHonoursContext(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	f := newFakeFetcher()
	f.set("k", 1)
	block := make(chan struct{})
	f.setBlock(block, nil)
	a := startAgent(t, nc, f, agent.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := a.Get(ctx, "k")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	f.setBlock(nil, nil)
	close(block) // the shared fetch was not cancelled with its first caller
	require.Eventually(t, func() bool { _, err := a.Get(context.Background(), "k"); return err == nil }, 5*time.Second, time.Millisecond)
}

// No value in any message on rekey.>, nor in any log line, nor in errors.
func TestValuesNeverLeak(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	js := createStream(t, nc)
	all := collect(t, nc, "rekey.>")
	logs := &syncBuffer{}
	f := newFakeFetcher()
	f.set("k", 1)
	h := newHook()
	a := startAgent(t, nc, f, agent.Config{Logger: debugLogger(logs), UsageInterval: 50 * time.Millisecond, OnInvalidate: h.fn})
	sec := get(t, a, "k")
	require.NotContains(t, sec.String(), "s3cr3t")
	require.NotContains(t, sec.GoString(), "s3cr3t")
	a2 := startAgent(t, nc, agent.NewNATSFetcher(nc, "x"), agent.Config{Logger: debugLogger(logs), Instance: "agent-2"})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := a2.Get(ctx, "k") // no fetch server: an error
	require.Error(t, err)
	require.NotContains(t, err.Error(), "s3cr3t")

	f.set("k", 2)
	publishRotated(t, js, tenant, "k", 2)
	h.wait(t)
	get(t, a, "k")
	publishTenant(t, js, tenant, schemas.InvalidationRevoked)
	h.wait(t)
	publishTenant(t, js, tenant, schemas.InvalidationRestored)
	h.wait(t)
	get(t, a, "k")
	require.NoError(t, a.Close())

	var n int
	for len(all) > 0 {
		m := <-all
		n++
		for v := 1; v <= 2; v++ {
			val := value(tenant, "k", v)
			require.NotContains(t, string(m.Data), val, m.Subject)
			require.NotContains(t, string(m.Data), base64.StdEncoding.EncodeToString([]byte(val)), m.Subject)
		}
		require.True(t, len(m.Data) == 0 || json.Valid(m.Data), m.Subject)
	}
	require.Greater(t, n, 4)
	require.NotContains(t, logs.String(), "s3cr3t")
}

// Reads that name a tool or a run are reported per (secret, version, tool,
// run); plain reads keep Config.Tool.
func TestUsageReportsPerToolAndRun(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	createStream(t, nc)
	used := collect(t, nc, "rekey.used.>")
	f := newFakeFetcher()
	f.set("k", 4)
	a := startAgent(t, nc, f, agent.Config{Instance: "billing-1", Tool: "reconcile", UsageInterval: time.Hour})
	ctx := context.Background()
	for range 5 {
		get(t, a, "k")
	}
	for range 3 {
		_, err := a.GetFor(ctx, "k", agent.Use{Tool: "search"})
		require.NoError(t, err)
	}
	run := a.BeginRun(ctx, "run-7")
	for range 2 {
		_, err := run.GetFor(ctx, "k", "search")
		require.NoError(t, err)
	}
	_, err := run.Get(ctx, "k")
	require.NoError(t, err)
	_, err = a.GetFor(ctx, "k", agent.Use{Tool: strings.Repeat("x", schemas.MaxAgentFieldLen+1)})
	require.Error(t, err)
	require.NoError(t, run.End())
	require.NoError(t, a.Close())

	got := map[[2]string]int64{}
	for len(got) < 4 || len(used) > 0 {
		m := next(t, used, 2*time.Second)
		e, err := schemas.Decode(m.Data)
		require.NoError(t, err)
		var r schemas.UsageReport
		require.NoError(t, e.DecodeData(schemas.TypeUsageReport, &r))
		require.NoError(t, r.Validate())
		require.Equal(t, "v4", r.Version)
		got[[2]string{r.Tool, r.Run}] += r.Count
	}
	require.Equal(t, map[[2]string]int64{
		{"reconcile", ""}: 5, {"search", ""}: 3, {"search", "run-7"}: 2, {"reconcile", "run-7"}: 1,
	}, got)
}

// TestAckWaitsForAskedDelay: an invalidation whose Rekey-Ack-Delay asks
// for longer than the agent's AckDelay (fanout sizes it to the tenant's
// live agents) has its ack held back that long; the value is still
// dropped on arrival. A tenant-wide revocation honours it too.
func TestAckWaitsForAskedDelay(t *testing.T) {
	x := newAckFixture(t, 10*time.Millisecond)
	get(t, x.a, "openai-key")
	x.f.set("openai-key", 2)

	const asked = 400 * time.Millisecond
	published := time.Now()
	msg := nats.NewMsg(schemas.InvalidateSubject(tenant, "openai-key"))
	msg.Data = invalidation(t, tenant, "openai-key", schemas.InvalidationRotated, version(2))
	msg.Header.Set(schemas.HeaderAckDelay, "400")
	_, err := x.js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return get(t, x.a, "openai-key").Version == "v2" }, 5*time.Second, time.Millisecond, "dropped at once")

	m := next(t, x.acks, 5*time.Second)
	require.Equal(t, schemas.AckSubject(tenant, "openai-key", "planner-1"), m.Subject)
	require.GreaterOrEqual(t, time.Since(published), asked, "ack held back as long as asked")

	// Revocation: the gate closes at once, the ack waits as asked.
	published = time.Now()
	msg = nats.NewMsg(schemas.InvalidateSubject(tenant, schemas.TenantToken))
	msg.Data = invalidation(t, tenant, "", schemas.InvalidationRevoked, "")
	msg.Header.Set(schemas.HeaderAckDelay, "400")
	_, err = x.js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
	require.Eventually(t, x.a.Revoked, 5*time.Second, time.Millisecond)
	m = next(t, x.acks, 5*time.Second)
	require.Equal(t, schemas.AckSubject(tenant, schemas.TenantToken, "planner-1"), m.Subject)
	require.GreaterOrEqual(t, time.Since(published), asked)
}
