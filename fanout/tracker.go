package fanout

import (
	"cmp"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/rekey-dev/rekey/schemas"
)

// ErrUnknown is returned for an invalidation the tracker does not hold.
var ErrUnknown = errors.New("fanout: no such invalidation")

// presenceTTL is how many heartbeat intervals an agent may miss before it
// is no longer waited for.
const presenceTTL = 3

type presence struct {
	lastSeen time.Time
	interval time.Duration
	tool     string
}

// Limits bound what agents can make the tracker hold, per tenant: what an
// agent publishes is untrusted input (see orchestrator.FanoutConfig).
type Limits struct {
	MaxAgentsPerTenant    int
	PresenceIntervalMin   time.Duration
	PresenceIntervalMax   time.Duration
	MaxEarlyAcksPerTenant int
	MaxListedAgents       int
}

// DefaultLimits are the defaults of rekey.yaml's fanout section.
func DefaultLimits() Limits {
	return Limits{MaxAgentsPerTenant: 10000, PresenceIntervalMin: 500 * time.Millisecond, PresenceIntervalMax: 5 * time.Minute,
		MaxEarlyAcksPerTenant: 10000, MaxListedAgents: 100}
}

// Reasons an agent's message is refused (keys of the fanout.refused audit
// record).
const (
	refusedInterval   = "presence_interval"
	refusedAgentCap   = "over_agent_cap"
	refusedEarlyCap   = "over_early_ack_cap"
	refusedMalformed  = "malformed"
	refusedAuditShare = "over_audit_share"
)

// AckTracker remembers which agents are alive (their heartbeats) and, for
// recent invalidations, which live agents acknowledged them.
type AckTracker struct {
	mu     sync.Mutex
	lim    Limits
	limit  int
	order  []string
	byReq  map[string]*Delivery
	latest map[string]string // tenant/secret -> key of its latest delivery
	agents map[string]map[string]presence
	// early holds acks heard before their invalidation (replicas.go).
	early      map[string]map[string]time.Time
	earlyOrder []earlyKey
	earlyCount map[string]int // tenant -> acks in early
}

// Delivery is one invalidation: the agents that were alive when it was
// published, and their acks.
type Delivery struct {
	Invalidation schemas.Invalidation
	// Live are the agents of the tenant alive at publication.
	Live []string
	// Acks maps an agent to its publish-to-ack delay (any agent, live or not).
	// Live and Acks are nil once the delivery is confirmed and a later
	// invalidation of its secret was published.
	Acks map[string]time.Duration
	// Confirmed is set once the confirmation event was decided.
	Confirmed bool
	// ackedPrefix counts the leading Live agents known to have acked
	// (an ack is never taken back), where waitingLocked resumes.
	ackedPrefix int
}

// Missing returns the live agents that have not acked and are still alive.
func (d Delivery) Missing(alive func(string) bool) []string {
	var out []string
	for _, a := range d.Live {
		if _, ok := d.Acks[a]; !ok && alive(a) {
			out = append(out, a)
		}
	}
	return out
}

// NewAckTracker keeps up to limit invalidations.
func NewAckTracker(limit int) *AckTracker {
	return &AckTracker{lim: DefaultLimits(), limit: limit, byReq: map[string]*Delivery{}, latest: map[string]string{},
		agents: map[string]map[string]presence{}, early: map[string]map[string]time.Time{}, earlyCount: map[string]int{}}
}

// SetLimits replaces the per-tenant limits (before use); zero fields keep
// their defaults.
func (t *AckTracker) SetLimits(l Limits) {
	d := DefaultLimits()
	l.MaxAgentsPerTenant = cmp.Or(l.MaxAgentsPerTenant, d.MaxAgentsPerTenant)
	l.PresenceIntervalMin = cmp.Or(l.PresenceIntervalMin, d.PresenceIntervalMin)
	l.PresenceIntervalMax = cmp.Or(l.PresenceIntervalMax, d.PresenceIntervalMax)
	l.MaxListedAgents = cmp.Or(l.MaxListedAgents, d.MaxListedAgents)
	l.MaxEarlyAcksPerTenant = cmp.Or(l.MaxEarlyAcksPerTenant, d.MaxEarlyAcksPerTenant)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lim = l
}

func ackKey(tenant, secret, requestID string) string { return tenant + "/" + secret + "/" + requestID }

// Seen records an agent's heartbeat (or its leaving). It returns the
// reason it was refused, "" if it was not: an interval outside the
// limits, or a new agent of a tenant that has MaxAgentsPerTenant alive.
func (t *AckTracker) Seen(p schemas.AgentPresence, at time.Time) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.agents[p.Tenant]
	if p.Leaving {
		delete(m, p.Agent)
		return ""
	}
	if p.Interval < t.lim.PresenceIntervalMin || p.Interval > t.lim.PresenceIntervalMax {
		return refusedInterval
	}
	if m == nil {
		m = map[string]presence{}
		t.agents[p.Tenant] = m
	}
	if _, known := m[p.Agent]; !known && len(m) >= t.lim.MaxAgentsPerTenant {
		t.liveLocked(p.Tenant, at) // forgets the dead
		if len(m) >= t.lim.MaxAgentsPerTenant {
			return refusedAgentCap
		}
	}
	m[p.Agent] = presence{lastSeen: at, interval: p.Interval, tool: p.Tool}
	return ""
}

// Tool returns the tool name an agent reported in its heartbeats, if any.
func (t *AckTracker) Tool(tenant, agent string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.agents[tenant][agent].tool
}

func (t *AckTracker) aliveLocked(tenant, agent string, at time.Time) bool {
	p, ok := t.agents[tenant][agent]
	return ok && at.Sub(p.lastSeen) <= presenceTTL*p.interval
}

// Live returns the agents of tenant heard from recently, sorted.
func (t *AckTracker) Live(tenant string, at time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.liveLocked(tenant, at)
}

func (t *AckTracker) liveLocked(tenant string, at time.Time) []string {
	var out []string
	for a := range t.agents[tenant] {
		if t.aliveLocked(tenant, a, at) {
			out = append(out, a)
		} else {
			delete(t.agents[tenant], a)
		}
	}
	slices.Sort(out)
	return out
}

// Published records an invalidation about to be sent, with the agents of
// its tenant that are alive now, and returns how many they are.
func (t *AckTracker) Published(inv schemas.Invalidation) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := ackKey(inv.Tenant, inv.Secret, inv.RequestID)
	if d, ok := t.byReq[k]; ok {
		return len(d.Live)
	}
	live := t.liveLocked(inv.Tenant, inv.PublishedAt)
	t.byReq[k] = &Delivery{Invalidation: inv, Live: live, Acks: map[string]time.Duration{}}
	t.takeEarlyLocked(k)
	prev := t.latest[inv.Tenant+"/"+inv.Secret]
	t.latest[inv.Tenant+"/"+inv.Secret] = k
	t.compactLocked(prev) // none: a no-op
	t.order = append(t.order, k)
	if len(t.order) > t.limit {
		old := t.order[0]
		if d, ok := t.byReq[old]; ok && t.latest[d.Invalidation.Tenant+"/"+d.Invalidation.Secret] == old {
			delete(t.latest, d.Invalidation.Tenant+"/"+d.Invalidation.Secret)
		}
		delete(t.byReq, old)
		t.order = t.order[1:]
	}
	return len(live)
}

// Acked records an agent's ack and returns the delay since publication;
// ok is set for the first ack of the agent for an invalidation the
// tracker holds (a repeated ack counts once).
func (t *AckTracker) Acked(ack schemas.InvalidationAck, at time.Time) (time.Duration, bool) {
	d, outcome := t.acked(ack, at)
	return d, outcome == ackCounted
}

// Outcomes of an ack.
const (
	ackCounted   = "counted"
	ackDuplicate = "duplicate" // or of a compacted delivery
	ackEarly     = "early"     // kept for an invalidation not heard of yet
)

// acked is Acked with the outcome: ackCounted, ackDuplicate, ackEarly or
// the reason it was refused.
func (t *AckTracker) acked(ack schemas.InvalidationAck, at time.Time) (time.Duration, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.byReq[ackKey(ack.Tenant, ack.Secret, ack.RequestID)]
	if !ok {
		return 0, t.keepEarlyLocked(ack, at)
	}
	delay := at.Sub(d.Invalidation.PublishedAt)
	if _, dup := d.Acks[ack.Agent]; dup || d.Acks == nil { // nil: compacted
		return delay, ackDuplicate
	}
	if len(d.Acks) >= t.lim.MaxAgentsPerTenant {
		return delay, refusedAgentCap
	}
	d.Acks[ack.Agent] = delay
	return delay, ackCounted
}

// compactLocked drops the per-agent lists of delivery k once it is
// confirmed and a later invalidation of its secret was published: only
// the latest one per secret is shown (Latest), and every agent's ack of
// the last limit invalidations would otherwise be kept (with 5,000 agents,
// about 250 KiB per invalidation, gigabytes at the default limit). Acks
// that still arrive for it only count in the metrics.
func (t *AckTracker) compactLocked(k string) {
	d := t.byReq[k]
	if d == nil || !d.Confirmed || t.latest[d.Invalidation.Tenant+"/"+d.Invalidation.Secret] == k {
		return
	}
	d.Live, d.Acks = nil, nil
}

// Get returns a copy of what is known about one invalidation.
func (t *AckTracker) Get(tenant, secret, requestID string) (Delivery, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.byReq[ackKey(tenant, secret, requestID)]
	if !ok {
		return Delivery{}, ErrUnknown
	}
	return d.copy(), nil
}

// Latest returns the latest invalidation of a secret ("" for tenant-wide).
func (t *AckTracker) Latest(tenant, secret string) (Delivery, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k, ok := t.latest[tenant+"/"+secret]
	if !ok {
		return Delivery{}, ErrUnknown
	}
	return t.byReq[k].copy(), nil
}

func (d *Delivery) copy() Delivery {
	cp := *d
	cp.Live = slices.Clone(d.Live)
	cp.Acks = maps.Clone(d.Acks)
	return cp
}

// due returns the confirmations that can be decided at now: every live
// agent (still alive) acked, or timeout passed since publication. Each
// delivery is returned once.
func (t *AckTracker) due(now time.Time, timeout time.Duration) []schemas.InvalidationConfirmed {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []schemas.InvalidationConfirmed
	for _, k := range t.order {
		d := t.byReq[k]
		if d == nil || d.Confirmed {
			continue
		}
		inv := d.Invalidation
		if now.Sub(inv.PublishedAt) < timeout && t.waitingLocked(d, now) {
			continue
		}
		missing := d.Missing(func(a string) bool { return t.aliveLocked(inv.Tenant, a, now) })
		d.Confirmed = true
		var last time.Duration
		acked := 0
		for _, a := range d.Live {
			if delay, ok := d.Acks[a]; ok {
				acked++
				last = max(last, delay)
			}
		}
		c := schemas.InvalidationConfirmed{
			Tenant: inv.Tenant, Secret: inv.Secret, Kind: inv.Kind, Version: inv.Version, RequestID: inv.RequestID,
			PublishedAt: inv.PublishedAt, LiveAgents: len(d.Live), Acked: acked, Missing: missing,
			Complete: len(missing) == 0, LastAckMS: float64(last.Microseconds()) / 1000,
		}
		if len(missing) > t.lim.MaxListedAgents {
			c.Missing, c.MissingCount, c.MissingTruncated = missing[:t.lim.MaxListedAgents], len(missing), true
		}
		out = append(out, c)
		t.compactLocked(k)
	}
	return out
}

// waitingLocked reports whether a live agent of d that has not acked is
// still alive at now. It stops at the first one, and the leading agents
// that acked are skipped for good: due runs every 50 ms, and looking up
// all 10,000 agents of a tenant each time, under the lock the acks wait
// for, was fanout's largest cost while agents received an invalidation.
func (t *AckTracker) waitingLocked(d *Delivery, now time.Time) bool {
	for ; d.ackedPrefix < len(d.Live); d.ackedPrefix++ {
		if _, ok := d.Acks[d.Live[d.ackedPrefix]]; !ok {
			break
		}
	}
	for _, a := range d.Live[min(d.ackedPrefix, len(d.Live)):] {
		if _, ok := d.Acks[a]; !ok && t.aliveLocked(d.Invalidation.Tenant, a, now) {
			return true
		}
	}
	return false
}

// Alive reports whether an agent of tenant heartbeated recently.
func (t *AckTracker) Alive(tenant, agent string, at time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.aliveLocked(tenant, agent, at)
}
