package fanout

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/schemas"
)

// Several rekeyd replicas run fanout at once. They share the lifecycle
// events through the durable consumer, so each invalidation is published by
// one of them; every replica hears every ack and heartbeat (core NATS). To
// give every replica the same view (the API shows it from any replica):
//
//   - each replica also listens to the invalidations the others publish and
//     tracks them as if it had published them (AckTracker.Published is
//     idempotent), keeping acks that arrive before the invalidation they
//     ack (they come on other routes);
//   - invalidation_confirmed events and the audit records of acks are
//     written by one replica, the holder of the "fanout-confirm" lease
//     (Leases), not by each (JetStream would drop the copies, but each
//     replica would pay for all of them); the others mark what it
//     confirmed, so that a replica taking the lease over does not confirm
//     it again. Acks heard while no replica holds the lease (a holder
//     died, for up to the lease TTL) still count in the confirmations,
//     but get no audit record of their own.
//
// Invalidations of one subject must reach the INVALIDATE stream (and the
// agents) in the order of their events, though the replicas handle events
// concurrently and a crashed replica's event is redelivered late: each
// invalidation carries its event's EVENTS stream sequence in a header, an
// event older than the last invalidation of its subject is not published,
// and the publish expects the last sequence of the subject it read.

// Exclusive runs fn while this replica holds the named lease
// (orchestrator.Leases).
type Exclusive interface {
	RunExclusive(ctx context.Context, name string, fn func(context.Context) error) error
}

// LeaseConfirm names the lease under which confirmations are decided.
const LeaseConfirm = "fanout-confirm"

// HeaderEvent names, on an invalidation, the lifecycle event it comes
// from: "<epoch>/<seq>", the EVENTS stream's creation time (ns) and the
// event's sequence in it. One header, since every agent parses it.
const HeaderEvent = "Rekey-Event"

func (p eventPos) header() string {
	return strconv.FormatInt(p.epoch, 10) + "/" + strconv.FormatUint(p.seq, 10)
}

// parseEventPos reads a HeaderEvent value; anything else is the zero
// position (unknown), which orders before every event.
func parseEventPos(v string) eventPos {
	epoch, seq, ok := strings.Cut(v, "/")
	if !ok {
		return eventPos{}
	}
	var p eventPos
	var err1, err2 error
	p.epoch, err1 = strconv.ParseInt(epoch, 10, 64)
	p.seq, err2 = strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return eventPos{}
	}
	return p
}

// runConfirm decides confirmations and audits acks, under the lease when
// Leases is set.
func (f *Fanout) runConfirm(ctx context.Context) {
	decide := func(ctx context.Context) error {
		f.deciding.Store(true)
		var wg sync.WaitGroup
		wg.Go(func() { f.auditAcks(ctx) })
		f.confirmLoop(ctx)
		f.deciding.Store(false)
		wg.Wait()
		return ctx.Err()
	}
	if f.leases == nil {
		_ = decide(ctx)
		return
	}
	_ = f.leases.RunExclusive(ctx, LeaseConfirm, decide)
}

// followReplicas subscribes to the invalidations and confirmations every
// replica publishes; stop unsubscribes.
func (f *Fanout) followReplicas() (stop func(), err error) {
	invSub, err := f.bus.NC.Subscribe(schemas.SubjectInvalidateAll, f.onInvalidation)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", schemas.SubjectInvalidateAll, err)
	}
	confSubject := schemas.EventsSubject("*", schemas.KindInvalidationConfirmed)
	confSub, err := f.bus.NC.Subscribe(confSubject, f.onConfirmed)
	if err != nil {
		_ = invSub.Unsubscribe()
		return nil, fmt.Errorf("subscribe %s: %w", confSubject, err)
	}
	return func() { _ = invSub.Drain(); _ = confSub.Drain() }, nil
}

func (f *Fanout) onInvalidation(m *nats.Msg) {
	var inv schemas.Invalidation
	ev, err := schemas.DecodeAs(m.Data, schemas.TypeInvalidation, &inv)
	if err != nil || inv.Tenant != ev.Tenant || inv.Kind == schemas.InvalidationRestored {
		return
	}
	if inv.PublishedAt.IsZero() {
		inv.PublishedAt = ev.Time
	}
	f.acks.Published(inv)
}

func (f *Fanout) onConfirmed(m *nats.Msg) {
	var c schemas.InvalidationConfirmed
	ev, err := schemas.DecodeAs(m.Data, schemas.TypeInvalidationConfirmed, &c)
	if err != nil || c.Tenant != ev.Tenant {
		return
	}
	f.acks.markConfirmed(c.Tenant, c.Secret, c.RequestID)
}

// eventPos is a lifecycle event's place in the EVENTS stream.
type eventPos struct {
	epoch int64 // the stream's creation time: a recreated stream restarts its sequences
	seq   uint64
}

// lastOnSubject is the last invalidation stored on a subject.
type lastOnSubject struct {
	seq uint64   // its INVALIDATE sequence, 0 if none
	pos eventPos // the event it came from, zero if unknown
}

// ordered reads the last invalidation of subject and reports whether the
// event at pos is older than (or is) the one it came from: then publishing
// it would undo a newer invalidation, or repeat one already out.
func (f *Fanout) ordered(ctx context.Context, subject string, pos eventPos) (lastOnSubject, bool, error) {
	if f.invalidations == nil || pos.seq == 0 {
		return lastOnSubject{}, false, nil
	}
	m, err := f.invalidations.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return lastOnSubject{}, false, nil
	}
	if err != nil {
		return lastOnSubject{}, false, fmt.Errorf("last invalidation on %s: %w", subject, err)
	}
	last := lastOnSubject{seq: m.Sequence}
	last.pos = parseEventPos(m.Header.Get(HeaderEvent))
	stale := last.pos.epoch == pos.epoch && last.pos.seq >= pos.seq
	return last, stale, nil
}

// publishAfter publishes an invalidation on subject if the subject's last
// message is still last; a conflict is returned as an error (the event is
// then redelivered and ordered again).
func (f *Fanout) publishAfter(ctx context.Context, subject string, out schemas.Event, pos eventPos, last lastOnSubject, ackDelay time.Duration) error {
	if f.invalidations == nil || pos.seq == 0 {
		// Unordered (the streams were not readable at start, or the
		// event's position is unknown): no headers, so no ack delay
		// either; agents use their own.
		_, err := f.bus.Publish(ctx, subject, out)
		return err
	}
	data, err := out.Encode()
	if err != nil {
		return err
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(HeaderEvent, pos.header())
	if ackDelay > 0 {
		msg.Header.Set(schemas.HeaderAckDelay, strconv.FormatInt(ackDelay.Milliseconds(), 10))
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// No Nats-Msg-Id (one header less for every agent to parse): the
	// expected last sequence already refuses a second publication, and
	// the redelivered event then finds itself out by ordered.
	if _, err := f.bus.JS.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(last.seq)); err != nil {
		return fmt.Errorf("publish %s to %s: %w", out.Type, subject, err)
	}
	return nil
}

// eventPosition returns a consumed event's place in the EVENTS stream.
func (f *Fanout) eventPosition(msg jetstream.Msg) eventPos {
	md, err := msg.Metadata()
	if err != nil {
		return eventPos{}
	}
	return eventPos{epoch: f.eventsEpoch, seq: md.Sequence.Stream}
}

// openStreams reads what ordering needs: the INVALIDATE stream and the
// EVENTS stream's creation time. Without them fanout publishes unordered.
func (f *Fanout) openStreams(ctx context.Context) {
	events, err := f.bus.JS.Stream(ctx, schemas.StreamEvents)
	if err != nil {
		f.log.Warn("events stream unavailable; invalidations not ordered across replicas", "error", err)
		return
	}
	inv, err := f.bus.JS.Stream(ctx, schemas.StreamInvalidate)
	if err != nil {
		f.log.Warn("invalidate stream unavailable; invalidations not ordered across replicas", "error", err)
		return
	}
	f.eventsEpoch = events.CachedInfo().Created.UnixNano()
	f.invalidations = inv
}

// keepEarlyLocked keeps an ack of an invalidation not heard of yet (it was
// published by another replica, and the ack came first), once per agent;
// the oldest are forgotten past the tracker's limit, and a tenant keeps at
// most MaxEarlyAcksPerTenant. It returns ackEarly, ackDuplicate or the
// reason it was refused.
func (t *AckTracker) keepEarlyLocked(ack schemas.InvalidationAck, at time.Time) string {
	k := ackKey(ack.Tenant, ack.Secret, ack.RequestID)
	m := t.early[k]
	if _, dup := m[ack.Agent]; dup {
		return ackDuplicate
	}
	if t.earlyCount[ack.Tenant] >= t.lim.MaxEarlyAcksPerTenant {
		return refusedEarlyCap
	}
	if m == nil {
		m = map[string]time.Time{}
		t.early[k] = m
		t.earlyOrder = append(t.earlyOrder, earlyKey{tenant: ack.Tenant, key: k})
	}
	m[ack.Agent] = at
	t.earlyCount[ack.Tenant]++
	for len(t.earlyOrder) > t.limit {
		t.dropEarlyLocked(t.earlyOrder[0])
		t.earlyOrder = t.earlyOrder[1:]
	}
	return ackEarly
}

// earlyKey is an entry of AckTracker.earlyOrder.
type earlyKey struct{ tenant, key string }

func (t *AckTracker) dropEarlyLocked(e earlyKey) {
	if n := t.earlyCount[e.tenant] - len(t.early[e.key]); n > 0 {
		t.earlyCount[e.tenant] = n
	} else {
		delete(t.earlyCount, e.tenant)
	}
	delete(t.early, e.key)
}

// takeEarlyLocked moves the acks kept for a delivery just recorded into
// it. An ack heard before the invalidation was published cannot be an
// agent's answer to it (an agent that guessed its request id): it is
// dropped, not counted with no delay.
func (t *AckTracker) takeEarlyLocked(k string) {
	m, ok := t.early[k]
	if !ok {
		return
	}
	d := t.byReq[k]
	t.dropEarlyLocked(earlyKey{tenant: d.Invalidation.Tenant, key: k})
	for agent, at := range m {
		if at.Before(d.Invalidation.PublishedAt) || len(d.Acks) >= t.lim.MaxAgentsPerTenant {
			continue
		}
		d.Acks[agent] = at.Sub(d.Invalidation.PublishedAt)
	}
}

// markConfirmed records that a delivery's confirmation was published (by
// the replica holding the confirm lease).
func (t *AckTracker) markConfirmed(tenant, secret, requestID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := ackKey(tenant, secret, requestID)
	if d, ok := t.byReq[k]; ok {
		d.Confirmed = true
		t.compactLocked(k)
	}
}
