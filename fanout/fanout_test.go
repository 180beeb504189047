package fanout_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

func startBus(t *testing.T) *orchestrator.Bus {
	t.Helper()
	srv := testutil.StartNATS(t, -1, "")
	bus, err := orchestrator.Connect(context.Background(), srv.ClientURL(), "fanout-test", orchestrator.NATSConfig{}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	require.NoError(t, bus.EnsureStreams(context.Background()))
	return bus
}

// runFanout runs a Fanout on bus; with tenants, each has its own
// subscriptions to acks and heartbeats (as in rekeyd).
func runFanout(t *testing.T, bus *orchestrator.Bus, tenants ...string) *fanout.Fanout {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	f, err := fanout.New(fanout.Config{Tenants: tenants, Source: "test/fanout"}, fanout.Deps{Deps: orchestrator.Deps{
		Bus: bus, Audit: orchestrator.NewAuditor(bus, "test", log), Metrics: orchestrator.NewMetrics(), Log: log}})
	require.NoError(t, err)
	run(t, f)
	return f
}

// run runs f until the test ends.
func run(t *testing.T, f *fanout.Fanout) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
}

func publish(t *testing.T, bus *orchestrator.Bus, tenant, kind, typ, subject string, data any) schemas.Event {
	t.Helper()
	ev, err := bus.PublishEvent(context.Background(), schemas.EventsSubject(tenant, kind), "test", typ, tenant, subject, data)
	require.NoError(t, err)
	return ev
}

func next(t *testing.T, sub *nats.Subscription) (*nats.Msg, schemas.Invalidation) {
	t.Helper()
	m, err := sub.NextMsg(5 * time.Second)
	require.NoError(t, err)
	ev, err := schemas.Decode(m.Data)
	require.NoError(t, err)
	var inv schemas.Invalidation
	require.NoError(t, ev.DecodeData(schemas.TypeInvalidation, &inv))
	return m, inv
}

func TestFanoutPublishesInvalidations(t *testing.T) {
	bus := startBus(t)
	sub, err := bus.NC.SubscribeSync("rekey.invalidate.>")
	require.NoError(t, err)
	f := runFanout(t, bus)

	now := time.Now().UTC()
	done := publish(t, bus, "acme", schemas.KindRotationCompleted, schemas.TypeRotationCompleted, "acme/openai-key", schemas.RotationCompleted{
		Tenant: "acme", Secret: "openai-key", Backend: "local", Version: "7", PreviousVersion: "6",
		RequestID: "req-1", Reason: "alert", Trigger: schemas.Trigger{Kind: "api"}, Attempts: 1, StartedAt: now, CompletedAt: now,
	})
	m, inv := next(t, sub)
	require.Equal(t, "rekey.invalidate.acme.openai-key", m.Subject)
	require.Equal(t, schemas.InvalidationRotated, inv.Kind)
	require.Equal(t, "7", inv.Version)
	require.Equal(t, "req-1", inv.RequestID)
	require.Equal(t, "alert", inv.Reason)
	ev, err := schemas.Decode(m.Data)
	require.NoError(t, err)
	require.Equal(t, "inv-"+done.ID, ev.ID, "derived id: a redelivered event yields the same invalidation")

	publish(t, bus, "globex", schemas.KindRevocationStarted, schemas.TypeRevocationStarted, "globex", schemas.RevocationStarted{
		Tenant: "globex", RequestID: "rev-1", Reason: "compromised", StartedAt: now,
	})
	m, inv = next(t, sub)
	require.Equal(t, "rekey.invalidate.globex._tenant", m.Subject)
	require.Equal(t, schemas.InvalidationRevoked, inv.Kind)
	require.Empty(t, inv.Secret)

	publish(t, bus, "globex", schemas.KindTenantRestored, schemas.TypeTenantRestored, "globex", schemas.TenantRestored{
		Tenant: "globex", RequestID: "res-1", RestoredAt: now,
	})
	m, inv = next(t, sub)
	require.Equal(t, "rekey.invalidate.globex._tenant", m.Subject)
	require.Equal(t, schemas.InvalidationRestored, inv.Kind)

	// A malformed event and an event of a kind fanout ignores publish nothing.
	_, err = bus.JS.Publish(context.Background(), schemas.EventsSubject("acme", schemas.KindRotationCompleted), []byte("{not json"))
	require.NoError(t, err)
	publish(t, bus, "acme", schemas.KindRotationFailed, schemas.TypeRotationFailed, "acme/openai-key", schemas.RotationFailed{Tenant: "acme", Secret: "openai-key"})
	_, err = sub.NextMsg(300 * time.Millisecond)
	require.ErrorIs(t, err, nats.ErrTimeout)

	// The stream keeps the last invalidation per subject for resync.
	s, err := bus.JS.Stream(context.Background(), schemas.StreamInvalidate)
	require.NoError(t, err)
	last, err := s.GetLastMsgForSubject(context.Background(), "rekey.invalidate.globex._tenant")
	require.NoError(t, err)
	require.Contains(t, string(last.Data), schemas.InvalidationRestored)

	// Acks are tracked per invalidation, and only on the tenant's own subject.
	ack := func(subject, tenant, agent string) {
		ev, err := schemas.NewEvent("agent", schemas.TypeInvalidationAck, tenant, tenant+"/openai-key", schemas.InvalidationAck{
			Tenant: tenant, Secret: "openai-key", Agent: agent, Version: "7", RequestID: "req-1", ReceivedAt: now, DroppedAt: now,
		})
		require.NoError(t, err)
		b, _ := ev.Encode()
		require.NoError(t, bus.NC.Publish(subject, b))
	}
	ack("rekey.ack.globex.openai-key.intruder", "acme", "intruder") // subject and payload disagree: ignored
	ack("rekey.ack.acme.openai-key.agent-2", "acme", "intruder")    // another instance's subject: ignored
	ack("rekey.ack.acme.openai-key.agent-1", "acme", "agent-1")
	require.Eventually(t, func() bool {
		d, err := f.Acks().Get("acme", "openai-key", "req-1")
		return err == nil && len(d.Acks) > 0
	}, 5*time.Second, 10*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	d, err := f.Acks().Get("acme", "openai-key", "req-1")
	require.NoError(t, err)
	require.Contains(t, d.Acks, "agent-1")
	require.NotContains(t, d.Acks, "intruder")
}

func TestAckTrackerBounded(t *testing.T) {
	tr := fanout.NewAckTracker(2)
	for _, id := range []string{"a", "b", "c"} {
		tr.Published(schemas.Invalidation{Tenant: "acme", Secret: "k", RequestID: id, PublishedAt: time.Now()})
	}
	_, err := tr.Get("acme", "k", "a")
	require.Error(t, err, "the oldest entry is evicted")
	_, ok := tr.Acked(schemas.InvalidationAck{Tenant: "acme", Secret: "k", RequestID: "c", Agent: "x"}, time.Now())
	require.True(t, ok)
	_, ok = tr.Acked(schemas.InvalidationAck{Tenant: "acme", Secret: "k", RequestID: "zzz", Agent: "x"}, time.Now())
	require.False(t, ok)
}
