// Package usage is the use-count trigger: it counts the uses agents report
// per tenant, secret and version, and requests one rotation of a secret
// when a version reaches its policy.max_uses.
//
// Agents (fanout/agent) publish batched UsageReport events on
// rekey.used.<t>.<s>.<instance> (stream REKEY_USAGE_<t>, one per tenant).
// Every replica reads a tenant's reports through the tenant's durable
// consumer ("usage-counter-<t>"), so each report goes to one of them, and
// one tenant's reports never wait behind another's. Before anything is
// counted, what the agent claims is bounded (admit.go). Counts live in the "rekey_usage" KV bucket (key <t>.<s>.<version>),
// updated with compare-and-set before the report is acked, so they survive
// restarts. A count entry remembers the stream sequences of the reports it
// holds that may still be redelivered, so a report whose ack was lost is
// not counted twice.
//
// The decision to rotate is stored in the same entry, by the one update
// that takes the count to max_uses, so a version is asked to rotate once,
// ever; the request id is derived from the version (RequestID), so even a
// repeated publish is dropped by JetStream.
package usage

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Names of the NATS resources the trigger uses.
const (
	Bucket      = "rekey_usage"
	Durable     = "usage-counter"
	EventSource = "rekeyd/usage"
)

// Config is the triggers.usage section of rekey.yaml.
type Config struct {
	// Enabled runs the trigger (default true).
	Enabled bool `yaml:"enabled"`
	// Concurrency is the number of reports counted at once by one
	// replica (default 4). Reports of one secret are counted in order.
	Concurrency int `yaml:"concurrency"`
	// AckWait is how long a report may stay unacked before JetStream
	// hands it to another replica (default 30s).
	AckWait time.Duration `yaml:"ack_wait"`
	// Retention is how long the count of a version no longer reported is
	// kept (default 720h); 0 keeps counts forever.
	Retention time.Duration `yaml:"retention"`
	// MaxUsesPerInstancePerMinute is the most uses one agent instance is
	// believed to make in a minute (default 60000): its reports are
	// counted up to that rate, with one minute's worth as burst, and the
	// rest refused.
	MaxUsesPerInstancePerMinute int64 `yaml:"max_uses_per_instance_per_minute"`
	// MaxInstancesPerTenant bounds the instances of one tenant reporting
	// at once (default 10000); reports of more are refused.
	MaxInstancesPerTenant int `yaml:"max_instances_per_tenant"`
}

// Defaults returns the configuration of an empty section.
func Defaults() Config {
	return Config{Enabled: true, Concurrency: 4, AckWait: 30 * time.Second, Retention: 30 * 24 * time.Hour,
		MaxUsesPerInstancePerMinute: 60000, MaxInstancesPerTenant: 10000}
}

// Validate checks the fields; errors name the field within the section.
func (c *Config) Validate() error {
	var errs []error
	if c.Concurrency < 1 || c.Concurrency > 64 {
		errs = append(errs, orchestrator.FieldErrorf("concurrency", "%d must be between 1 and 64", c.Concurrency))
	}
	if c.AckWait < time.Second || c.AckWait > 10*time.Minute {
		errs = append(errs, orchestrator.FieldErrorf("ack_wait", "%s must be between 1s and 10m", c.AckWait))
	}
	if c.Retention != 0 && c.Retention < time.Hour {
		errs = append(errs, orchestrator.FieldErrorf("retention", "%s must be 0 (forever) or at least 1h", c.Retention))
	}
	if c.MaxUsesPerInstancePerMinute < 1 || c.MaxUsesPerInstancePerMinute > 1<<30 {
		errs = append(errs, orchestrator.FieldErrorf("max_uses_per_instance_per_minute", "%d must be between 1 and %d", c.MaxUsesPerInstancePerMinute, 1<<30))
	}
	if c.MaxInstancesPerTenant < 1 || c.MaxInstancesPerTenant > 1000000 {
		errs = append(errs, orchestrator.FieldErrorf("max_instances_per_tenant", "%d must be between 1 and 1000000", c.MaxInstancesPerTenant))
	}
	return errors.Join(errs...)
}

// ParseConfig decodes the triggers.usage section over the defaults.
func ParseConfig(raw []byte) (Config, error) {
	cfg := Defaults()
	if s := strings.TrimSpace(string(raw)); s == "null" || s == "~" {
		raw = nil // a section with nothing under it
	}
	if err := orchestrator.DecodeSection("triggers.usage", raw, &cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Count is the entry of one secret version in the bucket. It never holds
// a value.
type Count struct {
	Tenant    string    `json:"tenant"`
	Secret    string    `json:"secret"`
	Version   string    `json:"version"`
	Uses      int64     `json:"uses"`
	Reports   int64     `json:"reports"`
	FirstAt   time.Time `json:"first_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// Applied are the REKEY_USAGE sequences of counted reports that were
	// not known to be acked when counted (at most maxApplied are kept);
	// AckFloor is the consumer's ack floor when they were pruned: every
	// report at or below it was acked, hence counted. Together they keep
	// a redelivered report from being counted twice.
	Applied  []uint64 `json:"applied,omitempty"`
	AckFloor uint64   `json:"ack_floor,omitempty"`
	// Epoch identifies the REKEY_USAGE stream (its creation time) that
	// the sequences belong to; a recreated stream starts them over.
	Epoch int64 `json:"epoch,omitempty"`
	// Rotation is set once, by the update that reached max_uses.
	Rotation *Rotation `json:"rotation,omitempty"`
}

// Rotation records the rotation requested for a version.
type Rotation struct {
	RequestID string    `json:"request_id"`
	Uses      int64     `json:"uses"`
	MaxUses   int64     `json:"max_uses"`
	DecidedAt time.Time `json:"decided_at"`
	// Seq is the report that reached max_uses; its handler publishes.
	Seq         uint64    `json:"seq"`
	Published   bool      `json:"published"`
	PublishedAt time.Time `json:"published_at,omitzero"`
}

// maxApplied bounds Count.Applied.
const maxApplied = 4096

// ReadCount returns the stored count of one version (zero if none).
func ReadCount(ctx context.Context, bus *orchestrator.Bus, tenant, secret, version string) (Count, error) {
	kv, err := bus.JS.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return Count{Tenant: tenant, Secret: secret, Version: version}, nil
	}
	if err != nil {
		return Count{}, fmt.Errorf("open %s: %w", Bucket, err)
	}
	c, _, err := get(ctx, kv, tenant, secret, version)
	return c, err
}

// Trigger counts uses and requests rotations.
type Trigger struct {
	cfg     Config
	rekey   *orchestrator.Config
	bus     *orchestrator.Bus
	audit   *orchestrator.Auditor
	metrics *orchestrator.Metrics
	log     *slog.Logger
	reports *prometheus.CounterVec // outcome

}

// New returns the trigger.
func New(cfg Config, deps orchestrator.Deps) (*Trigger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("triggers.usage: %w", err)
	}
	if err := deps.Check("usage", "rekey", "bus", "audit"); err != nil {
		return nil, err
	}
	reports := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rekey_usage_reports_total",
		Help: "Use reports handled by the use-count trigger, by outcome (counted, duplicate, ignored, refused, failed).",
	}, []string{"outcome"})
	reports, err := orchestrator.Register(deps.Metrics, reports)
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	return &Trigger{cfg: cfg, rekey: deps.Rekey, bus: deps.Bus, audit: deps.Audit, metrics: deps.Metrics,
		log: deps.Log.With("component", "usage"), reports: reports}, nil
}

// DurableFor names the durable consumer of one tenant's use-report
// stream (schemas.UsageStream). Each tenant has its own stream and
// consumer, shared by every replica, so that one tenant's reports never
// wait behind another's, at ingest or in dispatch.
func DurableFor(tenant string) string { return Durable + "-" + tenant }

// tenantConsumer is one tenant's consumer and its ack floor (a stream
// sequence: the tenant's reports at or below it are acked and never
// redelivered).
type tenantConsumer struct {
	tenant, stream string
	cons           jetstream.Consumer
	epoch          int64 // the stream's incarnation
	ackFloor       atomic.Uint64
}

// Run counts reports until ctx ends, then stops taking reports, finishes
// the ones being counted, hands the others back and returns nil.
func (t *Trigger) Run(ctx context.Context) error {
	if !t.cfg.Enabled {
		t.log.Info("use-count trigger disabled")
		return nil
	}
	tenants := t.policyTenants()
	if len(tenants) == 0 {
		t.log.Debug("no secret has max_uses")
		return nil
	}
	kv, err := t.bus.KV(ctx, Bucket, t.cfg.Retention)
	if err != nil {
		return t.setupFailed(ctx, err)
	}
	state, err := orchestrator.OpenState(ctx, t.bus)
	if err != nil {
		return t.setupFailed(ctx, err)
	}
	consumers := make([]*tenantConsumer, 0, len(tenants))
	for _, tn := range tenants {
		tc, err := t.tenantConsumer(ctx, tn)
		if err != nil {
			return t.setupFailed(ctx, err)
		}
		consumers = append(consumers, tc)
	}
	t.log.Info("use-count trigger started", "tenants", len(consumers), "durable", DurableFor("<tenant>"))

	var wg sync.WaitGroup
	wg.Go(func() { t.trackAckFloors(ctx, consumers) })
	// Counting runs on its own context, so a report being counted when
	// ctx ends is finished and acked.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	c := &counter{t: t, kv: kv, state: state, admit: newAdmission(t.cfg, state),
		refused: orchestrator.NewRefusals(t.audit, "usage", "usage.refused", time.Minute)}
	wg.Go(func() { _ = c.refused.Run(ctx) })
	var tenantsWG sync.WaitGroup
	for _, tc := range consumers {
		tenantsWG.Go(func() {
			if err := c.consume(ctx, workCtx, tc); err != nil {
				t.log.Error("use reports of a tenant not counted", "tenant", tc.tenant, "error", err)
			}
		})
	}
	tenantsWG.Wait()
	wg.Wait()
	c.refused.Flush(workCtx, time.Now(), true) // what the last reports added
	t.log.Info("use-count trigger stopped")
	return nil
}

// tenantConsumer creates (or finds) the durable consumer of a tenant's
// use-report stream (orchestrator.Bus.EnsureUsageStreams creates it).
func (t *Trigger) tenantConsumer(ctx context.Context, tenant string) (*tenantConsumer, error) {
	stream := schemas.UsageStream(tenant)
	st, err := t.bus.JS.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	cons, err := t.bus.Consumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:       DurableFor(tenant),
		Description:   "use-count trigger of tenant " + tenant + "; shared by every rekeyd",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       t.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 1024, // per tenant: a tenant's backlog holds only its own reports
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", DurableFor(tenant), err)
	}
	// The stream's creation time identifies its incarnation: a recreated
	// stream starts its sequences over.
	return &tenantConsumer{tenant: tenant, stream: stream, cons: cons, epoch: st.CachedInfo().Created.UnixNano()}, nil
}

// consume counts one tenant's reports until ctx ends.
func (c *counter) consume(ctx, workCtx context.Context, tc *tenantConsumer) error {
	t := c.t
	// Pull little ahead: a report waiting in this process past AckWait is
	// redelivered (and then recognised, but the work is wasted).
	iter, err := tc.cons.Messages(jetstream.PullMaxMessages(8 * t.cfg.Concurrency))
	if err != nil {
		return t.setupFailed(ctx, fmt.Errorf("consume %s: %w", tc.stream, err))
	}
	// Stop in two steps: stop pulling (Drain), hand what was pulled but
	// not counted back to the stream (Nak), finish what is being counted.
	stop := context.AfterFunc(ctx, iter.Drain)
	defer stop()
	defer iter.Stop()
	shards := make([]chan jetstream.Msg, t.cfg.Concurrency)
	var workers sync.WaitGroup
	for i := range shards {
		shards[i] = make(chan jetstream.Msg, 8)
		workers.Go(func() {
			for msg := range shards[i] {
				if ctx.Err() != nil {
					_ = msg.Nak() // stopping: hand it to another replica now
					continue
				}
				c.handle(workCtx, tc, msg)
			}
		})
	}
	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				break
			}
			t.log.Warn("pull failed", "stream", tc.stream, "error", err)
			continue
		}
		// Reports of one secret go to one worker, in order.
		h := fnv.New32a()
		_, _ = h.Write([]byte(msg.Subject()))
		shards[h.Sum32()%uint32(len(shards))] <- msg
	}
	for _, s := range shards {
		close(s)
	}
	workers.Wait()
	return nil
}

// policyTenants are the tenants with a secret that has max_uses.
func (t *Trigger) policyTenants() []string {
	var out []string
	for _, tn := range t.rekey.TenantNames() {
		for _, s := range t.rekey.TenantSecrets(tn) {
			if sc, _ := t.rekey.Secret(tn, s); sc.Policy.MaxUses > 0 {
				out = append(out, tn)
				break
			}
		}
	}
	return out
}

// trackAckFloors refreshes each tenant's ack floor every few seconds
// until ctx ends.
func (t *Trigger) trackAckFloors(ctx context.Context, consumers []*tenantConsumer) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		for _, tc := range consumers {
			ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
			info, err := tc.cons.Info(ictx)
			cancel()
			if err == nil && info.AckFloor.Stream > tc.ackFloor.Load() {
				tc.ackFloor.Store(info.AckFloor.Stream)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// counter handles reports for one Run.
type counter struct {
	t       *Trigger
	kv      jetstream.KeyValue
	state   *orchestrator.State
	admit   *admission
	refused *orchestrator.Refusals
}

// handle counts one report and acks it, or naks it to count it later.
func (c *counter) handle(ctx context.Context, tc *tenantConsumer, msg jetstream.Msg) {
	t := c.t
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	md, err := msg.Metadata()
	if err != nil {
		t.log.Warn("report without JetStream metadata dropped", "subject", msg.Subject(), "error", err)
		_ = msg.Term()
		return
	}
	rep, err := ParseReport(msg.Subject(), msg.Data())
	switch {
	case errors.Is(err, ErrRefused):
		c.refuse(ctx, tc.tenant, refusedSubject, 1)
		t.log.Debug("use report refused", "subject", msg.Subject(), "seq", md.Sequence.Stream, "error", err)
		_ = msg.Ack()
		return
	case err != nil:
		t.ignore(msg, md, "malformed", "error", err)
		return
	}
	sc, ok := t.rekey.Secret(rep.Tenant, rep.Secret)
	if !ok {
		t.ignore(msg, md, "unknown tenant or secret", "tenant", rep.Tenant, "secret", rep.Secret)
		return
	}
	if (rep.Tool != "" || rep.Run != "") && md.NumDelivered == 1 {
		c.auditUse(ctx, rep)
	}
	if sc.Policy.MaxUses <= 0 {
		t.ignore(msg, md, "secret has no max_uses", "tenant", rep.Tenant, "secret", rep.Secret)
		return
	}
	log := t.log.With("tenant", rep.Tenant, "secret", rep.Secret, "version", rep.Version)
	now := time.Now()
	ok, since, err := c.admit.versionOf(ctx, rep, now, md.NumDelivered > 1)
	if errors.Is(err, errStatusFresh) {
		_ = msg.NakWithDelay(statusRefresh)
		return
	}
	if err != nil {
		t.reports.WithLabelValues("failed").Inc()
		log.Warn("use report not counted; will retry", "seq", md.Sequence.Stream, "error", err)
		_ = msg.NakWithDelay(retry.Outage.Delay(int(md.NumDelivered)))
		return
	}
	if !ok {
		c.refuse(ctx, rep.Tenant, refusedVersion, 1)
		_ = msg.Ack()
		return
	}
	got, why := c.admit.take(rep.Tenant, rep.Agent, rep.Count, now)
	if got < rep.Count {
		c.refuse(ctx, rep.Tenant, why, 1)
	}
	if got == 0 {
		_ = msg.Ack()
		return
	}
	rep.Count = got
	cnt, dup, err := c.count(ctx, rep, pos{seq: md.Sequence.Stream, epoch: tc.epoch, floor: tc.ackFloor.Load()}, sc.Policy.MaxUses, since, log)
	if err != nil {
		t.reports.WithLabelValues("failed").Inc()
		log.Warn("use report not counted; will retry", "seq", md.Sequence.Stream, "error", err)
		_ = msg.NakWithDelay(retry.Outage.Delay(int(md.NumDelivered)))
		return
	}
	if r := cnt.Rotation; r != nil && !r.Published && (r.Seq == md.Sequence.Stream || time.Since(r.DecidedAt) > 2*t.cfg.AckWait) {
		// This report reached max_uses (or the one that did was lost):
		// publish the request; on failure the redelivery retries it.
		if err := c.request(ctx, cnt, log); err != nil {
			log.Warn("rotation not requested; will retry", "request_id", r.RequestID, "error", err)
			_ = msg.NakWithDelay(retry.Outage.Delay(int(md.NumDelivered)))
			return
		}
	}
	outcome := "counted"
	if dup {
		outcome = "duplicate"
	}
	t.reports.WithLabelValues(outcome).Inc()
	if err := msg.Ack(); err != nil {
		log.Debug("ack failed; the report will be redelivered and recognised", "seq", md.Sequence.Stream, "error", err)
	}
}

// auditUse records a report that names its tool or run: which agent
// instance of the tenant read which version, for which tool and run, how
// often and when. A report is audited at its first delivery only.
func (c *counter) auditUse(ctx context.Context, rep schemas.UsageReport) {
	d := map[string]string{
		"version": rep.Version, "agent": rep.Agent, "count": strconv.FormatInt(rep.Count, 10),
		"window_start": rep.WindowStart.UTC().Format(time.RFC3339Nano), "window_end": rep.WindowEnd.UTC().Format(time.RFC3339Nano),
	}
	if rep.Tool != "" {
		d["tool"] = rep.Tool
	}
	if rep.Run != "" {
		d["run"] = rep.Run
	}
	_ = c.t.audit.Record(ctx, schemas.AuditRecord{
		Tenant: rep.Tenant, Secret: rep.Secret, Actor: "agent:" + rep.Agent, Action: "secret.used",
		Outcome: schemas.OutcomeSucceeded, Component: "usage", Detail: d,
	})
}

// refuse counts n refused reports of tenant for the audit trail.
func (c *counter) refuse(ctx context.Context, tenant, reason string, n int64) {
	c.t.reports.WithLabelValues("refused").Add(float64(n))
	c.refused.Add(ctx, tenant, reason, n, time.Now())
}

func (t *Trigger) ignore(msg jetstream.Msg, md *jetstream.MsgMetadata, why string, args ...any) {
	t.reports.WithLabelValues("ignored").Inc()
	t.log.Debug("use report ignored: "+why, append([]any{"subject", msg.Subject(), "seq", md.Sequence.Stream}, args...)...)
	_ = msg.Ack()
}

// pos is a report's place in its tenant's stream: its sequence, the
// stream's incarnation, and the consumer's ack floor when it was read.
type pos struct {
	seq   uint64
	epoch int64
	floor uint64
}

// count adds the report to its version's count with compare-and-set,
// unless it is already counted (dup), and decides the rotation when the
// count reaches maxUses while the version is still current. A count begun
// before since (when the version became current) is dropped first: it
// was not made by uses of this version.
func (c *counter) count(ctx context.Context, rep schemas.UsageReport, at pos, maxUses int64, since time.Time,
	log *slog.Logger) (Count, bool, error) {
	seq, floor := at.seq, at.floor
	var superseded *bool // looked up once, when needed
	for range 50 {
		cnt, rev, err := get(ctx, c.kv, rep.Tenant, rep.Secret, rep.Version)
		if err != nil {
			return Count{}, false, err
		}
		now := time.Now().UTC()
		if cnt.Epoch != at.epoch {
			// New entry, or sequences of a stream since recreated.
			cnt.Epoch, cnt.Applied, cnt.AckFloor = at.epoch, nil, 0
		}
		reset := !cnt.FirstAt.IsZero() && cnt.FirstAt.Before(since)
		if reset {
			log.Warn("count begun before its version was current dropped", "uses", cnt.Uses, "first_at", cnt.FirstAt)
			cnt.Uses, cnt.Reports, cnt.FirstAt, cnt.Rotation = 0, 0, time.Time{}, nil
		}
		// At or below an ack floor, the report was acked, so counted: this
		// is a copy redelivered while the first was being counted.
		dup := seq <= max(cnt.AckFloor, floor) || slices.Contains(cnt.Applied, seq)
		changed := !dup || reset
		if !dup {
			cnt.Uses = satAdd(cnt.Uses, rep.Count)
			cnt.Reports++
			if cnt.FirstAt.IsZero() {
				cnt.FirstAt = now
			}
			cnt.UpdatedAt = now
			cnt.AckFloor = max(cnt.AckFloor, floor)
			cnt.Applied = prune(append(cnt.Applied, seq), cnt.AckFloor)
		}
		if cnt.Rotation == nil && cnt.Uses >= maxUses {
			if superseded == nil {
				s := c.superseded(ctx, rep, log)
				superseded = &s
			}
			if !*superseded {
				cnt.Rotation = &Rotation{RequestID: RequestID(rep.Tenant, rep.Secret, rep.Version),
					Uses: cnt.Uses, MaxUses: maxUses, DecidedAt: now, Seq: seq}
				changed = true
			}
		}
		if !changed {
			return cnt, dup, nil
		}
		ok, err := put(ctx, c.kv, cnt, rev)
		if err != nil {
			return Count{}, false, err
		}
		if ok {
			return cnt, dup, nil
		}
	}
	return Count{}, false, fmt.Errorf("count %s: too many concurrent updates", Key(rep.Tenant, rep.Secret, rep.Version))
}

// superseded reports whether the secret's status names another current
// version: rotating because an old version reached max_uses would replace
// a version that did not. Unknown status counts as current.
func (c *counter) superseded(ctx context.Context, rep schemas.UsageReport, log *slog.Logger) bool {
	st, err := c.state.SecretStatus(ctx, rep.Tenant, rep.Secret)
	if err != nil {
		log.Warn("secret status unavailable; treating the version as current", "error", err)
		return false
	}
	if st.Version != "" && st.Version != rep.Version {
		log.Debug("version reached max_uses but is no longer current; no rotation requested", "current", st.Version)
		return true
	}
	return false
}

// request publishes the rotation request decided in cnt, marks it
// published and audits it.
func (c *counter) request(ctx context.Context, cnt Count, log *slog.Logger) error {
	t, r := c.t, cnt.Rotation
	uses := strconv.FormatInt(r.Uses, 10)
	req := schemas.RotationRequested{
		Tenant: cnt.Tenant, Secret: cnt.Secret,
		Reason:      fmt.Sprintf("version %s used %d times (max_uses %d)", cnt.Version, r.Uses, r.MaxUses),
		Trigger:     schemas.Trigger{Kind: schemas.TriggerUsage, Source: "usage", Actor: cnt.Version + ":" + uses},
		RequestedAt: time.Now().UTC(),
	}
	ev, err := schemas.NewEvent(EventSource, schemas.TypeRotationRequested, cnt.Tenant, cnt.Tenant+"/"+cnt.Secret, req)
	if err != nil {
		return err
	}
	ack, err := t.bus.Publish(ctx, schemas.RotateSubject(cnt.Tenant, cnt.Secret), ev.WithID(r.RequestID))
	if err != nil {
		return err
	}
	if err := c.markPublished(ctx, cnt); err != nil {
		return err
	}
	outcome, metric := schemas.OutcomeAccepted, "accepted"
	if ack.Duplicate {
		outcome, metric = schemas.OutcomeCoalesced, "duplicate"
	}
	t.metrics.RequestsTotal.WithLabelValues("usage", metric).Inc()
	_ = t.audit.Record(ctx, schemas.AuditRecord{
		Tenant: cnt.Tenant, Secret: cnt.Secret, Actor: "usage:" + req.Trigger.Actor, Action: "rotation.request",
		Outcome: outcome, RequestID: r.RequestID, Component: "usage",
		Detail: map[string]string{
			"version": cnt.Version, "uses": uses, "max_uses": strconv.FormatInt(r.MaxUses, 10),
			"duplicate": strconv.FormatBool(ack.Duplicate),
		},
	})
	log.Info("use limit reached; rotation requested", "request_id", r.RequestID, "uses", r.Uses,
		"max_uses", r.MaxUses, "duplicate", ack.Duplicate)
	return nil
}

func (c *counter) markPublished(ctx context.Context, cnt Count) error {
	for range 50 {
		cur, rev, err := get(ctx, c.kv, cnt.Tenant, cnt.Secret, cnt.Version)
		if err != nil {
			return err
		}
		if cur.Rotation == nil { // the entry expired and came back
			cur.Rotation = cnt.Rotation
		}
		if cur.Rotation.Published {
			return nil
		}
		cur.Rotation.Published, cur.Rotation.PublishedAt = true, time.Now().UTC()
		ok, err := put(ctx, c.kv, cur, rev)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("mark %s published: too many concurrent updates", Key(cnt.Tenant, cnt.Secret, cnt.Version))
}

// get reads one version's count (a zero count at revision 0 when there is
// none yet); a count stored under the key of another version is an error.
func get(ctx context.Context, kv jetstream.KeyValue, tenant, secret, version string) (Count, uint64, error) {
	cnt := Count{Tenant: tenant, Secret: secret, Version: version}
	rev, err := orchestrator.GetStrict(ctx, kv, Key(tenant, secret, version), "count", &cnt, "tenant", "secret", "version")
	if err != nil {
		return Count{}, 0, err
	}
	if cnt.Tenant != tenant || cnt.Secret != secret || cnt.Version != version {
		// Two versions hashing to one key: practically impossible.
		return Count{}, 0, fmt.Errorf("count %s holds %s/%s version %q", Key(tenant, secret, version), cnt.Tenant, cnt.Secret, cnt.Version)
	}
	return cnt, rev, nil
}

// put writes cnt with compare-and-set; ok is false when another writer
// was first.
func put(ctx context.Context, kv jetstream.KeyValue, cnt Count, rev uint64) (bool, error) {
	return orchestrator.PutIfRevision(ctx, kv, Key(cnt.Tenant, cnt.Secret, cnt.Version), "count", cnt, rev)
}

// prune drops the sequences at or below the ack floor (never redelivered)
// and keeps at most maxApplied of the rest, the newest.
func prune(seqs []uint64, floor uint64) []uint64 {
	seqs = slices.DeleteFunc(seqs, func(s uint64) bool { return s <= floor })
	if len(seqs) > maxApplied {
		slices.Sort(seqs)
		seqs = slices.Clone(seqs[len(seqs)-maxApplied:])
	}
	return seqs
}

func satAdd(a, b int64) int64 {
	if b > 0 && a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// setupFailed is Run's result when setting up failed: nil if that was
// because ctx ended.
func (t *Trigger) setupFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("usage: %w", err)
}
