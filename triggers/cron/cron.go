// Package cron is the schedule trigger: it requests a rotation of every
// secret that has a policy.schedule when the schedule fires.
//
// Several rekeyd replicas may run it at once. Each scheduled tick fires
// once: the request id is derived from the secret and the tick (RequestID),
// and the jitter from a hash of both (Jitter), so every replica publishes
// the same request at the same time and JetStream drops the duplicates.
// The last tick handled per secret is kept in the "rekey_cron" KV bucket
// (compare-and-set): ticks missed while rekey was down are caught up once
// at start, with the id of the latest missed tick, not once per tick.
package cron

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Bucket is the KV bucket holding each scheduled secret's last tick.
const Bucket = "rekey_cron"

// EventSource is the CloudEvents source of the requests published.
const EventSource = "rekeyd/cron"

// Config is the triggers.cron section of rekey.yaml.
type Config struct {
	// Enabled runs the trigger (default true).
	Enabled bool `yaml:"enabled"`
	// CatchUp fires once at start for ticks missed while rekey was down
	// (default true). When false they are skipped.
	CatchUp bool `yaml:"catch_up"`
	// MaxCatchUpAge skips the catch-up when the latest missed tick is
	// older than this; 0 catches up whatever its age.
	MaxCatchUpAge time.Duration `yaml:"max_catch_up_age"`
}

// Defaults returns the configuration of an empty section.
func Defaults() Config { return Config{Enabled: true, CatchUp: true} }

// Validate checks the fields; errors name the field within the section.
func (c *Config) Validate() error {
	if c.MaxCatchUpAge < 0 {
		return orchestrator.FieldErrorf("max_catch_up_age", "%s must not be negative", c.MaxCatchUpAge)
	}
	return nil
}

// ParseConfig decodes the triggers.cron section over the defaults.
func ParseConfig(raw []byte) (Config, error) {
	cfg := Defaults()
	if s := strings.TrimSpace(string(raw)); s == "null" || s == "~" {
		raw = nil // a section with nothing under it
	}
	if err := orchestrator.DecodeSection("triggers.cron", raw, &cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Trigger fires the schedules of every secret that has one.
type Trigger struct {
	// Now returns the current time (default time.Now). Tests may set it
	// before Run to move the clock; waits still take real time.
	Now func() time.Time

	cfg     Config
	bus     *orchestrator.Bus
	audit   *orchestrator.Auditor
	metrics *orchestrator.Metrics
	log     *slog.Logger
	jobs    []*job
}

// job is one scheduled secret.
type job struct {
	tenant, secret string
	sched          *Schedule
	timezone       string
	jitter         time.Duration
}

func (j *job) jitterOf(tick time.Time) time.Duration {
	return Jitter(j.tenant, j.secret, tick, j.jitter)
}

// New checks every secret's schedule (errors name the field, e.g.
// tenants.acme.secrets.db.policy.schedule) and returns the trigger.
func New(cfg Config, deps orchestrator.Deps) (*Trigger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("triggers.cron: %w", err)
	}
	if err := deps.Check("cron", "rekey", "bus", "audit"); err != nil {
		return nil, err
	}
	rekey := deps.Rekey
	if err := ValidateSchedules(rekey); err != nil {
		return nil, err
	}
	t := &Trigger{Now: time.Now, cfg: cfg, bus: deps.Bus, audit: deps.Audit, metrics: deps.Metrics, log: deps.Log.With("component", "cron")}
	for _, tn := range rekey.TenantNames() {
		for _, s := range rekey.TenantSecrets(tn) {
			sc, _ := rekey.Secret(tn, s)
			if sc.Policy.Schedule == "" {
				continue
			}
			sched, _ := ParseSchedule(sc.Policy.Schedule, sc.Policy.TimeZone) // checked above
			j := &job{tenant: tn, secret: s, sched: sched, timezone: sc.Policy.TimeZone, jitter: sc.Policy.Jitter}
			if gap := sched.minGap(time.Now()); rekey.Rotation.MinInterval > 0 && gap < rekey.Rotation.MinInterval {
				t.log.Warn("schedule fires more often than rotation.min_interval; the rotation worker will coalesce its requests",
					"tenant", tn, "secret", s, "schedule", sched.String(), "min_interval", rekey.Rotation.MinInterval)
			}
			t.jobs = append(t.jobs, j)
		}
	}
	return t, nil
}

// Run fires the schedules until ctx ends, then returns nil. It fails only
// if the state bucket cannot be opened; later NATS errors are logged and
// retried.
func (t *Trigger) Run(ctx context.Context) error {
	if !t.cfg.Enabled {
		t.log.Info("cron trigger disabled")
		return nil
	}
	if len(t.jobs) == 0 {
		t.log.Debug("no secret has a schedule")
		return nil
	}
	kv, err := t.bus.KV(ctx, Bucket, 0)
	if err != nil {
		return t.setupFailed(ctx, err)
	}
	t.log.Info("cron trigger started", "schedules", len(t.jobs))
	var wg sync.WaitGroup
	for _, j := range t.jobs {
		wg.Go(func() { t.runJob(ctx, kv, j) })
	}
	wg.Wait()
	return nil
}

// maxSleep bounds one wait, so that a suspended machine or a clock step
// is noticed within it.
const maxSleep = time.Minute

// runJob fires one secret's schedule until ctx ends.
func (t *Trigger) runJob(ctx context.Context, kv jetstream.KeyValue, j *job) {
	log := t.log.With("tenant", j.tenant, "secret", j.secret, "schedule", j.sched.String())
	failures := 0 // in a row, for the retry delay
	var through time.Time
	for {
		var err error
		if through, err = t.start(ctx, kv, j); err == nil {
			break
		}
		log.Warn("read schedule state; retrying", "error", err)
		failures++
		if !retry.Sleep(ctx, retry.Outage.Delay(failures)) {
			return
		}
	}
	failures = 0
	startup := true // ticks due now were missed while rekey was down
	for ctx.Err() == nil {
		now := t.now()
		tick, missed, ok := j.sched.due(through, now, j.jitterOf)
		if ok {
			next, err := t.handle(ctx, kv, j, tick, missed, startup, log)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				log.Warn("scheduled rotation not requested; retrying", "tick", tick.UTC().Format(time.RFC3339), "error", err)
				failures++
				if !retry.Sleep(ctx, retry.Outage.Delay(failures)) {
					return
				}
				continue
			}
			failures = 0
			through, startup = next, false
			continue
		}
		startup = false
		next := j.sched.Next(through)
		if next.IsZero() {
			log.Warn("schedule has no tick in the next five years; stopping it")
			return
		}
		wait := next.Add(j.jitterOf(next)).Sub(now)
		if !retry.Sleep(ctx, min(max(wait, time.Millisecond), maxSleep)) {
			return
		}
	}
}

// handle fires (or, for a catch-up that is disabled or too old, skips) the
// due tick and returns the new "through" time.
func (t *Trigger) handle(ctx context.Context, kv jetstream.KeyValue, j *job, tick time.Time, missed int, catchUp bool, log *slog.Logger) (time.Time, error) {
	if catchUp {
		age := t.now().Sub(tick)
		skip := ""
		switch {
		case !t.cfg.CatchUp:
			skip = "catch_up is off"
		case t.cfg.MaxCatchUpAge > 0 && age > t.cfg.MaxCatchUpAge:
			skip = "older than max_catch_up_age"
		}
		if skip != "" {
			log.Info("missed scheduled rotation skipped", "tick", tick.UTC().Format(time.RFC3339), "missed", missed, "why", skip)
			return t.advance(ctx, kv, j, tick, false)
		}
	}
	return t.fire(ctx, kv, j, tick, missed, catchUp, log)
}

// fire publishes the rotation request of one tick, audits it, and records
// the tick as handled.
func (t *Trigger) fire(ctx context.Context, kv jetstream.KeyValue, j *job, tick time.Time, missed int, catchUp bool, log *slog.Logger) (time.Time, error) {
	st, _, err := load(ctx, kv, j)
	if err != nil {
		return time.Time{}, err
	}
	if !st.LastFired.Before(tick) {
		// Another replica already fired it (or a later tick).
		log.Debug("tick already fired by another replica", "tick", tick.UTC().Format(time.RFC3339))
		return latest(st.Through, tick), nil
	}
	id := RequestID(j.tenant, j.secret, tick)
	at := tick.UTC().Format(time.RFC3339)
	req := schemas.RotationRequested{
		Tenant: j.tenant, Secret: j.secret,
		Reason:      "scheduled rotation (" + j.sched.String() + ")",
		Trigger:     schemas.Trigger{Kind: schemas.TriggerCron, Source: "cron", Actor: j.sched.String() + "@" + at},
		RequestedAt: t.now().UTC(),
	}
	ev, err := schemas.NewEvent(EventSource, schemas.TypeRotationRequested, j.tenant, j.tenant+"/"+j.secret, req)
	if err != nil {
		return time.Time{}, err
	}
	ev = ev.WithID(id)
	ack, err := t.bus.Publish(ctx, schemas.RotateSubject(j.tenant, j.secret), ev)
	if err != nil {
		return time.Time{}, err
	}
	// Published: finish the bookkeeping even if ctx ends now.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	outcome, metric := schemas.OutcomeAccepted, "accepted"
	if ack.Duplicate {
		outcome, metric = schemas.OutcomeCoalesced, "duplicate"
	}
	t.metrics.RequestsTotal.WithLabelValues("cron", metric).Inc()
	detail := map[string]string{
		"schedule": j.sched.String(), "tick": at, "duplicate": strconv.FormatBool(ack.Duplicate),
		"catch_up": strconv.FormatBool(catchUp), "missed": strconv.Itoa(missed),
	}
	if j.timezone != "" {
		detail["timezone"] = j.timezone
	}
	if j.jitter > 0 {
		detail["jitter"] = j.jitterOf(tick).Round(time.Millisecond).String()
	}
	_ = t.audit.Record(ctx, schemas.AuditRecord{
		Tenant: j.tenant, Secret: j.secret, Actor: "cron:" + req.Trigger.Actor, Action: "rotation.request",
		Outcome: outcome, RequestID: id, Component: "cron", Detail: detail,
	})
	log.Info("scheduled rotation requested", "request_id", id, "tick", at, "duplicate", ack.Duplicate,
		"catch_up", catchUp, "missed", missed)
	through, err := t.advance(ctx, kv, j, tick, true)
	if err != nil {
		// Published: a retry would only be a duplicate. A restart may
		// catch this tick up again, with the same id.
		log.Warn("tick not recorded", "tick", at, "error", err)
		return tick, nil
	}
	return through, nil
}

func (t *Trigger) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// state is a scheduled secret's entry in the bucket (key <tenant>.<secret>).
type state struct {
	Schedule string `json:"schedule"`
	TimeZone string `json:"timezone,omitempty"`
	// Through: every tick at or before it was handled (fired or skipped).
	Through time.Time `json:"through"`
	// LastFired is the last tick a request was published for.
	LastFired     time.Time `json:"last_fired,omitzero"`
	LastRequestID string    `json:"last_request_id,omitempty"`
	UpdatedAt     time.Time `json:"updated_at"`
}

func key(j *job) string { return j.tenant + "." + j.secret }

func load(ctx context.Context, kv jetstream.KeyValue, j *job) (state, uint64, error) {
	e, err := kv.Get(ctx, key(j))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return state{}, 0, nil
	}
	if err != nil {
		return state{}, 0, fmt.Errorf("read %s: %w", key(j), err)
	}
	var st state
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		// Unreadable: start over as if new.
		return state{}, e.Revision(), nil
	}
	return st, e.Revision(), nil
}

// store writes st with compare-and-set; ok is false when another replica
// wrote first.
func store(ctx context.Context, kv jetstream.KeyValue, j *job, st state, rev uint64) (bool, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return false, fmt.Errorf("encode state: %w", err)
	}
	if rev == 0 {
		_, err = kv.Create(ctx, key(j), b)
	} else {
		_, err = kv.Update(ctx, key(j), b, rev)
	}
	if orchestrator.IsConflict(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("write %s: %w", key(j), err)
	}
	return true, nil
}

// start returns the time through which ticks were handled. A secret seen
// for the first time, or whose schedule changed, starts from now: there is
// nothing to catch up.
func (t *Trigger) start(ctx context.Context, kv jetstream.KeyValue, j *job) (time.Time, error) {
	for range 20 {
		st, rev, err := load(ctx, kv, j)
		if err != nil {
			return time.Time{}, err
		}
		if rev != 0 && st.Schedule == j.sched.String() && st.TimeZone == j.timezone && !st.Through.IsZero() {
			return st.Through, nil
		}
		now := t.now().UTC()
		if rev != 0 {
			t.log.Info("schedule changed; counting ticks from now", "tenant", j.tenant, "secret", j.secret,
				"old", st.Schedule, "new", j.sched.String())
		}
		st.Schedule, st.TimeZone, st.Through, st.UpdatedAt = j.sched.String(), j.timezone, now, now
		ok, err := store(ctx, kv, j, st, rev)
		if err != nil {
			return time.Time{}, err
		}
		if ok {
			return now, nil
		}
	}
	return time.Time{}, fmt.Errorf("write %s: too many concurrent updates", key(j))
}

// advance records tick as handled (and fired) unless a replica recorded a
// later one, and returns the stored "through" time.
func (t *Trigger) advance(ctx context.Context, kv jetstream.KeyValue, j *job, tick time.Time, fired bool) (time.Time, error) {
	for range 20 {
		st, rev, err := load(ctx, kv, j)
		if err != nil {
			return time.Time{}, err
		}
		if !st.Through.Before(tick) && (!fired || !st.LastFired.Before(tick)) {
			return st.Through, nil
		}
		st.Schedule, st.TimeZone = j.sched.String(), j.timezone
		st.Through = latest(st.Through, tick).UTC()
		if fired && st.LastFired.Before(tick) {
			st.LastFired, st.LastRequestID = tick.UTC(), RequestID(j.tenant, j.secret, tick)
		}
		st.UpdatedAt = t.now().UTC()
		ok, err := store(ctx, kv, j, st, rev)
		if err != nil {
			return time.Time{}, err
		}
		if ok {
			return st.Through, nil
		}
	}
	return time.Time{}, fmt.Errorf("write %s: too many concurrent updates", key(j))
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// setupFailed is Run's result when setting up failed: nil if that was
// because ctx ended.
func (t *Trigger) setupFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("cron: %w", err)
}
