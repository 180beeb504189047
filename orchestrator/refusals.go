package orchestrator

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/rekey-dev/rekey/schemas"
)

// Refusals tallies what a component refused from a tenant's agents (use
// reports, acks, heartbeats) and writes it to the tenant's audit trail at
// most once per Every: a flood of refused messages costs one record a
// minute, not one per message. A record holds counts by reason, never a
// value or the refused text.
type Refusals struct {
	audit     *Auditor
	component string
	action    string
	every     time.Duration

	mu      sync.Mutex
	tenants map[string]*refusalTally
}

type refusalTally struct {
	counts  map[string]int64
	written time.Time
}

// NewRefusals returns a tally written as action (e.g. "usage.refused") by
// component, at most once per every per tenant.
func NewRefusals(audit *Auditor, component, action string, every time.Duration) *Refusals {
	return &Refusals{audit: audit, component: component, action: action, every: every, tenants: map[string]*refusalTally{}}
}

// Add counts n refusals of tenant for reason, and writes the tenant's
// tally if the last record is older than every.
func (r *Refusals) Add(ctx context.Context, tenant, reason string, n int64, now time.Time) {
	r.mu.Lock()
	t := r.tenants[tenant]
	if t == nil {
		t = &refusalTally{counts: map[string]int64{}}
		r.tenants[tenant] = t
	}
	t.counts[reason] += n
	rec, due := r.takeLocked(tenant, t, now)
	r.mu.Unlock()
	if due {
		_ = r.audit.Record(ctx, rec)
	}
}

// Flush writes every tally whose tenant was not audited within every
// (force: every tally), for a periodic sweep and at stop.
func (r *Refusals) Flush(ctx context.Context, now time.Time, force bool) {
	r.mu.Lock()
	var recs []schemas.AuditRecord
	for _, tenant := range slices.Sorted(maps.Keys(r.tenants)) {
		t := r.tenants[tenant]
		if force {
			t.written = time.Time{}
		}
		if rec, due := r.takeLocked(tenant, t, now); due {
			recs = append(recs, rec)
		}
		if len(t.counts) == 0 && now.Sub(t.written) > r.every {
			delete(r.tenants, tenant)
		}
	}
	r.mu.Unlock()
	for _, rec := range recs {
		_ = r.audit.Record(ctx, rec)
	}
}

// Run writes the tallies due every flushEvery until ctx ends, then every
// tally left; it returns nil.
func (r *Refusals) Run(ctx context.Context) error {
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			r.Flush(context.WithoutCancel(ctx), time.Now(), true)
			return nil
		case now := <-tick.C:
			r.Flush(ctx, now, false)
		}
	}
}

// flushEvery is how often Run looks for tallies due.
const flushEvery = 10 * time.Second

func (r *Refusals) takeLocked(tenant string, t *refusalTally, now time.Time) (schemas.AuditRecord, bool) {
	if len(t.counts) == 0 || now.Sub(t.written) < r.every {
		return schemas.AuditRecord{}, false
	}
	detail := make(map[string]string, len(t.counts))
	for reason, n := range t.counts {
		detail[reason] = strconv.FormatInt(n, 10)
	}
	clear(t.counts)
	t.written = now
	return schemas.AuditRecord{Tenant: tenant, Actor: r.component, Action: r.action, Outcome: schemas.OutcomeRefused,
		Component: r.component, Detail: detail}, true
}
