package handlers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// WorkerConfig tunes a worker's consumption.
type WorkerConfig struct {
	// AckWait is how long JetStream waits for an ack before redelivering;
	// held messages are kept alive with InProgress well within it.
	AckWait time.Duration
	// ShutdownTimeout bounds how long Run waits for in-flight rotations
	// after ctx ends; what is still running then is redelivered later.
	ShutdownTimeout time.Duration
	// MaxDeliver is the number of failures (in the rekey_failures bucket,
	// not deliveries: a redelivery after a crash or a stop is no failure)
	// after which a request that keeps failing is terminated with a
	// rotation.failed event.
	MaxDeliver int
	// FailureTTL is how long a request's failure count is kept (default 7
	// days, the age limit of ROTATE).
	FailureTTL time.Duration
}

func (c WorkerConfig) withDefaults() WorkerConfig {
	if c.AckWait == 0 {
		c.AckWait = 3 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 20 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 10
	}
	if c.FailureTTL == 0 {
		c.FailureTTL = 7 * 24 * time.Hour
	}
	return c
}

// RotationWorker consumes rotation requests (rekey.rotate.<t>.<s>) and runs
// them through the Rotator. Requests for one secret are handled one batch at
// a time: every request that arrived before a rotation started is satisfied
// by it (coalescing), so a storm of requests costs one or two rotations.
type RotationWorker struct {
	started atomic.Bool
	d       Deps
	cfg     WorkerConfig
	rotator *Rotator
	sem     chan struct{}
	// minInterval: see orchestrator.RotationConfig.MinInterval.
	minInterval time.Duration

	mu       sync.Mutex
	queues   map[string][]jetstream.Msg // per tenant.secret, waiting
	busy     map[string]bool            // a drain goroutine runs for the key
	held     *heldSet                   // every message not yet acked
	failures *failures
	wg       sync.WaitGroup

	workCtx  context.Context
	stopping bool
	stopped  chan struct{} // closed when Run stops taking work
}

// NewRotationWorker returns a worker running at most concurrency rotations
// at once.
func NewRotationWorker(d Deps, r *Rotator, concurrency int, minInterval time.Duration, cfg WorkerConfig) *RotationWorker {
	return &RotationWorker{
		d: d, cfg: cfg.withDefaults(), rotator: r, sem: make(chan struct{}, max(concurrency, 1)), minInterval: minInterval,
		queues: map[string][]jetstream.Msg{}, busy: map[string]bool{}, held: newHeldSet(), stopped: make(chan struct{}),
	}
}

// Run consumes until ctx ends (call Provision first). It then stops
// pulling, hands back at once every request it holds but has not started,
// lets in-flight rotations finish (up to ShutdownTimeout) and hands back
// whatever is left, so nothing is lost and nothing waits for AckWait.
func (w *RotationWorker) Run(ctx context.Context) error {
	log := w.d.Log.With("component", "rotation-worker")
	fails, err := openFailures(ctx, w.d.Bus, w.cfg.FailureTTL)
	if err != nil {
		return err
	}
	w.failures = fails
	// Work runs on its own context so that shutdown lets it finish.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	w.workCtx = workCtx
	go w.held.keepAlive(workCtx, w.cfg.AckWait)

	err = pull(ctx, w.d.Bus, queue{
		stream: schemas.StreamRotate, durable: orchestrator.ConsumerRotation, filter: schemas.SubjectRotateAll,
		started: func() { w.started.Store(true) },
		ackWait: w.cfg.AckWait, maxAckPending: 20000, batch: 512,
	}, log, w.enqueue)

	// Stop taking work: what waits is handed back now, not after the
	// in-flight rotations; then wait for those up to the deadline.
	close(w.stopped)
	w.mu.Lock()
	w.stopping = true
	var waiting []jetstream.Msg
	for _, q := range w.queues {
		waiting = append(waiting, q...)
	}
	clear(w.queues)
	w.mu.Unlock()
	for _, m := range waiting {
		w.finishMsg(m, handBack)
	}
	drainWork(&w.wg, w.cfg.ShutdownTimeout, cancelWork, log)
	w.handBackHeld()
	return err
}

// enqueue adds a message to its secret's queue and starts a drain for the
// secret if none runs.
func (w *RotationWorker) enqueue(msg jetstream.Msg) {
	key := strings.TrimPrefix(msg.Subject(), "rekey.rotate.")
	w.held.add(msg)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.queues[key] = append(w.queues[key], msg)
	if !w.busy[key] {
		w.busy[key] = true
		w.wg.Add(1)
		go w.drain(key)
	}
}

// drain handles a secret's queue batch by batch until it is empty.
func (w *RotationWorker) drain(key string) {
	defer w.wg.Done()
	for {
		w.mu.Lock()
		batch := w.queues[key]
		delete(w.queues, key)
		if len(batch) == 0 || w.stopping {
			if len(batch) > 0 {
				w.queues[key] = batch // handed back by Run after the wait
			}
			delete(w.busy, key)
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		w.process(w.workCtx, batch)
	}
}

// requeue puts requests back at the front of their secret's queue.
func (w *RotationWorker) requeue(reqs []request) {
	if len(reqs) == 0 {
		return
	}
	key := strings.TrimPrefix(reqs[0].msg.Subject(), "rekey.rotate.")
	msgs := make([]jetstream.Msg, 0, len(reqs))
	for _, r := range reqs {
		msgs = append(msgs, r.msg)
	}
	w.mu.Lock()
	w.queues[key] = append(msgs, w.queues[key]...)
	w.mu.Unlock()
}

// request is a decoded rotation request.
type request struct {
	msg      jetstream.Msg
	id       string
	seq      uint64
	delivery uint64
	data     schemas.RotationRequested
}

// process handles one batch of requests for one secret.
func (w *RotationWorker) process(ctx context.Context, batch []jetstream.Msg) {
	var reqs []request
	for _, msg := range batch {
		req, err := w.decode(msg)
		if err != nil {
			w.refuse(ctx, msg, err)
			continue
		}
		reqs = append(reqs, req)
	}
	if len(reqs) == 0 {
		return
	}
	t, s := reqs[0].data.Tenant, reqs[0].data.Secret
	st, err := w.d.State.SecretStatus(ctx, t, s)
	if err != nil {
		w.d.Log.Warn("status unavailable; requests will be retried", "component", "rotation-worker", "tenant", t, "secret", s, "error", err)
		w.finish(reqs, func(m jetstream.Msg) error { return m.NakWithDelay(time.Second) })
		return
	}
	// A promoted rotation whose announcement was lost (crash, failed
	// publish) is announced now, before its requests are acked.
	if !st.Announced && st.LastRequestID != "" {
		if err := w.rotator.Reannounce(ctx, st); err != nil {
			if !errors.Is(err, ErrBusy) { // busy: the replica that rotated is announcing
				w.d.Log.Warn("announcement failed; requests will be retried", "component", "rotation-worker", "tenant", t, "secret", s, "error", err)
			}
			w.finish(reqs, func(m jetstream.Msg) error { return m.NakWithDelay(time.Second) })
			return
		}
	}
	// Requests made before the last completed rotation started are done.
	var pending []request
	for _, r := range reqs {
		if r.seq <= st.CoveredSeq && r.id == st.LastRequestID {
			// Its own rotation completed (and is now announced).
			w.finish([]request{r}, func(m jetstream.Msg) error { return m.Ack() })
			continue
		}
		if r.seq <= st.CoveredSeq {
			w.coalesced(ctx, r, st.LastRequestID)
			w.finish([]request{r}, func(m jetstream.Msg) error { return m.Ack() })
			continue
		}
		pending = append(pending, r)
	}
	if len(pending) == 0 {
		return
	}
	// Sync requests (the backend changed outside rekey) are recorded at
	// once, unless a rotation is about to make a newer version anyway.
	var rotates, syncs []request
	for _, r := range pending {
		if r.data.Mode == schemas.RotateModeSync {
			syncs = append(syncs, r)
		} else {
			rotates = append(rotates, r)
		}
	}
	if len(rotates) == 0 {
		w.sync(ctx, syncs)
		return
	}
	pending = append(rotates, syncs...)
	// Too soon after the last rotation started: wait out the interval, then
	// take this batch together with whatever arrived meanwhile.
	// A stop ends the wait: these requests have not started, and are
	// handed back at once.
	if wait := time.Until(st.LastStartedAt.Add(w.minInterval)); wait > 0 && !st.LastStartedAt.IsZero() {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-w.stopped:
			w.finish(pending, handBack)
			return
		case <-ctx.Done():
			return // held; handed back by Run
		}
		w.requeue(pending)
		return
	}
	w.runBatch(ctx, "rotate", pending, func(ctx context.Context, job Job) (string, error) {
		_, err := w.rotator.Rotate(ctx, job)
		return "rotated", err
	}, func(ctx context.Context, job Job, err error, delivery uint64) {
		w.rotator.failed(ctx, job, "", "deliver", err, int(delivery))
	})
}

// sync records the backend's live version for a batch of sync requests of
// one secret (see Rotator.Sync).
func (w *RotationWorker) sync(ctx context.Context, reqs []request) {
	w.runBatch(ctx, "sync", reqs, func(ctx context.Context, job Job) (string, error) {
		_, changed, err := w.rotator.Sync(ctx, job)
		if !changed {
			return "unchanged", err
		}
		return "synced", err
	}, func(_ context.Context, job Job, err error, _ uint64) {
		w.d.Log.Warn("sync request failed", "component", "rotation-worker", "tenant", job.Tenant, "secret", job.Secret, "request_id", job.RequestID, "error", err)
	})
}

// runBatch runs fn once for a batch of one secret's requests: the first is
// the primary, the others are coalesced into it. It acks them when fn
// succeeds, looks again shortly when another replica holds the secret,
// terminates them on a permanent failure or after MaxDeliver deliveries
// (giveUp records that), and otherwise returns them with backoff.
func (w *RotationWorker) runBatch(ctx context.Context, kind string, reqs []request,
	fn func(context.Context, Job) (outcome string, err error), giveUp func(context.Context, Job, error, uint64)) {
	primary := reqs[0]
	job := Job{
		Tenant: primary.data.Tenant, Secret: primary.data.Secret, RequestID: primary.id,
		Reason: primary.data.Reason, Trigger: primary.data.Trigger, Delivery: primary.delivery,
	}
	for _, r := range reqs[1:] {
		job.Coalesced = append(job.Coalesced, r.id)
	}
	select {
	case w.sem <- struct{}{}:
	case <-ctx.Done():
		return // held; naked by Run
	}
	outcome, err := fn(ctx, job)
	<-w.sem

	switch {
	case err == nil:
		for _, r := range reqs[1:] {
			w.coalesced(ctx, r, primary.id)
		}
		w.d.Metrics.RequestsTotal.WithLabelValues(kind, outcome).Inc()
		w.clearFailures(ctx, primary)
		w.finish(reqs, func(m jetstream.Msg) error { return m.Ack() })
	case errors.Is(err, ErrBusy):
		// Another replica works on this secret; look again shortly.
		w.finish(reqs, func(m jetstream.Msg) error { return m.NakWithDelay(500 * time.Millisecond) })
	case errors.Is(err, ErrPermanent):
		w.d.Metrics.RequestsTotal.WithLabelValues(kind, "failed").Add(float64(len(reqs)))
		w.clearFailures(ctx, primary)
		w.finish(reqs, func(m jetstream.Msg) error { return m.TermWithReason(truncateReason(err.Error())) })
	case ctx.Err() != nil:
		// Interrupted by a stop past its deadline: not a failure; the next
		// process (or another replica) takes it at once.
		w.finish(reqs, handBack)
	default:
		// A transient failure (the backend unreachable): counted, and
		// given up after MaxDeliver of them.
		n := w.failures.Add(ctx, primary.id, int(primary.delivery))
		if n >= w.cfg.MaxDeliver {
			giveUp(ctx, job, err, uint64(n))
			w.d.Metrics.RequestsTotal.WithLabelValues(kind, "failed").Add(float64(len(reqs)))
			w.clearFailures(ctx, primary)
			w.finish(reqs, func(m jetstream.Msg) error { return m.TermWithReason("too many failures") })
			return
		}
		w.d.Log.Warn("rotation request failed; will retry", "component", "rotation-worker", "kind", kind, "tenant", job.Tenant, "secret", job.Secret, "request_id", job.RequestID, "failures", n, "error", err)
		w.finish(reqs, func(m jetstream.Msg) error {
			return m.NakWithDelay(retry.Backoff{Initial: time.Second, Max: 30 * time.Second, Jitter: 0.2}.Delay(n))
		})
	}
}

// clearFailures forgets the failure count of a request that ended. A
// request delivered once cannot have one (a failure is always followed by
// a redelivery), so that costs nothing in the common case.
func (w *RotationWorker) clearFailures(ctx context.Context, r request) {
	if r.delivery > 1 {
		w.failures.Clear(ctx, r.id)
	}
}

func (w *RotationWorker) decode(msg jetstream.Msg) (request, error) {
	md, err := msg.Metadata()
	if err != nil {
		return request{}, fmt.Errorf("metadata: %w", err)
	}
	ev, err := schemas.Decode(msg.Data())
	if err != nil {
		return request{}, err
	}
	var data schemas.RotationRequested
	if err := ev.DecodeData(schemas.TypeRotationRequested, &data); err != nil {
		return request{}, err
	}
	if msg.Subject() != schemas.RotateSubject(data.Tenant, data.Secret) || ev.Tenant != data.Tenant {
		return request{}, fmt.Errorf("request for %s/%s arrived on %s: %w", data.Tenant, data.Secret, msg.Subject(), schemas.ErrMalformed)
	}
	if _, ok := w.d.Catalog.Ref(data.Tenant, data.Secret); !ok {
		return request{}, fmt.Errorf("secret %s/%s is not configured: %w", data.Tenant, data.Secret, ErrNotFound)
	}
	return request{msg: msg, id: ev.ID, seq: md.Sequence.Stream, delivery: md.NumDelivered, data: data}, nil
}

// refuse terminates a request that can never succeed and audits it.
func (w *RotationWorker) refuse(ctx context.Context, msg jetstream.Msg, cause error) {
	w.d.Log.Warn("rotation request refused", "component", "rotation-worker", "subject", msg.Subject(), "error", cause)
	w.d.Metrics.RequestsTotal.WithLabelValues("rotate", "refused").Inc()
	parts := strings.Split(msg.Subject(), ".")
	if len(parts) == 4 && schemas.ValidateID("tenant", parts[2]) == nil {
		_ = w.d.Audit.Record(ctx, schemas.AuditRecord{
			Tenant: parts[2], Actor: "nats:" + msg.Subject(), Action: "rotation.request", Outcome: schemas.OutcomeRefused,
			Component: "rotation-worker", Detail: map[string]string{"error": cause.Error()},
		})
	}
	w.finishMsg(msg, func(m jetstream.Msg) error { return m.TermWithReason(truncateReason(cause.Error())) })
}

func (w *RotationWorker) coalesced(ctx context.Context, r request, by string) {
	w.d.Metrics.RequestsTotal.WithLabelValues("rotate", "coalesced").Inc()
	actor := r.data.Trigger.Kind
	if r.data.Trigger.Actor != "" {
		actor += ":" + r.data.Trigger.Actor
	}
	_ = w.d.Audit.Record(ctx, schemas.AuditRecord{
		Tenant: r.data.Tenant, Secret: r.data.Secret, Actor: actor, Action: "rotation.request",
		Outcome: schemas.OutcomeCoalesced, RequestID: r.id, Component: "rotation-worker",
		Detail: map[string]string{"satisfied_by": by},
	})
}

func (w *RotationWorker) finish(reqs []request, fn func(jetstream.Msg) error) {
	for _, r := range reqs {
		w.finishMsg(r.msg, fn)
	}
}

func (w *RotationWorker) finishMsg(msg jetstream.Msg, fn func(jetstream.Msg) error) {
	if err := fn(msg); err != nil {
		w.d.Log.Warn("ack failed; the request will be redelivered", "component", "rotation-worker", "subject", msg.Subject(), "error", err)
	}
	w.held.remove(msg)
}

// handBackHeld returns every message not handled to the stream at once.
func (w *RotationWorker) handBackHeld() {
	w.mu.Lock()
	clear(w.queues)
	w.mu.Unlock()
	for _, m := range w.held.take() {
		_ = handBack(m)
	}
}

// Provision creates the first version of secrets whose backend can, and
// records the current version in the status of every secret. rekeyd calls
// it before it reports ready, so that agents find every secret.
func (w *RotationWorker) Provision(ctx context.Context) error {
	for _, t := range w.d.Catalog.Tenants() {
		for _, s := range w.d.Catalog.Secrets(t) {
			ref, b, err := w.d.Catalog.Lookup(t, s)
			if err != nil {
				return err
			}
			var v Version
			if p, ok := b.(Provisioner); ok {
				v, _, err = p.Ensure(ctx, ref)
			} else {
				v, err = b.Current(ctx, ref)
			}
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return fmt.Errorf("provision %s: %w", ref, err)
			}
			if _, err := w.d.State.UpdateSecretStatus(ctx, t, s, func(st *orchestrator.SecretStatus) error {
				st.Backend = b.Name()
				if st.State == "" || st.State == orchestrator.SecretRotating {
					st.State = orchestrator.SecretIdle
				}
				st.Version = v.ID
				return nil
			}); err != nil {
				return fmt.Errorf("provision %s: %w", ref, err)
			}
		}
	}
	return nil
}

func truncateReason(s string) string {
	if len(s) > 200 {
		return s[:200]
	}
	return s
}

// Started reports whether the worker consumes (for readiness).
func (w *RotationWorker) Started() bool { return w.started.Load() }
