package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Deps are what the workers share.
type Deps struct {
	orchestrator.Deps
	State   *orchestrator.State
	Catalog *Catalog
	// Owner identifies this process in locks (hostname-pid-random).
	Owner string
	// Source is the CloudEvents source of events this process publishes.
	Source string
	// StepHook, when set, runs after each successful saga step; an error
	// it returns fails the step. For fault-injection tests.
	StepHook func(ctx context.Context, step string) error
}

// Job is one rotation to run.
type Job struct {
	Tenant, Secret string
	RequestID      string
	Coalesced      []string
	Reason         string
	Trigger        schemas.Trigger
	// Delivery is the JetStream delivery count of the request (1 for the
	// first), used to make backend tokens unique across redeliveries.
	Delivery uint64
}

// Rotator runs the rotation saga for one secret at a time under a lock.
// Both workers use it.
type Rotator struct {
	d   Deps
	cfg orchestrator.RotationConfig
}

// NewRotator returns a Rotator.
func NewRotator(d Deps, cfg orchestrator.RotationConfig) *Rotator {
	return &Rotator{d: d, cfg: cfg}
}

// Rotate runs one rotation. It returns ErrBusy when another rotation of the
// secret holds the lock, an error wrapping ErrPermanent when the rotation
// failed for good (a rotation.failed event was written and nothing was
// promoted), or another error when it was interrupted (ctx) and should be
// retried later.
func (r *Rotator) Rotate(ctx context.Context, job Job) (schemas.RotationCompleted, error) {
	ref, backend, err := r.d.Catalog.Lookup(job.Tenant, job.Secret)
	if err != nil {
		return schemas.RotationCompleted{}, fmt.Errorf("rotate %s/%s: %w: %w", job.Tenant, job.Secret, err, ErrPermanent)
	}
	log := r.d.Log.With("component", "rotator", "tenant", job.Tenant, "secret", job.Secret, "request_id", job.RequestID)
	ctx, release, err := r.lock(ctx, ref, log)
	if err != nil {
		return schemas.RotationCompleted{}, err
	}
	defer release()

	// Every request already in the stream now was made before this
	// rotation started, so this rotation satisfies it.
	covered, err := r.streamLastSeq(ctx)
	if err != nil {
		return schemas.RotationCompleted{}, fmt.Errorf("rotate %s: %w", ref, err)
	}
	started := time.Now().UTC()
	prev, err := r.d.State.UpdateSecretStatus(ctx, job.Tenant, job.Secret, func(st *orchestrator.SecretStatus) error {
		st.Backend = backend.Name()
		st.State = orchestrator.SecretRotating
		st.InFlightSeq = covered
		return nil
	})
	if err != nil {
		return schemas.RotationCompleted{}, fmt.Errorf("rotate %s: %w", ref, err)
	}

	// We hold the lock: anything staged is a leftover of a crashed rotation.
	if err := r.cleanLeftovers(ctx, ref, backend, job, log); err != nil {
		return schemas.RotationCompleted{}, r.interrupted(ctx, job, err)
	}

	// The steps' audit records are published as they happen and waited
	// for together: before the completion is recorded, and on every way out.
	steps := r.d.Audit.Pipeline()
	defer func() { _ = steps.Wait(context.WithoutCancel(ctx)) }()
	var lastErr error
	var lastStep string
	attempt := 0
	for attempt = 1; attempt <= r.cfg.MaxAttempts; attempt++ {
		token := fmt.Sprintf("%s-%d-%d", job.RequestID, max(job.Delivery, 1), attempt)
		v, step, err := r.saga(ctx, ref, backend, token, job, steps, log)
		if err == nil {
			_ = steps.Wait(context.WithoutCancel(ctx)) // logged by the auditor
			done := schemas.RotationCompleted{
				Tenant: job.Tenant, Secret: job.Secret, Backend: backend.Name(),
				Version: v.ID, PreviousVersion: prev.Version, RequestID: job.RequestID,
				Coalesced: job.Coalesced, Reason: job.Reason, Trigger: job.Trigger,
				Attempts: attempt, StartedAt: started, CompletedAt: time.Now().UTC(),
			}
			if err := r.completed(ctx, done, covered); err != nil {
				return done, err
			}
			log.Info("rotation completed", "version", v.ID, "attempts", attempt, "duration", done.CompletedAt.Sub(started))
			return done, nil
		}
		lastErr, lastStep = err, step
		if ctx.Err() != nil {
			return schemas.RotationCompleted{}, r.interrupted(ctx, job, fmt.Errorf("rotate %s: %w", ref, err))
		}
		if errors.Is(err, ErrPermanent) {
			break
		}
		r.audit(ctx, job, "rotation."+step, schemas.OutcomeRetrying, map[string]string{"attempt": fmt.Sprint(attempt), "error": err.Error()})
		if attempt < r.cfg.MaxAttempts {
			log.Warn("rotation attempt failed; retrying", "step", step, "attempt", attempt, "error", err)
			if !retry.Sleep(ctx, retry.Backoff{Initial: r.cfg.BackoffInitial, Max: r.cfg.BackoffMax, Jitter: 0.2}.Delay(attempt)) {
				return schemas.RotationCompleted{}, r.interrupted(ctx, job, fmt.Errorf("rotate %s: %w", ref, lastErr))
			}
		}
	}
	attempt = min(attempt, r.cfg.MaxAttempts)
	if IsUnavailable(lastErr) && !errors.Is(lastErr, ErrPermanent) {
		// Unreachable, not refused: nothing is promoted; the request is
		// redelivered with backoff and tried again when the backend is back.
		r.audit(ctx, job, "rotation", schemas.OutcomeRetrying, map[string]string{
			"step": lastStep, "attempts": fmt.Sprint(attempt), "error": lastErr.Error(), "unavailable": "true",
		})
		return schemas.RotationCompleted{}, r.interrupted(ctx, job, fmt.Errorf("rotate %s: backend unavailable after %d attempts at step %s: %w", ref, attempt, lastStep, lastErr))
	}
	r.failed(ctx, job, backend.Name(), lastStep, lastErr, attempt)
	return schemas.RotationCompleted{}, fmt.Errorf("rotate %s: gave up after %d attempts at step %s: %w: %w", ref, attempt, lastStep, lastErr, ErrPermanent)
}

// lock takes the secret's rotation lock (ErrBusy when another rotation
// holds it) and keeps it refreshed until release is called. The returned
// context is cancelled when the lock is lost (its revision changed, or it
// could not be refreshed for two thirds of its TTL, after which another
// replica may take it): the rotation must stop before it can promote.
func (r *Rotator) lock(ctx context.Context, ref SecretRef, log *slog.Logger) (held context.Context, release func(), err error) {
	lock, err := r.d.State.Lock(ctx, "rotate."+ref.Tenant+"."+ref.Secret, r.d.Owner)
	if errors.Is(err, orchestrator.ErrLocked) {
		return nil, nil, fmt.Errorf("rotate %s: %w", ref, ErrBusy)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("rotate %s: %w", ref, err)
	}
	held, lost := context.WithCancelCause(ctx)
	lockCtx, stopRefresh := context.WithCancel(context.WithoutCancel(ctx))
	refreshed := make(chan struct{})
	go func() {
		defer close(refreshed)
		t := time.NewTicker(r.cfg.LockTTL / 3)
		defer t.Stop()
		lastOK := time.Now()
		for {
			select {
			case <-lockCtx.Done():
				return
			case <-t.C:
				err := lock.Refresh(lockCtx)
				if err == nil {
					lastOK = time.Now()
					continue
				}
				if orchestrator.IsConflict(err) || time.Since(lastOK) >= r.cfg.LockTTL*2/3 {
					log.Error("rotation lock lost; stopping this rotation before it can promote", "error", err)
					lost(fmt.Errorf("rotation lock of %s lost: %w", ref, err))
					return
				}
				log.Warn("rotation lock refresh failed; retrying", "error", err)
			}
		}
	}()
	return held, func() {
		stopRefresh()
		<-refreshed
		lost(nil)
		relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := lock.Release(relCtx); err != nil {
			log.Warn("rotation lock not released; it will expire", "error", err)
		}
	}, nil
}

// Sync records a version the backend got outside rekey (mode sync: AWS
// rotated the secret itself, someone wrote it directly): under the
// secret's lock it reads the backend's live version and, when it differs
// from the recorded one, records and announces it like a completed
// rotation, so fanout invalidates every agent. It writes nothing to the
// backend. changed is false when the live version was already recorded.
// A sync never satisfies rotation requests (it did not start after them).
func (r *Rotator) Sync(ctx context.Context, job Job) (done schemas.RotationCompleted, changed bool, err error) {
	ref, backend, err := r.d.Catalog.Lookup(job.Tenant, job.Secret)
	if err != nil {
		return done, false, fmt.Errorf("sync %s/%s: %w: %w", job.Tenant, job.Secret, err, ErrPermanent)
	}
	log := r.d.Log.With("component", "rotator", "tenant", job.Tenant, "secret", job.Secret, "request_id", job.RequestID)
	ctx, release, err := r.lock(ctx, ref, log)
	if err != nil {
		return done, false, err
	}
	defer release()

	started := time.Now().UTC()
	cur, err := backend.Current(ctx, ref)
	if err != nil {
		r.audit(ctx, job, "rotation.sync", schemas.OutcomeFailed, map[string]string{"error": err.Error()})
		if errors.Is(err, ErrNotFound) {
			return done, false, fmt.Errorf("sync %s: %w: %w", ref, err, ErrPermanent)
		}
		return done, false, fmt.Errorf("sync %s: %w", ref, err)
	}
	st, err := r.d.State.SecretStatus(ctx, job.Tenant, job.Secret)
	if err != nil {
		return done, false, fmt.Errorf("sync %s: %w", ref, err)
	}
	if st.Version == cur.ID {
		r.audit(ctx, job, "rotation.sync", schemas.OutcomeCoalesced, map[string]string{"version": cur.ID, "unchanged": "true"})
		return done, false, nil
	}
	done = schemas.RotationCompleted{
		Tenant: job.Tenant, Secret: job.Secret, Backend: backend.Name(),
		Version: cur.ID, PreviousVersion: st.Version, RequestID: job.RequestID,
		Coalesced: job.Coalesced, Reason: job.Reason, Trigger: job.Trigger, Mode: schemas.RotateModeSync,
		Attempts: 1, StartedAt: started, CompletedAt: time.Now().UTC(),
	}
	// covered 0: the recorded coverage stays what rekey's own rotations set.
	if err := r.completed(ctx, done, 0); err != nil {
		return done, true, err
	}
	log.Info("recorded a version made outside rekey", "version", cur.ID, "previous_version", st.Version)
	return done, true, nil
}

// saga runs create -> set -> test -> finish once, rolling back on failure
// before finish. It returns the step that failed.
func (r *Rotator) saga(ctx context.Context, ref SecretRef, b Backend, token string, job Job, steps *orchestrator.Pipeline, log *slog.Logger) (Version, string, error) {
	var v Version
	err := r.step(ctx, job, steps, b, ref, StepCreate, "", func(ctx context.Context) error {
		var err error
		v, err = b.Create(ctx, ref, token)
		return err
	})
	if err != nil {
		return Version{}, StepCreate, err
	}
	for _, s := range []struct {
		name string
		fn   func(context.Context, SecretRef, Version) error
	}{{StepSet, b.Set}, {StepTest, b.Test}} {
		if err := r.step(ctx, job, steps, b, ref, s.name, v.ID, func(ctx context.Context) error { return s.fn(ctx, ref, v) }); err != nil {
			r.rollback(ctx, ref, b, v, job, log)
			return Version{}, s.name, err
		}
	}
	err = r.step(ctx, job, steps, b, ref, StepFinish, v.ID, func(ctx context.Context) error { return b.Finish(ctx, ref, v) })
	if err != nil {
		// Finish may have promoted before failing (a lost reply): ask.
		cur, cerr := b.Current(context.WithoutCancel(ctx), ref)
		if cerr == nil && cur.ID == v.ID {
			return v, "", nil
		}
		r.rollback(ctx, ref, b, v, job, log)
		return Version{}, StepFinish, err
	}
	return v, "", nil
}

// step runs one saga step with the step timeout and audits its outcome
// through steps.
func (r *Rotator) step(ctx context.Context, job Job, steps *orchestrator.Pipeline, b Backend, ref SecretRef, name, version string, fn func(context.Context) error) error {
	timeout := r.cfg.StepTimeout
	if st, ok := b.(StepTimeouts); ok {
		if d, ok := st.StepTimeout(ref, name); ok {
			timeout = max(timeout, d)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := fn(sctx)
	if err == nil && r.d.StepHook != nil {
		err = r.d.StepHook(sctx, name)
	}
	detail := map[string]string{"step": name}
	if version != "" {
		detail["version"] = version
	}
	if err != nil {
		detail["error"] = err.Error()
		_ = steps.Record(r.record(job, "rotation."+name, schemas.OutcomeFailed, detail))
		return fmt.Errorf("%s: %w", name, err)
	}
	_ = steps.Record(r.record(job, "rotation."+name, schemas.OutcomeSucceeded, detail))
	return nil
}

// rollback removes a staged version; it runs even when ctx has ended so
// that shutdown does not leave a half-made rotation behind.
func (r *Rotator) rollback(ctx context.Context, ref SecretRef, b Backend, v Version, job Job, log *slog.Logger) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.StepTimeout)
	defer cancel()
	detail := map[string]string{"version": v.ID}
	if err := b.Rollback(rctx, ref, v); err != nil {
		log.Error("rollback failed; the staged version will be removed by the next rotation", "version", v.ID, "error", err)
		detail["error"] = err.Error()
		r.audit(rctx, job, "rotation.rollback", schemas.OutcomeFailed, detail)
		return
	}
	r.audit(rctx, job, "rotation.rollback", schemas.OutcomeSucceeded, detail)
}

// cleanLeftovers rolls back versions staged by a rotation that crashed.
func (r *Rotator) cleanLeftovers(ctx context.Context, ref SecretRef, b Backend, job Job, log *slog.Logger) error {
	staged, err := b.Staged(ctx, ref)
	if err != nil {
		return fmt.Errorf("list staged versions of %s: %w", ref, err)
	}
	for _, v := range staged {
		log.Warn("rolling back a version left staged by an interrupted rotation", "version", v.ID)
		if err := b.Rollback(ctx, ref, v); err != nil {
			return fmt.Errorf("roll back leftover version %s of %s: %w", v.ID, ref, err)
		}
		r.audit(ctx, job, "rotation.rollback_leftover", schemas.OutcomeSucceeded, map[string]string{"version": v.ID})
	}
	return nil
}

// completed records a promoted version: status, event, audit, metrics.
func (r *Rotator) completed(ctx context.Context, done schemas.RotationCompleted, covered uint64) error {
	ctx = context.WithoutCancel(ctx)
	_, err := r.d.State.UpdateSecretStatus(ctx, done.Tenant, done.Secret, func(st *orchestrator.SecretStatus) error {
		st.Backend = done.Backend
		st.State = orchestrator.SecretIdle
		st.PreviousVersion = st.Version
		st.Version = done.Version
		st.Rotations++
		st.LastRequestID = done.RequestID
		st.LastReason = done.Reason
		st.LastTrigger = done.Trigger
		st.LastStartedAt = done.StartedAt
		st.LastCompletedAt = done.CompletedAt
		st.LastError = ""
		st.CoveredSeq = max(st.CoveredSeq, covered)
		st.InFlightSeq = 0
		st.LastAttempts = done.Attempts
		st.LastMode = done.Mode
		st.Announced = false
		return nil
	})
	if err != nil {
		// The version is promoted; the request will be redelivered and
		// coalesced or rotated again, which is safe.
		return fmt.Errorf("record rotation of %s/%s: %w", done.Tenant, done.Secret, err)
	}
	if err := r.announce(ctx, done, false); err != nil {
		return err
	}
	r.d.Metrics.RotationsTotal.WithLabelValues(done.Tenant, "succeeded").Inc()
	r.d.Metrics.RotationDuration.WithLabelValues(done.Backend).Observe(done.CompletedAt.Sub(done.StartedAt).Seconds())
	r.d.Metrics.RotationAttempts.Observe(float64(done.Attempts))
	return nil
}

// announce publishes a completed rotation's event (which makes fanout
// invalidate agents) and its audit record, with ids derived from the
// request so that doing it again after a crash adds no duplicate, then
// marks the status announced.
func (r *Rotator) announce(ctx context.Context, done schemas.RotationCompleted, recovered bool) error {
	ev, err := schemas.NewEvent(r.d.Source, schemas.TypeRotationCompleted, done.Tenant, done.Tenant+"/"+done.Secret, done)
	if err != nil {
		return err
	}
	ev = ev.WithID("done-" + done.RequestID + "-" + done.Version)
	// The event and its audit record are written together (both ids are
	// derived: written again after a crash, each is one).
	published := make(chan error, 1)
	go func() {
		_, err := r.d.Bus.Publish(ctx, schemas.EventsSubject(done.Tenant, schemas.KindRotationCompleted), ev)
		published <- err
	}()
	detail := map[string]string{
		"version": done.Version, "previous_version": done.PreviousVersion,
		"attempts": fmt.Sprint(done.Attempts), "coalesced": fmt.Sprint(len(done.Coalesced)),
	}
	if done.Mode != "" {
		detail["mode"] = done.Mode
	}
	if recovered {
		detail["recovered"] = "true"
	}
	actor := done.Trigger.Kind
	if done.Trigger.Actor != "" {
		actor += ":" + done.Trigger.Actor
	}
	auditErr := r.d.Audit.RecordWithID(ctx, "audit-done-"+done.RequestID+"-"+done.Version, schemas.AuditRecord{
		Tenant: done.Tenant, Secret: done.Secret, Actor: actor, Action: "rotation.complete", Outcome: schemas.OutcomeSucceeded,
		RequestID: done.RequestID, Component: "rotator", Detail: detail,
	})
	if err := <-published; err != nil {
		return fmt.Errorf("publish completion of %s/%s: %w", done.Tenant, done.Secret, err)
	}
	if auditErr != nil {
		return auditErr
	}
	if _, err := r.d.State.UpdateSecretStatus(ctx, done.Tenant, done.Secret, func(st *orchestrator.SecretStatus) error {
		if st.LastRequestID == done.RequestID && st.Version == done.Version {
			st.Announced = true
		}
		return nil
	}); err != nil {
		return fmt.Errorf("record announcement of %s/%s: %w", done.Tenant, done.Secret, err)
	}
	return nil
}

// Reannounce writes the completion event and audit record of the last
// rotation recorded in st, when a crash (or a failed publish) came between
// the promotion being recorded and its announcement.
func (r *Rotator) Reannounce(ctx context.Context, st orchestrator.SecretStatus) error {
	if st.Announced || st.LastRequestID == "" || st.Version == "" {
		return nil
	}
	// Under the secret's lock: while another replica holds it, that
	// replica has just promoted and is announcing (ErrBusy: look again
	// soon); once we hold it, the status read again is final.
	_, release, err := r.lock(ctx, SecretRef{Tenant: st.Tenant, Secret: st.Secret, Backend: st.Backend}, r.d.Log)
	if err != nil {
		return err
	}
	defer release()
	if st, err = r.d.State.SecretStatus(ctx, st.Tenant, st.Secret); err != nil || st.Announced || st.LastRequestID == "" || st.Version == "" {
		return err
	}
	r.d.Log.Warn("announcing a rotation whose completion was not published (crash or publish failure)",
		"component", "rotator", "tenant", st.Tenant, "secret", st.Secret, "request_id", st.LastRequestID, "version", st.Version)
	return r.announce(context.WithoutCancel(ctx), schemas.RotationCompleted{
		Tenant: st.Tenant, Secret: st.Secret, Backend: st.Backend, Version: st.Version, PreviousVersion: st.PreviousVersion,
		RequestID: st.LastRequestID, Reason: st.LastReason, Trigger: st.LastTrigger, Mode: st.LastMode, Attempts: max(st.LastAttempts, 1),
		StartedAt: st.LastStartedAt, CompletedAt: st.LastCompletedAt,
	}, true)
}

// failed records a rotation given up for good.
func (r *Rotator) failed(ctx context.Context, job Job, backend, step string, cause error, attempts int) {
	ctx = context.WithoutCancel(ctx)
	msg := "unknown error"
	if cause != nil {
		msg = cause.Error()
	}
	now := time.Now().UTC()
	if _, err := r.d.State.UpdateSecretStatus(ctx, job.Tenant, job.Secret, func(st *orchestrator.SecretStatus) error {
		st.State = orchestrator.SecretFailed
		st.LastError = msg
		st.LastFailedAt = now
		st.InFlightSeq = 0
		return nil
	}); err != nil {
		r.d.Log.Error("status not updated after failed rotation", "component", "rotator", "tenant", job.Tenant, "secret", job.Secret, "request_id", job.RequestID, "error", err)
	}
	ev := schemas.RotationFailed{
		Tenant: job.Tenant, Secret: job.Secret, Backend: backend, RequestID: job.RequestID,
		Step: step, Error: msg, Permanent: errors.Is(cause, ErrPermanent), Attempts: attempts,
		Trigger: job.Trigger, FailedAt: now,
	}
	if _, err := r.d.Bus.PublishEvent(ctx, schemas.EventsSubject(job.Tenant, schemas.KindRotationFailed), r.d.Source,
		schemas.TypeRotationFailed, job.Tenant, job.Tenant+"/"+job.Secret, ev); err != nil {
		r.d.Log.Error("rotation.failed event not published", "component", "rotator", "tenant", job.Tenant, "secret", job.Secret, "request_id", job.RequestID, "error", err)
	}
	r.audit(ctx, job, "rotation", schemas.OutcomeFailed, map[string]string{"step": step, "error": msg, "attempts": fmt.Sprint(attempts)})
	r.d.Metrics.RotationsTotal.WithLabelValues(job.Tenant, "failed").Inc()
	r.d.Log.Error("rotation failed", "component", "rotator", "tenant", job.Tenant, "secret", job.Secret, "request_id", job.RequestID, "step", step, "attempts", attempts, "error", cause)
}

// interrupted marks the status idle again after ctx ended mid-rotation;
// the request stays unacknowledged and will be redelivered.
func (r *Rotator) interrupted(ctx context.Context, job Job, cause error) error {
	_, _ = r.d.State.UpdateSecretStatus(context.WithoutCancel(ctx), job.Tenant, job.Secret, func(st *orchestrator.SecretStatus) error {
		st.State = orchestrator.SecretIdle
		st.InFlightSeq = 0
		return nil
	})
	return cause
}

func (r *Rotator) audit(ctx context.Context, job Job, action, outcome string, detail map[string]string) {
	_ = r.d.Audit.Record(context.WithoutCancel(ctx), r.record(job, action, outcome, detail))
}

// record is the audit record of one thing the rotator did for job.
func (r *Rotator) record(job Job, action, outcome string, detail map[string]string) schemas.AuditRecord {
	actor := job.Trigger.Kind
	if job.Trigger.Actor != "" {
		actor += ":" + job.Trigger.Actor
	}
	return schemas.AuditRecord{
		Tenant: job.Tenant, Secret: job.Secret, Actor: actor, Action: action, Outcome: outcome,
		RequestID: job.RequestID, Component: "rotator", Detail: detail,
	}
}

func (r *Rotator) streamLastSeq(ctx context.Context) (uint64, error) {
	// Looking the stream up reads its info: one round trip.
	s, err := r.d.Bus.JS.Stream(ctx, schemas.StreamRotate)
	if err != nil {
		return 0, fmt.Errorf("stream %s info: %w", schemas.StreamRotate, err)
	}
	return s.CachedInfo().State.LastSeq, nil
}
