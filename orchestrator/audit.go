package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"time"

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
	subject := rec.Tenant
	if rec.Secret != "" {
		subject += "/" + rec.Secret
	}
	ev, err := schemas.NewEvent(a.source, schemas.TypeAuditRecord, rec.Tenant, subject, rec)
	if err == nil {
		if id != "" {
			ev = ev.WithID(id)
		}
		// Long enough to outlast a NATS cluster's failover (Publish retries).
		pctx, cancel := withDefaultTimeout(ctx, 20*time.Second)
		_, err = a.bus.Publish(pctx, schemas.AuditSubject(rec.Tenant), ev)
		cancel()
	}
	if err != nil {
		a.log.Error("audit record not written", "component", "audit", "tenant", rec.Tenant, "secret", rec.Secret,
			"action", rec.Action, "outcome", rec.Outcome, "request_id", rec.RequestID, "err", err)
		return fmt.Errorf("audit %s %s: %w", rec.Action, rec.Outcome, err)
	}
	return nil
}
