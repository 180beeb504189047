// Package fanout turns completed rotations and revocations into cache
// invalidations for every running agent, and collects the agents' acks.
// It reads events from the EVENTS stream and publishes on
// rekey.invalidate.<t>.<s>; it never talks to a backend.
package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
}

// New returns a Fanout. source is the CloudEvents source of invalidations.
func New(bus *orchestrator.Bus, audit *orchestrator.Auditor, metrics *orchestrator.Metrics, source string, log *slog.Logger) *Fanout {
	return &Fanout{bus: bus, audit: audit, metrics: metrics, log: log.With("component", "fanout"), source: source, acks: NewAckTracker(10000)}
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
		},
		MaxDeliver: -1,
	})
	if err != nil {
		return err
	}
	ackSub, err := f.bus.NC.Subscribe(schemas.SubjectAckAll, f.onAck)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", schemas.SubjectAckAll, err)
	}
	defer func() { _ = ackSub.Drain() }()

	// Consume's callback runs on one goroutine, in stream order, so the
	// invalidations of one secret go out in the order of its rotations.
	cc, err := cons.Consume(func(msg jetstream.Msg) { f.handle(ctx, msg) }, jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("consume %s: %w", schemas.StreamEvents, err)
	}
	<-ctx.Done()
	cc.Drain()
	select {
	case <-cc.Closed():
	case <-time.After(10 * time.Second):
	}
	return nil
}

func (f *Fanout) handle(ctx context.Context, msg jetstream.Msg) {
	ev, err := schemas.Decode(msg.Data())
	if err != nil {
		f.log.Warn("malformed event dropped", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	inv, subject, eventTime, err := toInvalidation(ev)
	if err != nil {
		f.log.Warn("event dropped", "subject", msg.Subject(), "id", ev.ID, "err", err)
		_ = msg.Term()
		return
	}
	inv.PublishedAt = time.Now().UTC()
	out, err := schemas.NewEvent(f.source, schemas.TypeInvalidation, inv.Tenant, ev.Subject, inv)
	if err != nil {
		_ = msg.Term()
		return
	}
	// Derived id: a redelivered event yields the same invalidation, which
	// JetStream drops as a duplicate.
	out = out.WithID("inv-" + ev.ID)
	f.acks.Published(inv)
	if _, err := f.bus.Publish(ctx, subject, out); err != nil {
		f.log.Warn("invalidation not published; will retry", "subject", subject, "request_id", inv.RequestID, "err", err)
		_ = msg.NakWithDelay(250 * time.Millisecond)
		return
	}
	f.metrics.InvalidationsTotal.WithLabelValues(inv.Kind).Inc()
	f.metrics.InvalidationLatency.Observe(time.Since(eventTime).Seconds())
	_ = f.audit.Record(ctx, schemas.AuditRecord{
		Tenant: inv.Tenant, Secret: inv.Secret, Actor: "fanout", Action: "invalidation.publish",
		Outcome: schemas.OutcomeSucceeded, RequestID: inv.RequestID, Component: "fanout",
		Detail: map[string]string{"kind": inv.Kind, "version": inv.Version},
	})
	f.log.Debug("invalidation published", "tenant", inv.Tenant, "secret", inv.Secret, "kind", inv.Kind, "version", inv.Version, "request_id", inv.RequestID)
	if err := msg.Ack(); err != nil {
		f.log.Warn("event ack failed", "err", err)
	}
}

// toInvalidation maps a lifecycle event to the invalidation it causes and
// the subject it goes to.
func toInvalidation(ev schemas.Event) (schemas.Invalidation, string, time.Time, error) {
	switch ev.Type {
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

func (f *Fanout) onAck(m *nats.Msg) {
	ev, err := schemas.Decode(m.Data)
	if err != nil {
		return
	}
	var ack schemas.InvalidationAck
	if err := ev.DecodeData(schemas.TypeInvalidationAck, &ack); err != nil {
		return
	}
	// The subject names the tenant; an agent cannot ack for another.
	if ack.Tenant != ev.Tenant || m.Subject != schemas.AckSubject(ack.Tenant, orTenant(ack.Secret)) {
		return
	}
	f.metrics.AgentAcksTotal.Inc()
	if d, ok := f.acks.Acked(ack, time.Now()); ok {
		f.metrics.AgentInvalidationDelay.Observe(d.Seconds())
	}
}

func orTenant(secret string) string {
	if secret == "" {
		return schemas.TenantToken
	}
	return secret
}

// AckTracker remembers, for recent invalidations, when they were published
// and which agents confirmed them.
type AckTracker struct {
	mu    sync.Mutex
	limit int
	order []string
	byReq map[string]*Delivery
}

// Delivery is one invalidation and the agents that acked it.
type Delivery struct {
	Invalidation schemas.Invalidation
	Acks         map[string]time.Duration // agent -> publish-to-ack delay
}

// NewAckTracker keeps up to limit invalidations.
func NewAckTracker(limit int) *AckTracker {
	return &AckTracker{limit: limit, byReq: map[string]*Delivery{}}
}

func ackKey(tenant, secret, requestID string) string { return tenant + "/" + secret + "/" + requestID }

// Published records an invalidation about to be sent.
func (t *AckTracker) Published(inv schemas.Invalidation) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := ackKey(inv.Tenant, inv.Secret, inv.RequestID)
	if _, ok := t.byReq[k]; ok {
		return
	}
	t.byReq[k] = &Delivery{Invalidation: inv, Acks: map[string]time.Duration{}}
	t.order = append(t.order, k)
	if len(t.order) > t.limit {
		delete(t.byReq, t.order[0])
		t.order = t.order[1:]
	}
}

// Acked records an agent's ack and returns the delay since publication.
func (t *AckTracker) Acked(ack schemas.InvalidationAck, at time.Time) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.byReq[ackKey(ack.Tenant, ack.Secret, ack.RequestID)]
	if !ok {
		return 0, false
	}
	delay := at.Sub(d.Invalidation.PublishedAt)
	d.Acks[ack.Agent] = delay
	return delay, true
}

// Get returns a copy of what is known about one invalidation.
func (t *AckTracker) Get(tenant, secret, requestID string) (Delivery, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.byReq[ackKey(tenant, secret, requestID)]
	if !ok {
		return Delivery{}, errors.New("fanout: no such invalidation")
	}
	cp := Delivery{Invalidation: d.Invalidation, Acks: make(map[string]time.Duration, len(d.Acks))}
	for k, v := range d.Acks {
		cp.Acks[k] = v
	}
	return cp, nil
}
