package fanout

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

// A confirmed invalidation superseded by a later one of its secret keeps
// no per-agent lists; the latest one, and one not confirmed yet, keep
// them.
func TestAckTrackerCompactsSuperseded(t *testing.T) {
	tr := NewAckTracker(100)
	now := time.Now()
	tr.Seen(schemas.AgentPresence{Tenant: "acme", Agent: "a1", Interval: time.Minute}, now)
	tr.Seen(schemas.AgentPresence{Tenant: "acme", Agent: "a2", Interval: time.Minute}, now)
	inv := func(id string) schemas.Invalidation {
		return schemas.Invalidation{Tenant: "acme", Secret: "k", RequestID: id, PublishedAt: now}
	}
	ack := func(id, agent string) {
		_, ok := tr.Acked(schemas.InvalidationAck{Tenant: "acme", Secret: "k", RequestID: id, Agent: agent}, now.Add(time.Millisecond))
		require.True(t, ok)
	}

	tr.Published(inv("r1"))
	ack("r1", "a1")
	tr.Published(inv("r2")) // r1 superseded, not confirmed yet: kept
	d, err := tr.Get("acme", "k", "r1")
	require.NoError(t, err)
	require.Len(t, d.Live, 2)
	ack("r1", "a2")
	ack("r2", "a1")
	ack("r2", "a2")

	confirmed := tr.due(now.Add(time.Second), time.Minute)
	require.Len(t, confirmed, 2)
	require.Equal(t, 2, confirmed[0].Acked, "the confirmation is decided before the lists go")
	d, err = tr.Get("acme", "k", "r1")
	require.NoError(t, err)
	require.Nil(t, d.Live)
	require.Nil(t, d.Acks)
	_, counted := tr.Acked(schemas.InvalidationAck{Tenant: "acme", Secret: "k", RequestID: "r1", Agent: "a1"}, now.Add(time.Second))
	require.False(t, counted, "a late ack of a compacted delivery counts only in the acks metric")
	latest, err := tr.Latest("acme", "k")
	require.NoError(t, err)
	require.Equal(t, "r2", latest.Invalidation.RequestID)
	require.Len(t, latest.Acks, 2, "the latest one keeps its acks after confirmation")

	tr.Published(inv("r3")) // r2 confirmed and now superseded
	d, err = tr.Get("acme", "k", "r2")
	require.NoError(t, err)
	require.Nil(t, d.Acks)

	tr.markConfirmed("acme", "k", "r3") // another replica confirmed it; still the latest
	latest, err = tr.Latest("acme", "k")
	require.NoError(t, err)
	require.NotNil(t, latest.Acks)
}

// An agent that stopped heartbeating (without saying it leaves) is not
// waited for once three intervals passed: it is no longer live, and an
// invalidation it did not ack is confirmed complete without it.
func TestAckTrackerSilentAgentNotWaitedFor(t *testing.T) {
	tr := NewAckTracker(100)
	now := time.Now()
	tr.Seen(schemas.AgentPresence{Tenant: "acme", Agent: "a1", Interval: time.Second}, now)
	tr.Seen(schemas.AgentPresence{Tenant: "acme", Agent: "silent", Interval: time.Second}, now)
	tr.Published(schemas.Invalidation{Tenant: "acme", Secret: "k", RequestID: "r1", PublishedAt: now})
	_, ok := tr.Acked(schemas.InvalidationAck{Tenant: "acme", Secret: "k", RequestID: "r1", Agent: "a1"}, now.Add(time.Millisecond))
	require.True(t, ok)

	require.Empty(t, tr.due(now.Add(2*time.Second), time.Minute), "silent for 2 intervals: still waited for")
	later := now.Add(presenceTTL*time.Second + time.Millisecond)
	tr.Seen(schemas.AgentPresence{Tenant: "acme", Agent: "a1", Interval: time.Second}, later) // a1 still heartbeats
	confirmed := tr.due(later, time.Minute)
	require.Len(t, confirmed, 1)
	require.True(t, confirmed[0].Complete)
	require.Empty(t, confirmed[0].Missing)
	require.Equal(t, 2, confirmed[0].LiveAgents, "it was live when the invalidation was published")
	require.Equal(t, []string{"a1"}, tr.Live("acme", later))
}

// Acks in any order: an invalidation is due only once every live agent
// acked or went silent, however the acks interleave with due's ticks, and
// an agent that heartbeats again is waited for again.
func TestAckTrackerDueAcksInAnyOrder(t *testing.T) {
	tr := NewAckTracker(100)
	now := time.Now()
	for _, a := range []string{"a", "b", "c", "d"} {
		tr.Seen(schemas.AgentPresence{Tenant: "acme", Agent: a, Interval: time.Second}, now)
	}
	tr.Published(schemas.Invalidation{Tenant: "acme", Secret: "k", RequestID: "r1", PublishedAt: now})
	ack := func(agent string) {
		_, ok := tr.Acked(schemas.InvalidationAck{Tenant: "acme", Secret: "k", RequestID: "r1", Agent: agent}, now.Add(time.Millisecond))
		require.True(t, ok)
	}
	at := now.Add(10 * time.Millisecond)
	for _, a := range []string{"c", "a", "b"} {
		ack(a)
		require.Empty(t, tr.due(at, time.Minute), "d has not acked (after %s)", a)
	}
	// d goes silent; a, b and c heartbeat; then d heartbeats again.
	later := now.Add(presenceTTL*time.Second + time.Millisecond)
	for _, a := range []string{"a", "b", "c", "d"} {
		tr.Seen(schemas.AgentPresence{Tenant: "acme", Agent: a, Interval: time.Second}, later)
	}
	require.Empty(t, tr.due(later, time.Minute), "d heartbeats: still waited for")
	ack("d")
	confirmed := tr.due(later, time.Minute)
	require.Len(t, confirmed, 1)
	require.True(t, confirmed[0].Complete)
	require.Equal(t, 4, confirmed[0].Acked)
	require.Empty(t, tr.due(later, time.Minute), "decided once")
}

// BenchmarkAckTrackerDueWaiting is one confirmLoop tick while 10,000
// agents receive an invalidation and half acked.
func BenchmarkAckTrackerDueWaiting(b *testing.B) {
	tr := NewAckTracker(100)
	now := time.Now()
	const n = 10000
	for i := range n {
		tr.Seen(schemas.AgentPresence{Tenant: "acme", Agent: fmt.Sprintf("agent-%05d", i), Interval: 5 * time.Second}, now)
	}
	tr.Published(schemas.Invalidation{Tenant: "acme", Secret: "k", RequestID: "r1", PublishedAt: now})
	for i := 0; i < n; i += 2 {
		tr.Acked(schemas.InvalidationAck{Tenant: "acme", Secret: "k", RequestID: "r1", Agent: fmt.Sprintf("agent-%05d", i)}, now)
	}
	b.ResetTimer()
	for b.Loop() {
		if len(tr.due(now, time.Minute)) != 0 {
			b.Fatal("due while agents have not acked")
		}
	}
}
