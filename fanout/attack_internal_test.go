package fanout

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

// Attacks from one tenant's agent credentials on what fanout keeps (issue
// 19, findings 2, 5 and 6): each asserts the refusal and that nothing of
// another tenant changed.

func smallLimits() Limits {
	l := DefaultLimits()
	l.MaxAgentsPerTenant, l.MaxEarlyAcksPerTenant, l.MaxListedAgents = 100, 10, 20
	return l
}

func heartbeatOf(tenant, agent string, interval time.Duration) schemas.AgentPresence {
	return schemas.AgentPresence{Tenant: tenant, Agent: agent, Interval: interval}
}

// TestAttackPresenceFlood: fake heartbeats beyond the tenant's cap, or
// with an interval outside the bounds (one that never expires), are
// refused; another tenant's agents are still tracked.
func TestAttackPresenceFlood(t *testing.T) {
	tr := NewAckTracker(100)
	tr.SetLimits(smallLimits())
	now := time.Now()
	require.Empty(t, tr.Seen(heartbeatOf("globex", "g1", 5*time.Second), now))
	refused := 0
	for i := range 1000 {
		if tr.Seen(heartbeatOf("acme", fmt.Sprintf("fake-%d", i), 5*time.Second), now) != "" {
			refused++
		}
	}
	require.Equal(t, 900, refused)
	require.Len(t, tr.Live("acme", now), 100)
	require.Equal(t, refusedInterval, tr.Seen(heartbeatOf("acme", "forever", 1000*time.Hour), now))
	require.Equal(t, refusedInterval, tr.Seen(heartbeatOf("acme", "spin", time.Nanosecond), now))
	require.False(t, tr.Alive("acme", "forever", now))
	require.Empty(t, tr.Seen(heartbeatOf("globex", "g2", 5*time.Second), now), "globex is unaffected")
	require.Equal(t, []string{"g1", "g2"}, tr.Live("globex", now))

	// Dead agents make room again.
	later := now.Add(time.Minute)
	require.Empty(t, tr.Seen(heartbeatOf("acme", "real", 5*time.Second), later))
}

// TestAttackEarlyAcks: acks of invalidations never published are kept at
// most MaxEarlyAcksPerTenant per tenant and once per agent; an ack heard
// before its invalidation was published is not counted when it is.
func TestAttackEarlyAcks(t *testing.T) {
	tr := NewAckTracker(100)
	tr.SetLimits(smallLimits())
	now := time.Now()
	ack := func(tenant, req, agent string) schemas.InvalidationAck {
		return schemas.InvalidationAck{Tenant: tenant, Secret: "k", RequestID: req, Agent: agent}
	}
	outcomes := map[string]int{}
	for i := range 1000 {
		_, o := tr.acked(ack("acme", fmt.Sprintf("never-%d", i%50), fmt.Sprintf("a%d", i)), now)
		outcomes[o]++
	}
	require.Equal(t, map[string]int{ackEarly: 10, refusedEarlyCap: 990}, outcomes)
	require.Equal(t, 10, tr.earlyCount["acme"])
	_, o := tr.acked(ack("globex", "r", "g1"), now)
	require.Equal(t, ackEarly, o, "globex keeps its share")
	_, o = tr.acked(ack("globex", "r", "g1"), now)
	require.Equal(t, ackDuplicate, o, "once per agent")

	// Acked before publication (a guessed request id): not counted.
	tr2 := NewAckTracker(100)
	tr2.Seen(heartbeatOf("acme", "honest", 5*time.Second), now)
	tr2.Seen(heartbeatOf("acme", "early", 5*time.Second), now)
	_, o = tr2.acked(ack("acme", "usage.acme.k.5", "early"), now)
	require.Equal(t, ackEarly, o)
	tr2.Published(schemas.Invalidation{Tenant: "acme", Secret: "k", RequestID: "usage.acme.k.5", PublishedAt: now.Add(time.Millisecond)})
	d, err := tr2.Get("acme", "k", "usage.acme.k.5")
	require.NoError(t, err)
	require.Empty(t, d.Acks, "the early ack is dropped")
	require.Equal(t, []string{"early", "honest"}, d.Missing(func(string) bool { return true }))
	require.Empty(t, tr2.earlyCount)
}

// TestAttackAcksCountOnceAndBounded: an agent's repeated ack counts once;
// a delivery holds at most MaxAgentsPerTenant acks.
func TestAttackAcksCountOnceAndBounded(t *testing.T) {
	tr := NewAckTracker(100)
	tr.SetLimits(smallLimits())
	now := time.Now()
	tr.Published(schemas.Invalidation{Tenant: "acme", Secret: "k", RequestID: "r", PublishedAt: now})
	ack := func(agent string) string {
		_, o := tr.acked(schemas.InvalidationAck{Tenant: "acme", Secret: "k", RequestID: "r", Agent: agent}, now.Add(time.Millisecond))
		return o
	}
	require.Equal(t, ackCounted, ack("a"))
	require.Equal(t, ackDuplicate, ack("a"))
	for i := range 200 {
		ack(fmt.Sprintf("fake-%d", i))
	}
	d, err := tr.Get("acme", "k", "r")
	require.NoError(t, err)
	require.Len(t, d.Acks, 100)
}

// TestAttackConfirmationStaysSmall: with thousands of live agents that do
// not ack, the confirmation names MaxListedAgents of them and counts the
// rest; it stays far under the 1 MiB message limit.
func TestAttackConfirmationStaysSmall(t *testing.T) {
	tr := NewAckTracker(100)
	l := DefaultLimits()
	l.MaxAgentsPerTenant = 20000
	tr.SetLimits(l)
	now := time.Now()
	for i := range 20000 {
		require.Empty(t, tr.Seen(heartbeatOf("acme", fmt.Sprintf("%s-%d", strings.Repeat("x", 100), i), 5*time.Second), now))
	}
	tr.Published(schemas.Invalidation{Tenant: "acme", Secret: "k", RequestID: "r", PublishedAt: now})
	due := tr.due(now.Add(time.Second), time.Millisecond)
	require.Len(t, due, 1)
	c := due[0]
	require.Len(t, c.Missing, l.MaxListedAgents)
	require.Equal(t, 20000, c.MissingCount)
	require.True(t, c.MissingTruncated)
	require.False(t, c.Complete)
	b, err := json.Marshal(c)
	require.NoError(t, err)
	require.Less(t, len(b), 64<<10)
}

// TestAckRecordIDIsHashed: the audit record id of acks is not made of the
// agent's text, has a fixed length, and differs per tenant and request.
func TestAckRecordIDIsHashed(t *testing.T) {
	rec := func(tenant, req, agent string) schemas.AuditRecord {
		return schemas.AuditRecord{Tenant: tenant, Secret: "k", RequestID: req, Acks: []schemas.AuditAck{{Agent: agent}}}
	}
	long := strings.Repeat("A", schemas.MaxInstanceLen)
	id := ackRecordID(rec("acme", "r1", long))
	require.NotContains(t, id, "AAAA")
	require.Len(t, id, len("acks-acme-")+32)
	require.NotEqual(t, id, ackRecordID(rec("acme", "r2", long)))
	require.NotEqual(t, id, ackRecordID(rec("globex", "r1", long)))
	require.Equal(t, id, ackRecordID(rec("acme", "r1", long)), "derived: a rewrite is a duplicate")
}

// TestAttackAuditQueueShare: one tenant's acks take at most its share of
// the ack audit queue; another tenant still gets places.
func TestAttackAuditQueueShare(t *testing.T) {
	f := &Fanout{auditShare: map[string]int{}}
	taken := 0
	for range ackAuditQueue {
		if f.takeShare("acme") {
			taken++
		}
	}
	require.Equal(t, ackAuditShare, taken)
	require.True(t, f.takeShare("globex"))
	f.releaseShare("acme")
	require.True(t, f.takeShare("acme"), "a place written is free again")
}
