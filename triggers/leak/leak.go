// Package leak is the leak trigger: it acts on the leak reports agents'
// leak guards publish (fanout/agent's Scan, Writer and RoundTripper), by
// the secret's policy: rotate the secret at once (policy.on_leak: rotate,
// the default) or revoke the tenant (on_leak: revoke). A canary secret
// (policy.canary: true) is never used by anyone, so any report of it is
// proof of a leak: it revokes the tenant (policy.on_canary: revoke, the
// default) or rotates every secret of the tenant (rotate_tenant).
//
// Reports arrive on rekey.leak.<t>.<s> and are kept in the tenant's stream
// REKEY_LEAK_<t> (orchestrator.Bus.EnsureLeakStreams), read through the
// tenant's durable consumer "leak-trigger-<t>", shared by every replica.
// A stream, not a core subscription: a report published while the
// trigger is not running (rekeyd restarting, a replica failing over, or
// rekeyd down with an external NATS) waits in the stream, and a report is
// acked only after its request was published, so a crash in between
// redelivers it. A core subscription would lose both.
//
// One leak of a version acts once, however many agents report it and
// however often: the decision is stored in the "rekey_leak" KV bucket
// (key <t>.<s>.<version>) by a create that only the first report wins,
// and the request it publishes has an id derived from the version
// (RequestID), so a repeated publish is dropped by JetStream too. That id
// is the request id of the rotation or revocation, of its invalidation
// and of every audit record, linking leak -> rotation/revocation ->
// invalidation.
//
// What an agent claims is not believed beyond its tenant: a report whose
// body names another tenant or secret than its subject is refused (NATS
// lets an agent publish on its own tenant's leak subjects only), and a
// version that is neither the secret's current nor its previous one is
// refused (it cannot leak what no longer works, and made-up versions must
// not force rotations), except for a canary, where any report is proof.
package leak

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Names of the NATS resources the trigger uses.
const (
	Bucket      = "rekey_leak"
	Durable     = "leak-trigger"
	EventSource = "rekeyd/leak"
)

// DurableFor names the durable consumer of one tenant's leak stream.
func DurableFor(tenant string) string { return Durable + "-" + tenant }

// Config is the triggers.leak section of rekey.yaml.
type Config struct {
	// Enabled runs the trigger (default true).
	Enabled bool `yaml:"enabled"`
	// AckWait is how long a report may stay unacked before JetStream
	// hands it to another replica (default 30s).
	AckWait time.Duration `yaml:"ack_wait"`
	// Retention is how long the decision about a leaked version is kept
	// (default 720h): a report of that version within it acts no more.
	Retention time.Duration `yaml:"retention"`
}

// Defaults returns the configuration of an empty section.
func Defaults() Config {
	return Config{Enabled: true, AckWait: 30 * time.Second, Retention: 30 * 24 * time.Hour}
}

// Validate checks the fields; errors name the field within the section.
func (c *Config) Validate() error {
	var errs []error
	if c.AckWait < time.Second || c.AckWait > 10*time.Minute {
		errs = append(errs, orchestrator.FieldErrorf("ack_wait", "%s must be between 1s and 10m", c.AckWait))
	}
	if c.Retention < time.Hour {
		errs = append(errs, orchestrator.FieldErrorf("retention", "%s must be at least 1h", c.Retention))
	}
	return errors.Join(errs...)
}

// ParseConfig decodes the triggers.leak section over the defaults.
func ParseConfig(raw []byte) (Config, error) {
	cfg := Defaults()
	if s := strings.TrimSpace(string(raw)); s == "null" || s == "~" {
		raw = nil
	}
	if err := orchestrator.DecodeSection("triggers.leak", raw, &cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Decision is what the trigger decided about one leaked version: the
// entry of the "rekey_leak" bucket. It never holds a value.
type Decision struct {
	Tenant    string `json:"tenant"`
	Secret    string `json:"secret"`
	Version   string `json:"version"`
	Action    string `json:"action"` // orchestrator.LeakRotate, LeakRevoke, LeakRotateTenant
	Canary    bool   `json:"canary,omitempty"`
	RequestID string `json:"request_id"`
	// Agent, Where: the first report's.
	Agent       string    `json:"agent"`
	Where       string    `json:"where"`
	DecidedAt   time.Time `json:"decided_at"`
	Published   bool      `json:"published"`
	PublishedAt time.Time `json:"published_at,omitzero"`
}

// ReadDecision returns the decision about one version, if any.
func ReadDecision(ctx context.Context, bus *orchestrator.Bus, tenant, secret, version string) (Decision, bool, error) {
	kv, err := bus.JS.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return Decision{}, false, nil
	}
	if err != nil {
		return Decision{}, false, fmt.Errorf("open %s: %w", Bucket, err)
	}
	d, rev, err := get(ctx, kv, tenant, secret, version)
	return d, rev != 0, err
}

// Trigger acts on leak reports.
type Trigger struct {
	cfg     Config
	rekey   *orchestrator.Config
	bus     *orchestrator.Bus
	audit   *orchestrator.Auditor
	metrics *orchestrator.Metrics
	log     *slog.Logger
	reports *prometheus.CounterVec // outcome
}

// New returns the trigger. bus is the connection of the role that runs
// triggers (orchestrator.RoleAPI): it consumes REKEY_LEAK_<t>, owns the
// "rekey_leak" bucket and publishes rotation and revocation requests.
func New(cfg Config, deps orchestrator.Deps) (*Trigger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("triggers.leak: %w", err)
	}
	if err := deps.Check("leak", "rekey", "bus", "audit"); err != nil {
		return nil, err
	}
	rekey, bus, audit, metrics, log := deps.Rekey, deps.Bus, deps.Audit, deps.Metrics, deps.Log
	reports, err := orchestrator.Register(metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rekey_leak_reports_total",
		Help: "Leak reports handled by the leak trigger, by outcome (acted, duplicate, refused, ignored, failed).",
	}, []string{"outcome"}))
	if err != nil {
		return nil, fmt.Errorf("leak: %w", err)
	}
	return &Trigger{cfg: cfg, rekey: rekey, bus: bus, audit: audit, metrics: metrics,
		log: log.With("component", "leak"), reports: reports}, nil
}

// Run acts on reports until ctx ends, then stops taking reports, finishes
// the one being handled and returns nil.
func (t *Trigger) Run(ctx context.Context) error {
	if !t.cfg.Enabled {
		t.log.Info("leak trigger disabled")
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
	h := &handler{t: t, kv: kv, state: state,
		refused: orchestrator.NewRefusals(t.audit, "leak", "leak.refused", time.Minute)}
	type tenantCons struct {
		tenant string
		cons   jetstream.Consumer
	}
	var all []tenantCons
	for _, tn := range t.rekey.TenantNames() {
		cons, err := t.bus.Consumer(ctx, schemas.LeakStream(tn), jetstream.ConsumerConfig{
			Durable:       DurableFor(tn),
			Description:   "leak trigger of tenant " + tn + "; shared by every rekeyd",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       t.cfg.AckWait,
			MaxDeliver:    -1,
			MaxAckPending: 64,
		})
		if err != nil {
			return t.setupFailed(ctx, fmt.Errorf("consumer %s: %w", DurableFor(tn), err))
		}
		all = append(all, tenantCons{tn, cons})
	}
	t.log.Info("leak trigger started", "tenants", len(all))
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var wg sync.WaitGroup
	wg.Go(func() { _ = h.refused.Run(ctx) })
	for _, tc := range all {
		wg.Go(func() {
			if err := h.consume(ctx, workCtx, tc.tenant, tc.cons); err != nil {
				t.log.Error("leak reports of a tenant not read", "tenant", tc.tenant, "error", err)
			}
		})
	}
	wg.Wait()
	h.refused.Flush(workCtx, time.Now(), true)
	t.log.Info("leak trigger stopped")
	return nil
}

type handler struct {
	t       *Trigger
	kv      jetstream.KeyValue
	state   *orchestrator.State
	refused *orchestrator.Refusals
}

// consume handles one tenant's reports, one at a time, until ctx ends.
func (h *handler) consume(ctx, workCtx context.Context, tenant string, cons jetstream.Consumer) error {
	iter, err := cons.Messages(jetstream.PullMaxMessages(16))
	if err != nil {
		return fmt.Errorf("consume %s: %w", schemas.LeakStream(tenant), err)
	}
	stop := context.AfterFunc(ctx, iter.Drain)
	defer stop()
	defer iter.Stop()
	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		if ctx.Err() != nil {
			_ = msg.Nak()
			continue
		}
		h.handle(workCtx, tenant, msg)
	}
}

// Refusal reasons in leak.refused audit records.
const (
	refusedSubject = "subject_mismatch"
	refusedSecret  = "unknown_secret"
	refusedVersion = "version_not_live"
)

func (h *handler) handle(ctx context.Context, tenant string, msg jetstream.Msg) {
	t := h.t
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	md, err := msg.Metadata()
	if err != nil {
		_ = msg.Term()
		return
	}
	rep, err := ParseReport(msg.Subject(), msg.Data())
	switch {
	case errors.Is(err, ErrRefused) || err == nil && rep.Tenant != tenant:
		h.refuse(ctx, tenant, refusedSubject, msg, "error", err)
		return
	case err != nil:
		t.reports.WithLabelValues("ignored").Inc()
		t.log.Debug("malformed leak report dropped", "subject", msg.Subject(), "seq", md.Sequence.Stream, "error", err)
		_ = msg.Ack()
		return
	}
	sc, ok := t.rekey.Secret(rep.Tenant, rep.Secret)
	if !ok {
		h.refuse(ctx, tenant, refusedSecret, msg, "secret", rep.Secret)
		return
	}
	log := t.log.With("tenant", rep.Tenant, "secret", rep.Secret, "version", rep.Version)
	if !sc.Policy.Canary {
		st, err := h.state.SecretStatus(ctx, rep.Tenant, rep.Secret)
		if err != nil {
			log.Warn("secret status unavailable; acting on the report", "error", err)
		} else if st.Version != "" && rep.Version != st.Version && rep.Version != st.PreviousVersion {
			h.refuse(ctx, tenant, refusedVersion, msg, "secret", rep.Secret, "current", st.Version)
			return
		}
	}
	d, first, err := h.decide(ctx, rep, sc.Policy)
	if err == nil && !d.Published {
		err = h.act(ctx, d, rep, log)
	}
	if err != nil {
		t.reports.WithLabelValues("failed").Inc()
		log.Warn("leak report not acted on; will retry", "seq", md.Sequence.Stream, "error", err)
		_ = msg.NakWithDelay(retry.Outage.Delay(int(md.NumDelivered)))
		return
	}
	if first {
		t.reports.WithLabelValues("acted").Inc()
	} else {
		t.reports.WithLabelValues("duplicate").Inc()
		log.Debug("leak of this version already acted on", "request_id", d.RequestID, "agent", rep.Agent)
	}
	_ = msg.Ack()
}

func (h *handler) refuse(ctx context.Context, tenant, reason string, msg jetstream.Msg, args ...any) {
	h.t.reports.WithLabelValues("refused").Inc()
	h.refused.Add(ctx, tenant, reason, 1, time.Now())
	h.t.log.Debug("leak report refused: "+reason, append([]any{"subject", msg.Subject()}, args...)...)
	_ = msg.Ack()
}

// decide returns the decision about the report's version, creating it if
// this is the first report (first).
func (h *handler) decide(ctx context.Context, rep schemas.LeakReport, p orchestrator.PolicyConfig) (Decision, bool, error) {
	for range 20 {
		d, rev, err := get(ctx, h.kv, rep.Tenant, rep.Secret, rep.Version)
		if err != nil {
			return Decision{}, false, err
		}
		if rev != 0 {
			return d, false, nil
		}
		d = Decision{Tenant: rep.Tenant, Secret: rep.Secret, Version: rep.Version, Action: p.LeakAction(),
			Canary: p.Canary, RequestID: RequestID(rep.Tenant, rep.Secret, rep.Version),
			Agent: rep.Agent, Where: rep.Where, DecidedAt: time.Now().UTC()}
		ok, err := put(ctx, h.kv, d, 0)
		if err != nil {
			return Decision{}, false, err
		}
		if ok {
			return d, true, nil
		}
	}
	return Decision{}, false, fmt.Errorf("decide %s: too many concurrent updates", Key(rep.Tenant, rep.Secret, rep.Version))
}

// act publishes the request of d, marks it published and audits it.
func (h *handler) act(ctx context.Context, d Decision, rep schemas.LeakReport, log *slog.Logger) error {
	t := h.t
	what := "leak"
	if d.Canary {
		what = "canary"
	}
	reason := fmt.Sprintf("%s: %s/%s version %s found by agent %s (%s)", what, d.Tenant, d.Secret, d.Version, d.Agent, d.Where)
	trig := schemas.Trigger{Kind: schemas.TriggerLeak, Source: what, Actor: d.Agent}
	now := time.Now().UTC()
	var subjects []string
	switch d.Action {
	case orchestrator.LeakRevoke:
		ev, err := schemas.NewEvent(EventSource, schemas.TypeRevocationRequested, d.Tenant, d.Tenant, schemas.RevocationRequested{
			Tenant: d.Tenant, Action: schemas.ActionRevoke, Reason: reason, Trigger: trig, RequestedAt: now})
		if err != nil {
			return err
		}
		if _, err := t.bus.Publish(ctx, schemas.RevokeSubject(d.Tenant), ev.WithID(d.RequestID)); err != nil {
			return err
		}
		subjects = append(subjects, schemas.RevokeSubject(d.Tenant))
	default:
		secrets := []string{d.Secret}
		if d.Action == orchestrator.LeakRotateTenant {
			secrets = t.rekey.TenantSecrets(d.Tenant)
		}
		for _, s := range secrets {
			id := d.RequestID
			if s != d.Secret {
				id += "." + s
			}
			ev, err := schemas.NewEvent(EventSource, schemas.TypeRotationRequested, d.Tenant, d.Tenant+"/"+s, schemas.RotationRequested{
				Tenant: d.Tenant, Secret: s, Reason: reason, Trigger: trig, RequestedAt: now})
			if err != nil {
				return err
			}
			if _, err := t.bus.Publish(ctx, schemas.RotateSubject(d.Tenant, s), ev.WithID(id)); err != nil {
				return err
			}
			subjects = append(subjects, schemas.RotateSubject(d.Tenant, s))
		}
	}
	if err := h.markPublished(ctx, d); err != nil {
		return err
	}
	t.metrics.RequestsTotal.WithLabelValues("leak", "accepted").Inc()
	_ = t.audit.RecordWithID(ctx, d.RequestID+".detected", schemas.AuditRecord{
		Tenant: d.Tenant, Secret: d.Secret, Actor: "leak:" + d.Agent, Action: "leak.detected",
		Outcome: schemas.OutcomeAccepted, RequestID: d.RequestID, Component: "leak",
		Detail: map[string]string{
			"version": d.Version, "agent": rep.Agent, "tool": rep.Tool, "run": rep.Run, "where": rep.Where,
			"encoding": rep.Encoding, "split": strconv.FormatBool(rep.Split), "count": strconv.Itoa(rep.Count),
			"action": d.Action, "canary": strconv.FormatBool(d.Canary), "requests": strings.Join(subjects, " "),
		},
	})
	log.Warn("leak reported; acting", "request_id", d.RequestID, "action", d.Action, "canary", d.Canary,
		"agent", rep.Agent, "where", rep.Where, "encoding", rep.Encoding)
	return nil
}

func (h *handler) markPublished(ctx context.Context, d Decision) error {
	for range 20 {
		cur, rev, err := get(ctx, h.kv, d.Tenant, d.Secret, d.Version)
		if err != nil {
			return err
		}
		if rev == 0 { // expired meanwhile
			cur = d
		}
		if cur.Published {
			return nil
		}
		cur.Published, cur.PublishedAt = true, time.Now().UTC()
		ok, err := put(ctx, h.kv, cur, rev)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("mark %s published: too many concurrent updates", Key(d.Tenant, d.Secret, d.Version))
}

// get reads the decision about one version (rev 0: none yet); a decision
// stored under the key of another version is an error.
func get(ctx context.Context, kv jetstream.KeyValue, tenant, secret, version string) (Decision, uint64, error) {
	var d Decision
	rev, err := orchestrator.GetStrict(ctx, kv, Key(tenant, secret, version), "decision", &d, "tenant", "secret", "version", "action", "request_id")
	if err != nil || rev == 0 {
		return Decision{}, 0, err
	}
	if d.Tenant != tenant || d.Secret != secret || d.Version != version {
		return Decision{}, 0, fmt.Errorf("decision %s holds %s/%s version %q", Key(tenant, secret, version), d.Tenant, d.Secret, d.Version)
	}
	return d, rev, nil
}

// put writes d with compare-and-set (rev 0: create); ok is false when
// another writer was first.
func put(ctx context.Context, kv jetstream.KeyValue, d Decision, rev uint64) (bool, error) {
	return orchestrator.PutIfRevision(ctx, kv, Key(d.Tenant, d.Secret, d.Version), "decision", d, rev)
}

// setupFailed is Run's result when setting up failed: nil if that was
// because ctx ended.
func (t *Trigger) setupFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("leak: %w", err)
}
