package fanout_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// TestAttackAgentMessagesOnTheBus, with one tenant's agent credentials:
// a "leaving" sent for another agent is refused (the victim is still
// waited for); acks of request ids that do not exist are not audited;
// the acks record of a real invalidation has an id not made of agent
// text. The refusals are audited once, with counts.
func TestAttackAgentMessagesOnTheBus(t *testing.T) {
	bus := startBus(t)
	f := runFanout(t, bus, "acme", "globex")
	require.Eventually(t, f.Started, 5*time.Second, 10*time.Millisecond)
	send := func(subject, typ string, data any) {
		ev, err := schemas.NewEvent("agent", typ, "acme", "acme", data)
		require.NoError(t, err)
		b, err := ev.Encode()
		require.NoError(t, err)
		require.NoError(t, bus.NC.Publish(subject, b))
	}
	heartbeat(t, bus, "acme", "victim")
	require.Eventually(t, func() bool { return f.Acks().Alive("acme", "victim", time.Now()) }, 5*time.Second, 10*time.Millisecond)

	// The victim's leaving, sent on the attacker's own subject.
	send(schemas.PresenceSubject("acme", "evil"), schemas.TypeAgentPresence,
		schemas.AgentPresence{Tenant: "acme", Agent: "victim", Interval: 10 * time.Second, Leaving: true})
	// 300 acks of invalidations that were never published.
	now := time.Now().UTC()
	for i := range 300 {
		send(schemas.AckSubject("acme", "k", "evil"), schemas.TypeInvalidationAck, schemas.InvalidationAck{
			Tenant: "acme", Secret: "k", Agent: "evil", RequestID: fmt.Sprintf("never-%d", i), ReceivedAt: now, DroppedAt: now,
		})
	}
	require.NoError(t, bus.NC.Flush())
	time.Sleep(300 * time.Millisecond)
	require.True(t, f.Acks().Alive("acme", "victim", time.Now()), "the victim is still waited for")

	// A real invalidation, acked by the victim with a name as long as allowed.
	publish(t, bus, "acme", schemas.KindRotationCompleted, schemas.TypeRotationCompleted, "acme/k", schemas.RotationCompleted{
		Tenant: "acme", Secret: "k", Backend: "local", Version: "2", PreviousVersion: "1",
		RequestID: "req-1", Trigger: schemas.Trigger{Kind: "api"}, Attempts: 1, StartedAt: now, CompletedAt: now,
	})
	require.Eventually(t, func() bool { _, err := f.Acks().Get("acme", "k", "req-1"); return err == nil }, 5*time.Second, 10*time.Millisecond)
	send(schemas.AckSubject("acme", "k", "victim"), schemas.TypeInvalidationAck, schemas.InvalidationAck{
		Tenant: "acme", Secret: "k", Agent: "victim", Version: "2", RequestID: "req-1", ReceivedAt: now, DroppedAt: now,
	})
	conf, err := bus.NC.SubscribeSync(schemas.EventsSubject("acme", schemas.KindInvalidationConfirmed))
	require.NoError(t, err)
	_, err = conf.NextMsg(5 * time.Second)
	require.NoError(t, err)

	var acksRecords, refusedRecords int
	require.Eventually(t, func() bool {
		acksRecords, refusedRecords = 0, 0
		for _, m := range auditMessages(t, bus) {
			var rec schemas.AuditRecord
			_, err := schemas.DecodeAs(m.Data, schemas.TypeAuditRecord, &rec)
			require.NoError(t, err)
			switch rec.Action {
			case "invalidation.acks":
				acksRecords++
				require.Equal(t, "req-1", rec.RequestID, "only acks of the published invalidation are audited")
				id := m.Header.Get("Nats-Msg-Id")
				require.True(t, strings.HasPrefix(id, "acks-acme-"), id)
				require.NotContains(t, id, "victim")
			case "fanout.refused":
				refusedRecords++
				require.Equal(t, "1", rec.Detail["malformed"], "the leaving sent for another")
			}
		}
		return acksRecords == 1 && refusedRecords == 1
	}, 5*time.Second, 50*time.Millisecond)
}

func auditMessages(t *testing.T, bus *orchestrator.Bus) []*jetstream.RawStreamMsg {
	t.Helper()
	return testutil.StreamMessages(t, bus.JS, schemas.StreamAudit)
}

// TestAcksOfALargeBurstAudited: 2,500 agents ack one invalidation; their
// acks are in the audit trail, each agent once, in records of at most
// 2,000 acks (the size bound), before the confirmation is published.
func TestAcksOfALargeBurstAudited(t *testing.T) {
	bus := startBus(t)
	f := runFanout(t, bus, "acme")
	require.Eventually(t, f.Started, 5*time.Second, 10*time.Millisecond)
	const n = 2500
	agent := func(i int) string { return fmt.Sprintf("agent-%04d", i) }
	for i := range n {
		heartbeat(t, bus, "acme", agent(i))
	}
	require.Eventually(t, func() bool { return len(f.Acks().Live("acme", time.Now())) == n }, 10*time.Second, 10*time.Millisecond)
	now := time.Now().UTC()
	publish(t, bus, "acme", schemas.KindRotationCompleted, schemas.TypeRotationCompleted, "acme/k", schemas.RotationCompleted{
		Tenant: "acme", Secret: "k", Backend: "local", Version: "2", PreviousVersion: "1",
		RequestID: "req-big", Trigger: schemas.Trigger{Kind: "api"}, Attempts: 1, StartedAt: now, CompletedAt: now,
	})
	require.Eventually(t, func() bool { _, err := f.Acks().Get("acme", "k", "req-big"); return err == nil }, 5*time.Second, 10*time.Millisecond)
	conf, err := bus.NC.SubscribeSync(schemas.EventsSubject("acme", schemas.KindInvalidationConfirmed))
	require.NoError(t, err)
	for i := range n {
		ev, err := schemas.NewEvent("agent", schemas.TypeInvalidationAck, "acme", "acme", schemas.InvalidationAck{
			Tenant: "acme", Secret: "k", Agent: agent(i), Version: "2", RequestID: "req-big", ReceivedAt: now, DroppedAt: now,
		})
		require.NoError(t, err)
		b, err := ev.Encode()
		require.NoError(t, err)
		require.NoError(t, bus.NC.Publish(schemas.AckSubject("acme", "k", agent(i)), b))
	}
	_, err = conf.NextMsg(10 * time.Second)
	require.NoError(t, err)

	seen := map[string]int{}
	records := 0
	for _, m := range auditMessages(t, bus) {
		var rec schemas.AuditRecord
		_, err := schemas.DecodeAs(m.Data, schemas.TypeAuditRecord, &rec)
		require.NoError(t, err)
		if rec.Action != "invalidation.acks" {
			continue
		}
		records++
		require.Equal(t, "req-big", rec.RequestID)
		require.LessOrEqual(t, len(rec.Acks), 2000, "a record holds at most 2,000 acks")
		for _, a := range rec.Acks {
			seen[a.Agent]++
		}
	}
	require.GreaterOrEqual(t, records, 2)
	require.Len(t, seen, n, "every agent's ack is audited, before the confirmation")
	for a, c := range seen {
		require.Equal(t, 1, c, "%s audited once", a)
	}
}
