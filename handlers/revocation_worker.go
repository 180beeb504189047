package handlers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// RevocationWorker consumes rekey.revoke.<t>: it marks the tenant revoked
// (so agents and APIs fail closed at once), then in parallel rotates every
// secret of the tenant and asks every backend that holds revocable
// credentials to revoke the tenant's, and reports what it did.
type RevocationWorker struct {
	started atomic.Bool
	d       Deps
	cfg     WorkerConfig
	rotator *Rotator
	// BusyWait bounds how long a revocation waits for a secret's ongoing
	// rotation to release its lock.
	BusyWait time.Duration
	// PartAttempts is how many rounds a failing item (a secret's rotation,
	// a backend's lease revocation) gets before it is reported failed;
	// PartBackoff the delay before the second round, doubled after.
	PartAttempts int
	PartBackoff  time.Duration
}

// NewRevocationWorker returns a revocation worker.
func NewRevocationWorker(d Deps, r *Rotator, cfg WorkerConfig) *RevocationWorker {
	return &RevocationWorker{d: d, cfg: cfg.withDefaults(), rotator: r, BusyWait: 2 * time.Minute, PartAttempts: 3, PartBackoff: time.Second}
}

// Run consumes until ctx ends. It then hands back at once the requests it
// holds but has not started; a revocation in flight finishes first (up to
// ShutdownTimeout), or is handed back.
func (w *RevocationWorker) Run(ctx context.Context) error {
	log := w.d.Log.With("component", "revocation-worker")
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	// Queued requests are kept alive too: they wait behind their tenant's
	// running revocation, which may take longer than AckWait.
	held := newHeldSet()
	go held.keepAlive(workCtx, w.cfg.AckWait)
	// One goroutine per tenant with work, so that a tenant's requests
	// (revoke, then restore) are applied in the order they were made while
	// different tenants proceed in parallel.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		queues = map[string][]jetstream.Msg{}
	)
	drain := func(key string) {
		defer wg.Done()
		for {
			mu.Lock()
			q := queues[key]
			if len(q) == 0 || ctx.Err() != nil {
				delete(queues, key)
				mu.Unlock()
				for _, m := range q {
					held.remove(m)
					_ = handBack(m)
				}
				return
			}
			msg := q[0]
			queues[key] = q[1:]
			mu.Unlock()
			w.handle(workCtx, ctx, msg)
			held.remove(msg)
		}
	}
	err := pull(ctx, w.d.Bus, queue{
		stream: schemas.StreamRevoke, durable: orchestrator.ConsumerRevocation, filter: schemas.SubjectRevokeAll,
		started: func() { w.started.Store(true) },
		ackWait: w.cfg.AckWait, maxAckPending: 1000, batch: 64,
	}, log, func(msg jetstream.Msg) {
		held.add(msg)
		mu.Lock()
		defer mu.Unlock()
		_, running := queues[msg.Subject()]
		queues[msg.Subject()] = append(queues[msg.Subject()], msg)
		if !running {
			wg.Add(1)
			go drain(msg.Subject())
		}
	})
	// Hand back what waits now, not after the running revocations.
	mu.Lock()
	var waiting []jetstream.Msg
	for k, q := range queues {
		waiting = append(waiting, q...)
		queues[k] = nil
	}
	mu.Unlock()
	for _, m := range waiting {
		held.remove(m)
		_ = handBack(m)
	}
	drainWork(&wg, w.cfg.ShutdownTimeout, cancelWork, log)
	for _, m := range held.take() {
		_ = handBack(m)
	}
	return err
}

// handle applies one request; ctx is the work's context, runCtx the
// worker's (ended by a stop).
func (w *RevocationWorker) handle(ctx, runCtx context.Context, msg jetstream.Msg) {
	log := w.d.Log.With("component", "revocation-worker", "subject", msg.Subject())
	ev, err := schemas.Decode(msg.Data())
	var req schemas.RevocationRequested
	if err == nil {
		err = ev.DecodeData(schemas.TypeRevocationRequested, &req)
	}
	if err == nil && msg.Subject() != schemas.RevokeSubject(req.Tenant) {
		err = fmt.Errorf("request for %s arrived on %s: %w", req.Tenant, msg.Subject(), schemas.ErrMalformed)
	}
	if err == nil && !w.d.Catalog.HasTenant(req.Tenant) {
		err = fmt.Errorf("tenant %s is not configured: %w", req.Tenant, ErrNotFound)
	}
	if err != nil {
		log.Warn("revocation request refused", "error", err)
		w.d.Metrics.RequestsTotal.WithLabelValues("revoke", "refused").Inc()
		_ = msg.TermWithReason(truncateReason(err.Error()))
		return
	}
	if older, err := w.olderPending(ctx, msg); err != nil || older {
		// Not before the tenant's earlier request: another replica has it,
		// or it waits to be redelivered (crash, failure).
		// Looked at again soon: the earlier request of a dead process comes
		// back after AckWait, and this one must follow it closely.
		log.Debug("an earlier request of the tenant goes first; will be redelivered", "tenant", req.Tenant, "request_id", ev.ID, "error", err)
		_ = msg.NakWithDelay(orderRetry)
		return
	}
	switch req.Action {
	case schemas.ActionRestore:
		err = w.restore(ctx, ev.ID, req)
	default:
		err = w.revoke(ctx, ev.ID, req)
	}
	if err != nil && runCtx.Err() != nil {
		// Stopping: the next process (or another replica) takes it at once.
		_ = handBack(msg)
		return
	}
	if err != nil {
		log.Warn("revocation interrupted; will be redelivered", "tenant", req.Tenant, "request_id", ev.ID, "error", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	if err := msg.Ack(); err != nil {
		log.Warn("ack failed", "error", err)
	}
}

// olderPending reports whether the stream still holds a request of msg's
// tenant made before msg. The stream is a work queue: a request leaves it
// once handled, so a tenant's requests (revoke, restore, revoke...) are
// applied in the order they were made, whichever replica pulls them and
// however late a crashed replica's request is redelivered.
func (w *RevocationWorker) olderPending(ctx context.Context, msg jetstream.Msg) (bool, error) {
	md, err := msg.Metadata()
	if err != nil {
		return false, err
	}
	s, err := w.d.Bus.JS.Stream(ctx, schemas.StreamRevoke)
	if err != nil {
		return false, fmt.Errorf("stream %s: %w", schemas.StreamRevoke, err)
	}
	first, err := s.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(msg.Subject()))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("oldest request on %s: %w", msg.Subject(), err)
	}
	return first.Sequence < md.Sequence.Stream, nil
}

// orderRetry is how soon a request waiting for its tenant's earlier one is
// looked at again.
const orderRetry = 200 * time.Millisecond

func actorOf(t schemas.Trigger) string {
	if t.Actor != "" {
		return t.Kind + ":" + t.Actor
	}
	return t.Kind
}

func (w *RevocationWorker) revoke(ctx context.Context, requestID string, req schemas.RevocationRequested) error {
	t := req.Tenant
	log := w.d.Log.With("component", "revocation-worker", "tenant", t, "request_id", requestID)
	started := time.Now().UTC()

	// 1. Fail closed first.
	if err := w.d.State.SetTenantState(ctx, orchestrator.TenantState{
		Tenant: t, Revoked: true, RequestID: requestID, Reason: req.Reason, Since: started,
	}); err != nil {
		return err
	}
	if _, err := w.d.Bus.PublishEvent(ctx, schemas.EventsSubject(t, schemas.KindRevocationStarted), w.d.Source,
		schemas.TypeRevocationStarted, t, t, schemas.RevocationStarted{
			Tenant: t, RequestID: requestID, Reason: req.Reason, Trigger: req.Trigger, StartedAt: started,
		}); err != nil {
		return err
	}
	_ = w.d.Audit.Record(ctx, schemas.AuditRecord{
		Tenant: t, Actor: actorOf(req.Trigger), Action: "revocation.start", Outcome: schemas.OutcomeAccepted,
		RequestID: requestID, Component: "revocation-worker", Detail: map[string]string{"reason": req.Reason},
	})
	log.Warn("tenant revoked; revoking and rotating its credentials")

	// 2. In parallel: rotate every static secret; revoke leases. Each item
	// that fails is retried in rounds; each end is published as progress.
	var items []revocationItem
	for _, s := range w.d.Catalog.Secrets(t) {
		ref, b, err := w.d.Catalog.Lookup(t, s)
		if err != nil {
			items = append(items, revocationItem{part: "secrets", name: s, run: func(context.Context, int) (int, error) { return 0, err }})
			continue
		}
		items = append(items, revocationItem{part: b.Name() + ".secrets", name: s, run: func(ctx context.Context, round int) (int, error) {
			return 1, w.rotateForRevocation(ctx, requestID, ref, req, round)
		}})
	}
	for _, b := range w.d.Catalog.Backends() {
		if rv, ok := b.(TenantRevoker); ok {
			items = append(items, revocationItem{part: b.Name() + ".leases", name: b.Name(), run: func(ctx context.Context, _ int) (int, error) {
				return rv.RevokeTenant(ctx, t)
			}})
		}
	}
	parts := w.runItems(ctx, requestID, t, started, items)
	if ctx.Err() != nil {
		return ctx.Err()
	}

	// 3. Report.
	done := schemas.RevocationCompleted{Tenant: t, RequestID: requestID, StartedAt: started, CompletedAt: time.Now().UTC()}
	for _, name := range sortedParts(parts) {
		p := parts[name]
		done.Parts = append(done.Parts, *p)
		if p.Failed > 0 {
			done.Failed = true
		}
	}
	if _, err := w.d.Bus.PublishEvent(ctx, schemas.EventsSubject(t, schemas.KindRevocationCompleted), w.d.Source,
		schemas.TypeRevocationCompleted, t, t, done); err != nil {
		return err
	}
	outcome := schemas.OutcomeSucceeded
	if done.Failed {
		outcome = schemas.OutcomeFailed
	}
	_ = w.d.Audit.Record(ctx, schemas.AuditRecord{
		Tenant: t, Actor: actorOf(req.Trigger), Action: "revocation.complete", Outcome: outcome,
		RequestID: requestID, Component: "revocation-worker",
		Detail: map[string]string{"duration_ms": fmt.Sprintf("%.1f", float64(done.CompletedAt.Sub(started).Microseconds())/1000)},
	})
	w.d.Metrics.RevocationsTotal.WithLabelValues("revoke", outcome).Inc()
	w.d.Metrics.RevocationDuration.Observe(done.CompletedAt.Sub(started).Seconds())
	log.Warn("revocation completed", "duration", done.CompletedAt.Sub(started), "failed", done.Failed)
	return nil
}

// revocationItem is one unit of a revocation: a secret to rotate or a
// backend whose leases to revoke. run (round counts from 1) returns how
// many credentials it covered.
type revocationItem struct {
	part, name string
	run        func(ctx context.Context, round int) (int, error)
}

// runItems runs every item at once, each up to PartAttempts rounds with
// backoff between them, publishes a progress event at each end or retry,
// and returns the per-part report.
func (w *RevocationWorker) runItems(ctx context.Context, requestID, tenant string, started time.Time, items []revocationItem) map[string]*schemas.PartReport {
	var (
		mu     sync.Mutex
		parts  = map[string]*schemas.PartReport{}
		done   int
		failed int
		wg     sync.WaitGroup
	)
	progress := func(it revocationItem, attempt, n int, err error, final bool, took time.Duration) {
		mu.Lock()
		p, ok := parts[it.part]
		if !ok {
			p = &schemas.PartReport{Part: it.part}
			parts[it.part] = p
		}
		ev := schemas.RevocationProgress{
			Tenant: tenant, RequestID: requestID, Part: it.part, Item: it.name, Attempt: attempt, Total: len(items),
		}
		switch {
		case !final:
			ev.Outcome = schemas.OutcomeRetrying
		case err != nil:
			ev.Outcome = schemas.OutcomeFailed
			p.Failed++
			p.Errors = append(p.Errors, it.name+": "+err.Error())
			failed++
		default:
			ev.Outcome = schemas.OutcomeSucceeded
			p.Succeeded += n
			ev.Count = n
		}
		if final {
			done++
			if attempt > 1 {
				p.Retried++
			}
			p.DurationMS = max(p.DurationMS, float64(took.Microseconds())/1000)
		}
		if err != nil {
			ev.Error = err.Error()
		}
		ev.Done, ev.Failed = done, failed
		ev.ElapsedMS = float64(time.Since(started).Microseconds()) / 1000
		// Published under the lock so that the stream holds progress in
		// the order of Done: readers may print it as it arrives.
		if _, perr := w.d.Bus.PublishEvent(context.WithoutCancel(ctx), schemas.EventsSubject(tenant, schemas.KindRevocationProgress), w.d.Source,
			schemas.TypeRevocationProgress, tenant, tenant, ev); perr != nil {
			w.d.Log.Warn("revocation progress not published", "component", "revocation-worker", "tenant", tenant, "error", perr)
		}
		mu.Unlock()
		if err != nil {
			_ = w.d.Audit.Record(ctx, schemas.AuditRecord{
				Tenant: tenant, Actor: "revocation:" + requestID, Action: "revocation." + it.part, Outcome: ev.Outcome,
				RequestID: requestID, Component: "revocation-worker",
				Detail: map[string]string{"item": it.name, "attempt": fmt.Sprint(attempt), "error": err.Error()},
			})
		}
	}
	attempts := max(w.PartAttempts, 1)
	for _, it := range items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			begin := time.Now()
			for attempt := 1; ; attempt++ {
				n, err := it.run(ctx, attempt)
				if err == nil || attempt >= attempts || ctx.Err() != nil {
					progress(it, attempt, n, err, true, time.Since(begin))
					return
				}
				progress(it, attempt, n, err, false, 0)
				if !retry.Sleep(ctx, retry.Backoff{Initial: w.PartBackoff, Max: 30 * time.Second, Jitter: 0.2}.Delay(attempt)) {
					progress(it, attempt, n, err, true, time.Since(begin))
					return
				}
			}
		}()
	}
	wg.Wait()
	return parts
}

// rotateForRevocation rotates one secret, waiting for a rotation already in
// progress to finish first.
func (w *RevocationWorker) rotateForRevocation(ctx context.Context, requestID string, ref SecretRef, req schemas.RevocationRequested, round int) error {
	deadline := time.Now().Add(w.BusyWait)
	for {
		_, err := w.rotator.Rotate(ctx, Job{
			Tenant: ref.Tenant, Secret: ref.Secret, RequestID: requestID + "." + ref.Secret,
			Reason: "tenant revoked: " + req.Reason, Trigger: schemas.Trigger{Kind: schemas.TriggerRevoke, Actor: requestID},
			Delivery: uint64(round), // a new backend token each round
		})
		if !errors.Is(err, ErrBusy) || time.Now().After(deadline) {
			return err
		}
		if !retry.Sleep(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
}

func (w *RevocationWorker) restore(ctx context.Context, requestID string, req schemas.RevocationRequested) error {
	t := req.Tenant
	if err := w.d.State.SetTenantState(ctx, orchestrator.TenantState{Tenant: t, Revoked: false, RequestID: requestID, Reason: req.Reason, Since: time.Now().UTC()}); err != nil {
		return err
	}
	if _, err := w.d.Bus.PublishEvent(ctx, schemas.EventsSubject(t, schemas.KindTenantRestored), w.d.Source,
		schemas.TypeTenantRestored, t, t, schemas.TenantRestored{Tenant: t, RequestID: requestID, Trigger: req.Trigger, RestoredAt: time.Now().UTC()}); err != nil {
		return err
	}
	_ = w.d.Audit.Record(ctx, schemas.AuditRecord{
		Tenant: t, Actor: actorOf(req.Trigger), Action: "revocation.restore", Outcome: schemas.OutcomeSucceeded,
		RequestID: requestID, Component: "revocation-worker",
	})
	w.d.Metrics.RevocationsTotal.WithLabelValues("restore", schemas.OutcomeSucceeded).Inc()
	w.d.Log.Warn("tenant restored", "component", "revocation-worker", "tenant", t, "request_id", requestID)
	return nil
}

func sortedParts(m map[string]*schemas.PartReport) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Started reports whether the worker consumes (for readiness).
func (w *RevocationWorker) Started() bool { return w.started.Load() }
