package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/schemas"
)

// Auditor writes audit records to the AUDIT stream (rekey.audit.<tenant>).
type Auditor struct {
	bus    *Bus
	source string
	log    *slog.Logger
}

// NewAuditor returns an Auditor whose events carry source (e.g. "rekeyd").
func NewAuditor(bus *Bus, source string, log *slog.Logger) *Auditor {
	return &Auditor{bus: bus, source: source, log: log}
}

// Record writes one audit record and waits for the stream to store it.
// A failure is logged and returned; callers decide whether it is fatal.
func (a *Auditor) Record(ctx context.Context, rec schemas.AuditRecord) error {
	return a.RecordWithID(ctx, "", rec)
}

// RecordWithID is Record with a derived event id (when id is not empty),
// so that a record written again after a crash is dropped by JetStream as
// a duplicate.
func (a *Auditor) RecordWithID(ctx context.Context, id string, rec schemas.AuditRecord) error {
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	ev, err := a.event(id, rec)
	if err == nil {
		// Long enough to outlast a NATS cluster's failover (Publish retries).
		pctx, cancel := retry.WithDefaultTimeout(ctx, 20*time.Second)
		_, err = a.bus.Publish(pctx, schemas.AuditSubject(rec.Tenant), ev)
		cancel()
	}
	if err != nil {
		a.log.Error("audit record not written", "component", "audit", "tenant", rec.Tenant, "secret", rec.Secret,
			"action", rec.Action, "outcome", rec.Outcome, "request_id", rec.RequestID, "error", err)
		return fmt.Errorf("audit %s %s: %w", rec.Action, rec.Outcome, err)
	}
	return nil
}

// IdentifiedRecord is an audit record with its derived event id.
type IdentifiedRecord struct {
	ID     string
	Record schemas.AuditRecord
}

// RecordBatch writes many records at once: published asynchronously, then
// waited for together, which costs a fraction of one round trip each. A
// record whose publish failed is written again with RecordWithID (its id
// makes a record stored twice one record). It returns the first failure.
func (a *Auditor) RecordBatch(ctx context.Context, recs []IdentifiedRecord) error {
	p := a.Pipeline()
	for _, r := range recs {
		if err := p.RecordWithID(r.ID, r.Record); err != nil {
			return err
		}
	}
	return p.Wait(ctx)
}

// Pipeline publishes records as they come without waiting for each, and
// waits for them together (Wait): a record is on its way as soon as it is
// recorded, as with Record, but a sequence of records costs one round trip
// instead of one each. Not safe for concurrent use.
type Pipeline struct {
	a       *Auditor
	recs    []IdentifiedRecord
	futures []jetstream.PubAckFuture
}

// Pipeline starts a pipeline of records.
func (a *Auditor) Pipeline() *Pipeline { return &Pipeline{a: a} }

// Record publishes rec (a new event id is its identity for Wait's retry).
func (p *Pipeline) Record(rec schemas.AuditRecord) error { return p.RecordWithID("", rec) }

// RecordWithID publishes rec with a derived event id (see
// Auditor.RecordWithID). It fails only when rec cannot be encoded; a
// publish that fails is written again by Wait.
func (p *Pipeline) RecordWithID(id string, rec schemas.AuditRecord) error {
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	ev, err := p.a.event(id, rec)
	var data []byte
	if err == nil {
		data, err = ev.Encode()
	}
	if err != nil {
		return fmt.Errorf("audit %s %s: %w", rec.Action, rec.Outcome, err)
	}
	f, err := p.a.bus.JS.PublishAsync(schemas.AuditSubject(rec.Tenant), data, jetstream.WithMsgID(ev.ID))
	if err != nil {
		f = nil // Wait writes it again
	}
	p.recs = append(p.recs, IdentifiedRecord{ID: ev.ID, Record: rec})
	p.futures = append(p.futures, f)
	return nil
}

// Wait waits until the stream stored every record published so far,
// writes again with RecordWithID those it did not acknowledge (their ids
// make a record stored twice one record), and returns the first failure.
// The pipeline is empty afterwards.
func (p *Pipeline) Wait(ctx context.Context) error {
	recs, futures := p.recs, p.futures
	p.recs, p.futures = nil, nil
	wait, cancel := retry.WithDefaultTimeout(ctx, 10*time.Second)
	defer cancel()
	var first error
	for i, f := range futures {
		if f != nil {
			select {
			case <-f.Ok():
				continue
			case <-f.Err():
			case <-wait.Done():
			}
		}
		if err := p.a.RecordWithID(ctx, recs[i].ID, recs[i].Record); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// event wraps a record in its CloudEvent, with id when not empty.
func (a *Auditor) event(id string, rec schemas.AuditRecord) (schemas.Event, error) {
	subject := rec.Tenant
	if rec.Secret != "" {
		subject += "/" + rec.Secret
	}
	ev, err := schemas.NewEvent(a.source, schemas.TypeAuditRecord, rec.Tenant, subject, rec)
	if err == nil && id != "" {
		ev = ev.WithID(id)
	}
	return ev, err
}
