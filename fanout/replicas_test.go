package fanout_test

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// replicaFanout runs a Fanout on its own connection to bus's server, with
// confirmations under a lease, as one rekeyd replica would.
func replicaFanout(t *testing.T, url, name string) (*fanout.Fanout, *orchestrator.Bus) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	bus, err := orchestrator.Connect(context.Background(), url, name, orchestrator.NATSConfig{}, log)
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	leases, err := orchestrator.NewLeases(context.Background(), bus, name, time.Second, nil, log)
	require.NoError(t, err)
	f, err := fanout.New(fanout.Config{ConfirmTimeout: time.Second, Source: name + "/fanout"}, fanout.Deps{Deps: orchestrator.Deps{
		Bus: bus, Audit: orchestrator.NewAuditor(bus, name, log), Metrics: orchestrator.NewMetrics(), Log: log}, Leases: leases})
	require.NoError(t, err)
	run(t, f)
	require.Eventually(t, f.Started, 5*time.Second, 10*time.Millisecond)
	return f, bus
}

func heartbeat(t *testing.T, bus *orchestrator.Bus, tenant, agent string) {
	t.Helper()
	ev, err := schemas.NewEvent("agent", schemas.TypeAgentPresence, tenant, tenant, schemas.AgentPresence{
		Tenant: tenant, Agent: agent, Interval: 10 * time.Second,
	})
	require.NoError(t, err)
	b, err := ev.Encode()
	require.NoError(t, err)
	require.NoError(t, bus.NC.Publish(schemas.PresenceSubject(tenant, agent), b))
}

// TestReplicasShareOneView: two fanout replicas; whichever publishes an
// invalidation, both track it and its acks, and one confirmation (one
// audit record) is written.
func TestReplicasShareOneView(t *testing.T) {
	bus := startBus(t)
	url := bus.NC.ConnectedUrl()
	a, _ := replicaFanout(t, url, "replica-a")
	b, _ := replicaFanout(t, url, "replica-b")
	confirmations, err := bus.NC.SubscribeSync(schemas.EventsSubject("acme", schemas.KindInvalidationConfirmed))
	require.NoError(t, err)
	heartbeat(t, bus, "acme", "agent-1")
	heartbeat(t, bus, "acme", "agent-2")
	require.Eventually(t, func() bool {
		now := time.Now()
		return len(a.Acks().Live("acme", now)) == 2 && len(b.Acks().Live("acme", now)) == 2
	}, 5*time.Second, 10*time.Millisecond)

	const rotations = 6
	now := time.Now().UTC()
	for i := range rotations {
		id := "req-" + strconv.Itoa(i)
		publish(t, bus, "acme", schemas.KindRotationCompleted, schemas.TypeRotationCompleted, "acme/k"+strconv.Itoa(i), schemas.RotationCompleted{
			Tenant: "acme", Secret: "k" + strconv.Itoa(i), Backend: "local", Version: "2", PreviousVersion: "1",
			RequestID: id, Trigger: schemas.Trigger{Kind: "api"}, Attempts: 1, StartedAt: now, CompletedAt: now,
		})
	}
	for i := range rotations {
		id, secret := "req-"+strconv.Itoa(i), "k"+strconv.Itoa(i)
		for _, f := range []*fanout.Fanout{a, b} {
			require.Eventually(t, func() bool {
				_, err := f.Acks().Get("acme", secret, id)
				return err == nil
			}, 5*time.Second, 10*time.Millisecond, "both replicas track %s", id)
		}
		for _, agent := range []string{"agent-1", "agent-2"} {
			ev, err := schemas.NewEvent("agent", schemas.TypeInvalidationAck, "acme", "acme/"+secret, schemas.InvalidationAck{
				Tenant: "acme", Secret: secret, Agent: agent, Version: "2", RequestID: id, ReceivedAt: now, DroppedAt: now,
			})
			require.NoError(t, err)
			data, err := ev.Encode()
			require.NoError(t, err)
			require.NoError(t, bus.NC.Publish(schemas.AckSubject("acme", secret, agent), data))
		}
	}
	seen := map[string]bool{}
	for range rotations {
		m, err := confirmations.NextMsg(5 * time.Second)
		require.NoError(t, err)
		var c schemas.InvalidationConfirmed
		_, err = schemas.DecodeAs(m.Data, schemas.TypeInvalidationConfirmed, &c)
		require.NoError(t, err)
		require.True(t, c.Complete, "%+v", c)
		require.Equal(t, 2, c.Acked)
		seen[c.RequestID] = true
	}
	require.Len(t, seen, rotations)
	_, err = confirmations.NextMsg(1500 * time.Millisecond)
	require.ErrorIs(t, err, nats.ErrTimeout, "one confirmation per invalidation")
	for _, f := range []*fanout.Fanout{a, b} {
		d, err := f.Acks().Latest("acme", "k0")
		require.NoError(t, err)
		require.Len(t, d.Acks, 2, "both replicas saw both acks")
	}
}

// TestStaleEventNotPublished: an event older than the last invalidation of
// its subject (a redelivery after a crash, a slower replica) is not
// published: it would undo the newer one.
func TestStaleEventNotPublished(t *testing.T) {
	bus := startBus(t)
	ctx := context.Background()
	f := runFanout(t, bus)
	require.Eventually(t, f.Started, 5*time.Second, 10*time.Millisecond)
	events, err := bus.JS.Stream(ctx, schemas.StreamEvents)
	require.NoError(t, err)
	epoch := strconv.FormatInt(events.CachedInfo().Created.UnixNano(), 10)

	// A newer event's invalidation is already out.
	subject := schemas.InvalidateSubject("acme", schemas.TenantToken)
	newer := nats.NewMsg(subject)
	newer.Data = []byte(`{}`)
	newer.Header.Set(fanout.HeaderEvent, epoch+"/1000")
	_, err = bus.JS.PublishMsg(ctx, newer)
	require.NoError(t, err)

	sub, err := bus.NC.SubscribeSync("rekey.invalidate.>")
	require.NoError(t, err)
	now := time.Now().UTC()
	publish(t, bus, "acme", schemas.KindTenantRestored, schemas.TypeTenantRestored, "acme", schemas.TenantRestored{
		Tenant: "acme", RequestID: "res-old", RestoredAt: now,
	})
	_, err = sub.NextMsg(time.Second)
	require.ErrorIs(t, err, nats.ErrTimeout, "the stale restore is not published")

	// Another subject is not concerned, and the next invalidation carries
	// its event's position.
	publish(t, bus, "acme", schemas.KindRotationCompleted, schemas.TypeRotationCompleted, "acme/openai-key", schemas.RotationCompleted{
		Tenant: "acme", Secret: "openai-key", Backend: "local", Version: "2", RequestID: "req-1", StartedAt: now, CompletedAt: now,
	})
	m, inv := next(t, sub)
	require.Equal(t, "req-1", inv.RequestID)
	gotEpoch, seq, ok := strings.Cut(m.Header.Get(fanout.HeaderEvent), "/")
	require.True(t, ok, "header %s: %q", fanout.HeaderEvent, m.Header.Get(fanout.HeaderEvent))
	require.Equal(t, epoch, gotEpoch)
	require.NotEmpty(t, seq)
	require.Empty(t, m.Header.Get(nats.MsgIdHdr), "agents parse no Nats-Msg-Id")
}
