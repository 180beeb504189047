// Package fanout turns completed rotations and revocations into cache
// invalidations for every running agent, and collects the agents' acks.
// It reads events from the EVENTS stream and publishes on
// rekey.invalidate.<t>.<s>; it never talks to a backend.
package fanout

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Fanout publishes invalidations for completed rotations and revocations.
type Fanout struct {
	bus     *orchestrator.Bus
	audit   *orchestrator.Auditor
	metrics *orchestrator.Metrics
	log     *slog.Logger
	source  string
	acks    *AckTracker
	cfg     Config
	leases  Exclusive

	started atomic.Bool
	// deciding is set while this replica decides confirmations and
	// audits acks (it holds the confirm lease).
	deciding atomic.Bool
	// invalidations and eventsEpoch order invalidations (replicas.go).
	invalidations jetstream.Stream
	eventsEpoch   int64
	// ackAudit queues agent acks for their audit records, written off the
	// ack path by auditAcks; auditShare counts each tenant's acks in it, so
	// that one tenant cannot fill the others' share.
	ackAudit   chan ackRecord
	shareMu    sync.Mutex
	auditShare map[string]int
	// refused tallies the agents' messages refused, per tenant, for the
	// audit trail (at most one record a minute per tenant).
	refused *orchestrator.Refusals
}

// Config configures fanout (rekey.yaml's fanout section).
type Config struct {
	// ConfirmTimeout is how long fanout waits for every live agent's ack
	// before it publishes an incomplete invalidation_confirmed event
	// (default 10s).
	ConfirmTimeout time.Duration
	// Limits bound what each tenant's agents can make fanout hold; zero
	// fields keep their defaults (DefaultLimits).
	Limits Limits
	// Tenants get a subscription each for their agents' acks and
	// heartbeats: nats.go delivers each subscription on its own goroutine
	// from its own bounded queue, so one tenant's flood neither delays
	// another's acks nor pushes them out of a full queue. Empty: one
	// subscription hears them all.
	Tenants []string
	// Source is the CloudEvents source of the invalidations fanout
	// publishes (required).
	Source string
	// AckDelayPerAgent times the tenant's live agents is the ack delay
	// an invalidation asks of them (schemas.HeaderAckDelay): delivering
	// one message to thousands of connections takes the NATS server tens
	// of microseconds per connection, and acks sent before the last agent
	// got it slow that delivery down. At most a quarter of ConfirmTimeout
	// and schemas.MaxAckDelayMS; under a millisecond (or zero) no header
	// is sent and agents use their own delay.
	AckDelayPerAgent time.Duration
}

// Deps are what fanout is built with: rekeyd's common dependencies (Bus
// and Audit required) and, with several replicas, the leases that run
// the confirmations on one replica at a time (replicas.go); with Leases
// nil this replica decides them.
type Deps struct {
	orchestrator.Deps
	Leases Exclusive
}

// ackRecord is an agent ack and the delay fanout measured for it, or,
// when written is set, a request to write the acks gathered so far and
// close written.
type ackRecord struct {
	ack     schemas.InvalidationAck
	delay   time.Duration
	written chan struct{}
}

// ackAuditQueue bounds the acks waiting for their audit record, and
// ackAuditShare the acks of one tenant among them.
const (
	ackAuditQueue = 1 << 16
	ackAuditShare = ackAuditQueue / 8
)

// Started reports whether fanout consumes events and hears acks (for readiness).
func (f *Fanout) Started() bool { return f.started.Load() }

// New returns a Fanout.
func New(cfg Config, deps Deps) (*Fanout, error) {
	if err := deps.Check("fanout", "bus", "audit"); err != nil {
		return nil, err
	}
	if cfg.Source == "" {
		return nil, errors.New("fanout: config: source is required")
	}
	cfg.ConfirmTimeout = cmp.Or(cfg.ConfirmTimeout, 10*time.Second)
	cfg.Tenants = slices.Clone(cfg.Tenants)
	f := &Fanout{bus: deps.Bus, audit: deps.Audit, metrics: deps.Metrics, log: deps.Log.With("component", "fanout"), source: cfg.Source,
		cfg: cfg, leases: deps.Leases, acks: NewAckTracker(10000), ackAudit: make(chan ackRecord, ackAuditQueue),
		auditShare: map[string]int{}, refused: orchestrator.NewRefusals(deps.Audit, "fanout", "fanout.refused", time.Minute)}
	f.acks.SetLimits(cfg.Limits)
	return f, nil
}

// agentQueueMsgs and agentQueueBytes bound the queue of one tenant's
// subscription (a flood beyond is dropped by the client, for that tenant).
const (
	agentQueueMsgs  = 1 << 16
	agentQueueBytes = 16 << 20
)

// subscribeAgents subscribes to the agents' acks and heartbeats; stop
// drains the subscriptions.
func (f *Fanout) subscribeAgents() (stop func(), err error) {
	var subs []*nats.Subscription
	stop = func() {
		for _, s := range subs {
			_ = s.Drain()
		}
	}
	add := func(subject string, cb nats.MsgHandler) error {
		sub, err := f.bus.NC.Subscribe(subject, cb)
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", subject, err)
		}
		subs = append(subs, sub)
		return sub.SetPendingLimits(agentQueueMsgs, agentQueueBytes)
	}
	subjects := [][2]string{{schemas.SubjectAckAll, schemas.SubjectPresenceAll}}
	if len(f.cfg.Tenants) > 0 {
		subjects = subjects[:0]
		for _, t := range f.cfg.Tenants {
			subjects = append(subjects, [2]string{schemas.AckSubject(t, "*", "*"), schemas.PresenceSubject(t, "*")})
		}
	}
	for _, s := range subjects {
		if err := add(s[0], f.onAck); err != nil {
			stop()
			return nil, err
		}
		if err := add(s[1], f.onPresence); err != nil {
			stop()
			return nil, err
		}
	}
	return stop, nil
}

// Acks returns the tracker of agent acks.
func (f *Fanout) Acks() *AckTracker { return f.acks }

// Run consumes lifecycle events and collects acks until ctx ends.
func (f *Fanout) Run(ctx context.Context) error {
	cons, err := f.bus.Consumer(ctx, schemas.StreamEvents, jetstream.ConsumerConfig{
		Durable:   orchestrator.ConsumerFanout,
		AckPolicy: jetstream.AckExplicitPolicy,
		AckWait:   30 * time.Second,
		FilterSubjects: []string{
			schemas.EventsSubject("*", schemas.KindRotationCompleted),
			schemas.EventsSubject("*", schemas.KindRevocationStarted),
			schemas.EventsSubject("*", schemas.KindTenantRestored),
			schemas.EventsSubject("*", schemas.KindExternalChange),
		},
		MaxDeliver: -1,
	})
	if err != nil {
		return err
	}
	stopAgents, err := f.subscribeAgents()
	if err != nil {
		return err
	}
	defer stopAgents()
	stopFollowing, err := f.followReplicas()
	if err != nil {
		return err
	}
	defer stopFollowing()
	f.openStreams(ctx)
	confirmCtx, stopConfirm := context.WithCancel(ctx)
	confirmed := make(chan struct{})
	go func() { defer close(confirmed); f.runConfirm(confirmCtx) }()
	defer func() { stopConfirm(); <-confirmed }()

	// Consume's callback runs on one goroutine, in stream order, so the
	// invalidations of one secret go out in the order of its rotations.
	cc, err := cons.Consume(func(msg jetstream.Msg) { f.handle(ctx, msg) }, jetstream.PullMaxMessages(256),
		jetstream.PullExpiry(10*time.Second), jetstream.PullHeartbeat(2*time.Second))
	if err != nil {
		return fmt.Errorf("consume %s: %w", schemas.StreamEvents, err)
	}
	f.started.Store(true)
	_ = f.refused.Run(ctx) // until ctx ends
	f.started.Store(false)
	cc.Drain()
	select {
	case <-cc.Closed():
	case <-time.After(10 * time.Second):
	}
	return nil
}

func (f *Fanout) handle(ctx context.Context, msg jetstream.Msg) {
	// A message being handled is finished even while rekeyd stops.
	ctx = context.WithoutCancel(ctx)
	ev, err := schemas.Decode(msg.Data())
	if err != nil {
		f.log.Warn("malformed event dropped", "subject", msg.Subject(), "error", err)
		_ = msg.Term()
		return
	}
	inv, subject, eventTime, err := toInvalidation(ev)
	if errors.Is(err, errNoInvalidation) {
		_ = msg.Ack()
		return
	}
	if err != nil {
		f.log.Warn("event dropped", "subject", msg.Subject(), "id", ev.ID, "error", err)
		_ = msg.Term()
		return
	}
	pos := f.eventPosition(msg)
	last, stale, err := f.ordered(ctx, subject, pos)
	if err == nil && stale {
		f.log.Info("invalidation not published: a newer one of its subject is out", "subject", subject,
			"request_id", inv.RequestID, "event_seq", pos.seq, "last_event_seq", last.pos.seq)
		_ = msg.Ack()
		return
	}
	inv.PublishedAt = time.Now().UTC() // after the lookup above: the publication itself
	out, nerr := schemas.NewEvent(f.source, schemas.TypeInvalidation, inv.Tenant, ev.Subject, inv)
	if nerr != nil {
		_ = msg.Term()
		return
	}
	// Derived id: a redelivered event yields the same invalidation, which
	// JetStream drops as a duplicate.
	out = out.WithID("inv-" + ev.ID)
	var ackDelay time.Duration
	if inv.Kind != schemas.InvalidationRestored { // agents ack drops, not restores
		ackDelay = f.ackDelay(f.acks.Published(inv))
	}
	if err == nil {
		err = f.publishAfter(ctx, subject, out, pos, last, ackDelay)
	}
	if err != nil {
		f.log.Warn("invalidation not published; will retry", "subject", subject, "request_id", inv.RequestID, "error", err)
		_ = msg.NakWithDelay(250 * time.Millisecond)
		return
	}
	f.metrics.InvalidationsTotal.WithLabelValues(inv.Kind).Inc()
	f.metrics.InvalidationPublishLatency.Observe(time.Since(eventTime).Seconds())
	_ = f.audit.Record(ctx, schemas.AuditRecord{
		Tenant: inv.Tenant, Secret: inv.Secret, Actor: "fanout", Action: "invalidation.publish",
		Outcome: schemas.OutcomeSucceeded, RequestID: inv.RequestID, Component: "fanout",
		Detail: map[string]string{"kind": inv.Kind, "version": inv.Version},
	})
	f.log.Debug("invalidation published", "tenant", inv.Tenant, "secret", inv.Secret, "kind", inv.Kind, "version", inv.Version, "request_id", inv.RequestID)
	if err := msg.Ack(); err != nil {
		f.log.Warn("event ack failed", "error", err)
	}
}

// ackDelay is the ack delay to ask of live agents (see
// Config.AckDelayPerAgent); zero: none.
func (f *Fanout) ackDelay(live int) time.Duration {
	d := min(time.Duration(live)*f.cfg.AckDelayPerAgent, f.cfg.ConfirmTimeout/4, schemas.MaxAckDelayMS*time.Millisecond)
	if d < time.Millisecond {
		return 0
	}
	return d
}

// errNoInvalidation: the event is one fanout reads but that asks for no
// invalidation (an external change that did not delete the secret: the
// sync request it came with invalidates, if anything changed).
var errNoInvalidation = errors.New("no invalidation")

// toInvalidation maps a lifecycle event to the invalidation it causes and
// the subject it goes to.
func toInvalidation(ev schemas.Event) (schemas.Invalidation, string, time.Time, error) {
	switch ev.Type {
	case schemas.TypeExternalChange:
		var d schemas.ExternalChange
		if err := ev.DecodeData(ev.Type, &d); err != nil {
			return schemas.Invalidation{}, "", time.Time{}, err
		}
		if !d.Deleted {
			return schemas.Invalidation{}, "", time.Time{}, errNoInvalidation
		}
		// Deleted outside rekey: every agent drops it and fails on its
		// next read instead of serving the value until its TTL.
		return schemas.Invalidation{
			Tenant: d.Tenant, Secret: d.Secret, Kind: schemas.InvalidationRevoked,
			Reason: "deleted in the backend (" + d.Source + " " + d.Event + ")", RequestID: ev.ID,
		}, schemas.InvalidateSubject(d.Tenant, d.Secret), d.ObservedAt, nil
	case schemas.TypeRotationCompleted:
		var d schemas.RotationCompleted
		if err := ev.DecodeData(ev.Type, &d); err != nil {
			return schemas.Invalidation{}, "", time.Time{}, err
		}
		return schemas.Invalidation{
			Tenant: d.Tenant, Secret: d.Secret, Kind: schemas.InvalidationRotated, Version: d.Version,
			Reason: d.Reason, RequestID: d.RequestID,
		}, schemas.InvalidateSubject(d.Tenant, d.Secret), d.CompletedAt, nil
	case schemas.TypeRevocationStarted:
		var d schemas.RevocationStarted
		if err := ev.DecodeData(ev.Type, &d); err != nil {
			return schemas.Invalidation{}, "", time.Time{}, err
		}
		return schemas.Invalidation{
			Tenant: d.Tenant, Kind: schemas.InvalidationRevoked, Reason: d.Reason, RequestID: d.RequestID,
		}, schemas.InvalidateSubject(d.Tenant, schemas.TenantToken), d.StartedAt, nil
	case schemas.TypeTenantRestored:
		var d schemas.TenantRestored
		if err := ev.DecodeData(ev.Type, &d); err != nil {
			return schemas.Invalidation{}, "", time.Time{}, err
		}
		return schemas.Invalidation{
			Tenant: d.Tenant, Kind: schemas.InvalidationRestored, RequestID: d.RequestID,
		}, schemas.InvalidateSubject(d.Tenant, schemas.TenantToken), d.RestoredAt, nil
	}
	return schemas.Invalidation{}, "", time.Time{}, fmt.Errorf("event type %q causes no invalidation: %w", ev.Type, schemas.ErrMalformed)
}

// ParseAck decodes an agent's ack received on subject. The subject names
// the tenant and the instance, and NATS lets an agent publish under its
// own only: an ack whose body names another tenant, secret or agent than
// its subject is refused, so an agent cannot ack for another. Errors wrap
// schemas.ErrMalformed.
func ParseAck(subject string, data []byte) (schemas.InvalidationAck, error) {
	var ack schemas.InvalidationAck
	err := parseAgentMessage(subject, data, schemas.TypeInvalidationAck, &ack, func(ev schemas.Event) bool {
		return ack.Tenant == ev.Tenant && subject == schemas.AckSubject(ack.Tenant, orTenant(ack.Secret), ack.Agent)
	})
	return ack, err
}

// ParsePresence decodes an agent's heartbeat (or leaving) received on
// subject; the body's tenant and agent must be the subject's, so an agent
// cannot announce, or announce the leaving of, another. Errors wrap
// schemas.ErrMalformed.
func ParsePresence(subject string, data []byte) (schemas.AgentPresence, error) {
	var p schemas.AgentPresence
	err := parseAgentMessage(subject, data, schemas.TypeAgentPresence, &p, func(ev schemas.Event) bool {
		return p.Tenant == ev.Tenant && subject == schemas.PresenceSubject(p.Tenant, p.Agent)
	})
	return p, err
}

// parseAgentMessage decodes an agent's message of type typ into v and
// checks it with ownSubject; on any error v is zeroed.
func parseAgentMessage[T any](subject string, data []byte, typ string, v *T, ownSubject func(schemas.Event) bool) error {
	var zero T
	if len(data) > maxAgentMessage {
		return fmt.Errorf("%s of %d bytes is over %d: %w", typ, len(data), maxAgentMessage, schemas.ErrMalformed)
	}
	ev, err := schemas.DecodeAs(data, typ, v)
	if err == nil && !ownSubject(ev) {
		err = fmt.Errorf("%s on subject %.80q, not its sender's: %w", typ, subject, schemas.ErrMalformed)
	}
	if err != nil {
		*v = zero
	}
	return err
}

// maxAgentMessage bounds an ack or a heartbeat (either is a few hundred
// bytes).
const maxAgentMessage = 16 << 10

// subjectTenant is the tenant token of an agent subject
// (rekey.<kind>.<tenant>...), for tallying refusals; "" if invalid.
func subjectTenant(subject string) string {
	parts := strings.SplitN(subject, ".", 4)
	if len(parts) < 3 || schemas.ValidateID("tenant", parts[2]) != nil {
		return ""
	}
	return parts[2]
}

// refuse tallies a refused agent message of the tenant its subject names.
func (f *Fanout) refuse(subject, reason string) {
	if tenant := subjectTenant(subject); tenant != "" {
		f.refused.Add(context.Background(), tenant, reason, 1, time.Now())
	}
}

func (f *Fanout) onAck(m *nats.Msg) {
	ack, err := ParseAck(m.Subject, m.Data)
	if err != nil {
		f.refuse(m.Subject, refusedMalformed)
		return
	}
	f.metrics.AgentAcksTotal.Inc()
	d, outcome := f.acks.acked(ack, time.Now())
	switch outcome {
	case ackCounted:
		f.metrics.InvalidationLatency.Observe(d.Seconds())
	case ackDuplicate, ackEarly:
		return // audited, if ever, as part of its delivery
	default:
		f.refuse(m.Subject, outcome)
		return
	}
	if !f.deciding.Load() {
		return // the replica holding the confirm lease audits it
	}
	if !f.takeShare(ack.Tenant) {
		f.refuse(m.Subject, refusedAuditShare)
		return
	}
	select {
	case f.ackAudit <- ackRecord{ack: ack, delay: d}:
	default:
		f.releaseShare(ack.Tenant)
		f.log.Warn("ack audit queue full; ack not audited (it still counts in invalidation_confirmed)",
			"tenant", ack.Tenant, "secret", ack.Secret, "agent", ack.Agent, "request_id", ack.RequestID)
	}
}

// takeShare reserves a place in the ack audit queue for one of tenant's
// acks; false when the tenant holds its share.
func (f *Fanout) takeShare(tenant string) bool {
	f.shareMu.Lock()
	defer f.shareMu.Unlock()
	if f.auditShare[tenant] >= ackAuditShare {
		return false
	}
	f.auditShare[tenant]++
	return true
}

func (f *Fanout) releaseShare(tenant string) {
	f.shareMu.Lock()
	defer f.shareMu.Unlock()
	if f.auditShare[tenant] <= 1 {
		delete(f.auditShare, tenant)
		return
	}
	f.auditShare[tenant]--
}

// ackRecordID is the id (and Nats-Msg-Id) of an invalidation.acks record:
// derived, so that a burst written again at a lease handover is stored
// once, but hashed, since it is made from agent-sent text (the first
// ack's agent), and scoped by tenant.
func ackRecordID(rec schemas.AuditRecord) string {
	h := sha256.New()
	for _, part := range []string{rec.Tenant, orTenant(rec.Secret), rec.RequestID, rec.Detail["version"], rec.Acks[0].Agent} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return "acks-" + rec.Tenant + "-" + hex.EncodeToString(h.Sum(nil)[:16])
}

// auditAcks writes the agents' acks to the audit trail. Every agent acks
// an invalidation within milliseconds of the others, so acks are gathered
// until the invalidation is confirmed (flushAckAudit), for at most
// ackAuditWindow, or up to ackAuditMax of them, and written as one
// "invalidation.acks" record per tenant, secret, request and version,
// listing each agent instance with its tool, its drop time and the delay
// fanout measured. One record per burst instead of one per agent keeps the
// AUDIT stream's writes (thousands per rotation otherwise) off the path of
// the next invalidation. It runs on the replica holding the confirm
// lease; a record's id is derived from its first ack, so a burst written
// again at a lease handover is stored once.
func (f *Fanout) auditAcks(ctx context.Context) {
	var (
		recs    []schemas.AuditRecord // in the order their first ack came
		index   = map[ackGroup]int{}  // into recs
		pending int                   // acks in recs
		timer   = time.NewTimer(ackAuditWindow)
	)
	timer.Stop()
	write := func() {
		timer.Stop()
		if pending == 0 {
			return
		}
		batch := make([]orchestrator.IdentifiedRecord, len(recs))
		for i, rec := range recs {
			batch[i] = orchestrator.IdentifiedRecord{ID: ackRecordID(rec), Record: rec}
		}
		recs, pending = nil, 0
		clear(index)
		_ = f.audit.RecordBatch(context.WithoutCancel(ctx), batch)
	}
	add := func(r ackRecord) {
		a := r.ack
		g := ackGroup{tenant: a.Tenant, secret: a.Secret, request: a.RequestID, version: a.Version}
		i, ok := index[g]
		if !ok {
			rec := schemas.AuditRecord{
				Tenant: a.Tenant, Secret: a.Secret, Actor: "fanout", Action: "invalidation.acks",
				Outcome: schemas.OutcomeSucceeded, RequestID: a.RequestID, Component: "fanout",
			}
			if a.Version != "" {
				rec.Detail = map[string]string{"version": a.Version}
			}
			i = len(recs)
			index[g] = i
			recs = append(recs, rec)
		}
		entry := schemas.AuditAck{Agent: a.Agent, Tool: f.acks.Tool(a.Tenant, a.Agent), DroppedAt: a.DroppedAt}
		if r.delay > 0 {
			entry.AckMS = float64(r.delay.Microseconds()) / 1000
		}
		recs[i].Acks = append(recs[i].Acks, entry)
		if len(recs[i].Acks) >= ackAuditMax {
			delete(index, g) // full: the group's next ack starts another record
		}
		if pending == 0 {
			timer.Reset(ackAuditWindow)
		}
		if pending++; pending >= ackAuditPendingMax {
			write()
		}
	}
	take := func(r ackRecord) {
		if r.written == nil {
			f.releaseShare(r.ack.Tenant)
			add(r)
			return
		}
		write()
		close(r.written)
	}
	for {
		select {
		case r := <-f.ackAudit:
			take(r)
		case <-timer.C:
			write()
		case <-ctx.Done():
			for { // what was heard before the stop is still written
				select {
				case r := <-f.ackAudit:
					take(r)
				default:
					write()
					return
				}
			}
		}
	}
}

// flushAckAudit has the acks gathered so far written to the audit trail,
// and waits until they are (for at most ackAuditFlushWait): an
// invalidation's acks are in the audit trail before its confirmation is
// published, and their write is over before the next invalidation, not
// ackAuditWindow later in the middle of it.
func (f *Fanout) flushAckAudit(ctx context.Context) {
	written := make(chan struct{})
	wait := time.NewTimer(ackAuditFlushWait)
	defer wait.Stop()
	select {
	case f.ackAudit <- ackRecord{written: written}:
	case <-wait.C:
		return
	case <-ctx.Done():
		return
	}
	select {
	case <-written:
	case <-wait.C:
	case <-ctx.Done():
	}
}

// ackAuditFlushWait bounds how long a confirmation waits for its acks'
// audit record.
const ackAuditFlushWait = 2 * time.Second

// ackGroup is what the acks of one audit record share.
type ackGroup struct{ tenant, secret, request, version string }

// ackAuditMax bounds the acks in one record, and so its size (about 100
// bytes per ack, far under NATS's 1 MiB payload limit); the acks of a
// larger burst go in several records.
const ackAuditMax = 2000

// ackAuditPendingMax bounds the acks gathered before they are written.
// Writing at every ackAuditMax acks put a record's encoding and its
// JetStream write (of 200 KB) in the middle of a 10,000-agent fanout,
// whose first acks come while the last agents still receive it.
const ackAuditPendingMax = ackAuditQueue / 4

// ackAuditWindow is how long acks are gathered before they are written
// to the audit trail, when their invalidation is not confirmed sooner
// (it is once every live agent acked). At 250 ms the write fell inside
// fanouts to 5,000 agents and more.
const ackAuditWindow = time.Second

func orTenant(secret string) string {
	if secret == "" {
		return schemas.TenantToken
	}
	return secret
}

func (f *Fanout) onPresence(m *nats.Msg) {
	p, err := ParsePresence(m.Subject, m.Data)
	if err != nil {
		f.refuse(m.Subject, refusedMalformed)
		return
	}
	if why := f.acks.Seen(p, time.Now()); why != "" {
		f.refuse(m.Subject, why)
	}
}

// confirmLoop publishes an invalidation_confirmed event for each
// invalidation once every live agent acked it, or when ConfirmTimeout
// passed, naming the live agents that did not ack; the acks heard until
// then are written to the audit trail first.
func (f *Fanout) confirmLoop(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			due := f.acks.due(now, f.cfg.ConfirmTimeout)
			if len(due) > 0 {
				f.flushAckAudit(ctx)
			}
			for _, c := range due {
				f.confirm(context.WithoutCancel(ctx), c)
			}
		}
	}
}

func (f *Fanout) confirm(ctx context.Context, c schemas.InvalidationConfirmed) {
	subject := c.Tenant
	if c.Secret != "" {
		subject += "/" + c.Secret
	}
	ev, err := schemas.NewEvent(f.source, schemas.TypeInvalidationConfirmed, c.Tenant, subject, c)
	if err != nil {
		return
	}
	ev = ev.WithID("conf-" + c.Tenant + "-" + orTenant(c.Secret) + "-" + c.RequestID)
	ack, err := f.bus.Publish(ctx, schemas.EventsSubject(c.Tenant, schemas.KindInvalidationConfirmed), ev)
	if err != nil {
		f.log.Warn("invalidation_confirmed not published", "tenant", c.Tenant, "secret", c.Secret, "request_id", c.RequestID, "error", err)
		return
	}
	if ack.Duplicate {
		return // confirmed already, by the replica that held the lease before
	}
	outcome := schemas.OutcomeSucceeded
	if !c.Complete {
		outcome = schemas.OutcomeFailed
		f.log.Warn("agents did not confirm an invalidation", "tenant", c.Tenant, "secret", c.Secret, "request_id", c.RequestID,
			"missing_count", max(c.MissingCount, len(c.Missing)), "live", c.LiveAgents)
	}
	_ = f.audit.Record(ctx, schemas.AuditRecord{
		Tenant: c.Tenant, Secret: c.Secret, Actor: "fanout", Action: "invalidation.confirm", Outcome: outcome,
		RequestID: c.RequestID, Component: "fanout", Detail: map[string]string{
			"live_agents": fmt.Sprint(c.LiveAgents), "acked": fmt.Sprint(c.Acked),
			"last_ack_ms": fmt.Sprintf("%.3f", c.LastAckMS), "missing": strings.Join(c.Missing, ","),
			"missing_count": fmt.Sprint(max(c.MissingCount, len(c.Missing))),
		},
	})
}
