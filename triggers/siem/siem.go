// Package siem is the SIEM and alerting webhook trigger: POST
// /v1/hooks/{source} takes an alert from Alertmanager, Grafana, Splunk,
// Datadog, PagerDuty or any JSON sender, authenticates it (HMAC, bearer or
// basic, per source), matches it against the source's rules and publishes
// rotation or revocation requests for the tenants the source is allowed to
// name. It never calls a backend.
//
// Replies (JSON): 202 {"request_ids": [...], "alerts": [...]} when
// requests were queued, or when there was nothing to do (resolved alerts,
// duplicates, severities below every rule: request_ids is empty); 400 a
// malformed payload, with the reason; 401 failed authentication; 403
// every alert that matched a rule named a tenant outside the source's
// allow-list (audited as refused); 404 unknown source; 413 body over the
// limit, or more alerts in one delivery than max_alerts or the rate
// limit's burst; 422 no rule matched (audited), or an alert named an
// invalid or unknown tenant or secret; 429 over the source's rate limit
// (which counts alerts, not deliveries), with Retry-After; 503 NATS unavailable, nothing more was queued (retry).
package siem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// EventSource is the CloudEvents source of the requests published.
const EventSource = "rekeyd/siem"

// Route is the pattern Register mounts; RouteURLSecret the one of
// sources whose secret is the path segment after their name.
const (
	Route          = "POST /v1/hooks/{source}"
	RouteURLSecret = "POST /v1/hooks/{source}/{" + pathSecret + "}"
)

// Handler serves POST /v1/hooks/{source}.
type Handler struct {
	rekey   *orchestrator.Config
	bus     *orchestrator.Bus
	audit   *orchestrator.Auditor
	metrics *orchestrator.Metrics
	log     *slog.Logger
	sources map[string]*source
	dedup   *dedup
	alerts  *prometheus.CounterVec // source, outcome
	now     func() time.Time
}

// source is one configured sender, compiled.
type source struct {
	name       string
	format     string
	parse      func([]byte) ([]Alert, error)
	auth       authenticator
	limiter    *rate.Limiter
	allowed    map[string]bool
	tenants    []string
	rules      []rule
	window     time.Duration
	needTime   bool // require_timestamp
	maxBody    int64
	maxAlerts  int
	sevLabel   string
	sevMap     map[string]Severity
	defaultSev Severity
}

type rule struct {
	name        string
	match       map[string]string
	matchRE     map[string]*regexp.Regexp
	tenant      string
	tenantLabel string
	secrets     []string
	secretLabel string
	allSecrets  bool
	action      string
	minSeverity Severity
}

// New compiles cfg: it validates it again, checks it against rekey's
// tenants, and reads secrets given as environment variables.
func New(cfg Config, deps orchestrator.Deps) (*Handler, error) {
	if err := deps.Check("siem", "rekey", "bus", "audit"); err != nil {
		return nil, err
	}
	rekey, log := deps.Rekey, deps.Log
	if err := cfg.Validate(); err != nil {
		return nil, prefixed(err)
	}
	if err := cfg.checkAgainst(rekey); err != nil {
		return nil, err
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.DedupWindow == 0 {
		cfg.DedupWindow = DefaultDedupWindow
	}
	if cfg.MaxAlerts == 0 {
		cfg.MaxAlerts = DefaultMaxAlerts
	}
	h := &Handler{
		rekey: rekey, bus: deps.Bus, audit: deps.Audit, metrics: deps.Metrics,
		log: log.With("component", "siem"), sources: map[string]*source{}, now: time.Now,
	}
	longest := cfg.DedupWindow
	for _, name := range sortedKeys(cfg.Sources) {
		s, err := compileSource(name, cfg.Sources[name], cfg)
		if err != nil {
			return nil, err
		}
		h.sources[name] = s
		longest = max(longest, s.window)
	}
	h.dedup = newDedup(deps.Bus, longest, h.log)
	h.alerts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rekey_siem_alerts_total", Help: "Alerts received by the SIEM webhook trigger, by source and outcome.",
	}, []string{"source", "outcome"})
	var err error
	if h.alerts, err = orchestrator.Register(deps.Metrics, h.alerts); err != nil {
		return nil, fmt.Errorf("siem: %w", err)
	}
	return h, nil
}

func prefixed(err error) error {
	var out []error
	for _, e := range flatten(err) {
		var fe *orchestrator.FieldError
		if errors.As(e, &fe) {
			out = append(out, orchestrator.FieldErrorf(Section+"."+fe.Field, "%s", fe.Reason))
			continue
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func compileSource(name string, c SourceConfig, top Config) (*source, error) {
	field := Section + ".sources." + name
	if p, ok := Presets[c.Preset]; ok {
		sev := maps.Clone(p.Severities)
		if sev == nil {
			sev = map[string]string{}
		}
		maps.Copy(sev, c.Severities)
		c.Severities, c.Generic, c.Format = sev, c.mapping(), c.format()
	}
	auth, err := newAuthenticator(field, c.Format, c.Auth)
	if err != nil {
		return nil, err
	}
	s := &source{
		name: name, format: c.Format, auth: auth, allowed: map[string]bool{}, tenants: c.Tenants,
		window: c.DedupWindow, needTime: c.RequireTimestamp, maxBody: c.MaxBodyBytes, sevLabel: c.SeverityLabel, sevMap: map[string]Severity{},
	}
	if s.window == 0 {
		s.window = top.DedupWindow
	}
	if s.maxBody == 0 {
		s.maxBody = top.MaxBodyBytes
	}
	s.maxAlerts = c.MaxAlerts
	if s.maxAlerts == 0 {
		s.maxAlerts = top.MaxAlerts
	}
	perSec, burst := c.RateLimit.PerSecond, c.RateLimit.Burst
	if perSec == 0 {
		perSec = DefaultRatePerSec
	}
	if burst == 0 {
		burst = DefaultRateBurst
	}
	s.limiter = rate.NewLimiter(rate.Limit(perSec), burst)
	for _, t := range c.Tenants {
		s.allowed[t] = true
	}
	for k, v := range c.Severities {
		s.sevMap[strings.ToLower(strings.TrimSpace(k))], _ = SeverityLevel(v)
	}
	s.defaultSev, _ = SeverityLevel(c.DefaultSeverity)
	switch c.Format {
	case FormatAlertmanager:
		s.parse = parseAlertmanager
	case FormatGrafana:
		s.parse = parseGrafana
	case FormatSplunk:
		s.parse = parseSplunk
	case FormatDatadog:
		s.parse = parseDatadog
	case FormatPagerDuty:
		s.parse = parsePagerDuty
	case FormatGeneric:
		m := *c.Generic
		s.parse = m.parse
	}
	for i, rc := range c.Rules {
		r := rule{
			name: rc.name(i), match: rc.Match, matchRE: map[string]*regexp.Regexp{},
			tenant: rc.Tenant, tenantLabel: rc.TenantLabel, secrets: rc.Secrets,
			secretLabel: rc.SecretLabel, allSecrets: rc.AllSecrets, action: rc.Action,
		}
		if r.action == "" {
			r.action = ActionRotate
		}
		for k, expr := range rc.MatchRE {
			r.matchRE[k] = regexp.MustCompile("^(?:" + expr + ")$") // compiled once by Validate
		}
		r.minSeverity, _ = SeverityLevel(rc.MinSeverity)
		s.rules = append(s.rules, r)
	}
	return s, nil
}

// Register mounts POST /v1/hooks/{source} on mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.Handle(Route, h)
	mux.Handle(RouteURLSecret, h)
}

// Response is the JSON body of every reply. Error and Field are set on
// failures; Alerts says what became of each alert of the payload.
type Response struct {
	Source     string        `json:"source,omitempty"`
	RequestIDs []string      `json:"request_ids"`
	Alerts     []AlertResult `json:"alerts,omitempty"`
	Error      string        `json:"error,omitempty"`
	Field      string        `json:"field,omitempty"`
}

// Alert outcomes in a Response.
const (
	OutcomeAccepted  = "accepted"  // requests queued
	OutcomeDuplicate = "duplicate" // every request it asked for was already queued
	OutcomeIgnored   = "ignored"   // resolved, other, or below every matching rule's min_severity
	OutcomeUnmatched = "unmatched" // no rule matched
	OutcomeRefused   = "refused"   // named a tenant outside the allow-list
	OutcomeInvalid   = "invalid"   // named an invalid or unknown tenant or secret
	OutcomeFailed    = "failed"    // NATS did not take its request: 503, retry
)

// AlertResult is what became of one alert.
type AlertResult struct {
	ID       string    `json:"id"`
	Name     string    `json:"name,omitempty"`
	Status   Status    `json:"status"`
	Severity Severity  `json:"severity"`
	Outcome  string    `json:"outcome"`
	Rule     string    `json:"rule,omitempty"`
	Action   string    `json:"action,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Field    string    `json:"field,omitempty"`
	Requests []Request `json:"requests,omitempty"`
}

// Request is one queued rotation or revocation request.
type Request struct {
	RequestID string `json:"request_id"`
	Tenant    string `json:"tenant"`
	Secret    string `json:"secret,omitempty"`
	Action    string `json:"action"`
	Subject   string `json:"subject"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// errUnavailable means NATS did not take a request.
var errUnavailable = errors.New("request not queued: NATS unavailable, retry")

// ServeHTTP handles one webhook delivery.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	code := h.serve(w, r)
	h.metrics.HTTPRequestsTotal.WithLabelValues("siem_hook", strconv.Itoa(code)).Inc()
}

// takeTokens takes n tokens (alerts) from the source's rate limit; it
// replies 429 and returns its code when they are not there.
func (h *Handler) takeTokens(w http.ResponseWriter, src *source, now time.Time, n int) int {
	if n == 0 {
		return 0
	}
	res := src.limiter.ReserveN(now, n)
	if res.OK() && res.DelayFrom(now) == 0 {
		return 0
	}
	delay := rate.InfDuration
	if res.OK() {
		delay = res.DelayFrom(now)
		res.CancelAt(now)
	}
	return h.rateLimited(w, src, now, n, delay)
}

// rateLimited replies 429 with Retry-After for a delivery of n alerts.
func (h *Handler) rateLimited(w http.ResponseWriter, src *source, now time.Time, n int, delays ...time.Duration) int {
	delay := rate.InfDuration
	if len(delays) > 0 {
		delay = delays[0]
	} else if lim := float64(src.limiter.Limit()); lim > 0 {
		delay = time.Duration((float64(n) - src.limiter.TokensAt(now)) / lim * float64(time.Second))
	}
	retry := 60
	if delay != rate.InfDuration {
		retry = max(1, int(math.Ceil(delay.Seconds())))
	}
	w.Header().Set("Retry-After", strconv.Itoa(retry))
	h.alerts.WithLabelValues(src.name, "rate_limited").Add(float64(n))
	h.log.Debug("rate limited", "source", src.name, "alerts", n, "retry_after_s", retry)
	return reply(w, http.StatusTooManyRequests, Response{Source: src.name, Error: fmt.Sprintf(
		"source %s is over its rate limit (%g alerts/s, burst %d); retry after %ds",
		src.name, float64(src.limiter.Limit()), src.limiter.Burst(), retry)})
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) int {
	name := r.PathValue("source")
	src, ok := h.sources[name]
	if !ok {
		return reply(w, http.StatusNotFound, Response{Error: "unknown source", Field: "source"})
	}
	fail := func(code int, field, format string, args ...any) int {
		return reply(w, code, Response{Source: name, Error: fmt.Sprintf(format, args...), Field: field})
	}
	if _, ok := src.auth.(*urlSecretAuth); !ok && r.PathValue(pathSecret) != "" {
		return reply(w, http.StatusNotFound, Response{Error: "unknown source", Field: "source"})
	}
	if !src.auth.needsBody() {
		if err := src.auth.check(r, nil, h.now()); err != nil {
			return h.unauthorized(w, r, src, err)
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, src.maxBody)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fail(http.StatusRequestEntityTooLarge, "body", "body over %d bytes", tooBig.Limit)
		}
		return fail(http.StatusBadRequest, "body", "read body: %v", err)
	}
	now := h.now() // after the body: a slow sender does not age its timestamp
	if src.auth.needsBody() {
		if err := src.auth.check(r, body, now); err != nil {
			return h.unauthorized(w, r, src, err)
		}
	}
	// A source with no token left is refused before its body is parsed;
	// then the delivery takes one token per alert: the rate limit counts
	// alerts, not deliveries.
	if src.limiter.TokensAt(now) < 1 {
		return h.rateLimited(w, src, now, 1)
	}
	alerts, err := src.parse(body)
	if err != nil {
		var te *TemplateError
		if errors.As(err, &te) {
			h.alerts.WithLabelValues(name, "template").Inc()
			h.log.Warn("webhook refused: unrendered template", "source", name, "field", te.Field, "placeholder", te.Kind)
			return fail(http.StatusUnprocessableEntity, te.Field, "%v", te)
		}
		h.alerts.WithLabelValues(name, "malformed").Inc()
		return fail(http.StatusBadRequest, "body", "%v", err)
	}
	if len(alerts) > src.maxAlerts {
		h.alerts.WithLabelValues(name, "too_many").Add(float64(len(alerts)))
		return fail(http.StatusRequestEntityTooLarge, "alerts", "delivery of %d alerts is over source %s's max_alerts %d; send fewer per delivery",
			len(alerts), name, src.maxAlerts)
	}
	if len(alerts) > src.limiter.Burst() {
		h.alerts.WithLabelValues(name, "too_many").Add(float64(len(alerts)))
		return fail(http.StatusRequestEntityTooLarge, "alerts", "delivery of %d alerts is over source %s's rate_limit.burst %d (the rate limit counts alerts); send fewer per delivery or raise it",
			len(alerts), name, src.limiter.Burst())
	}
	if code := h.takeTokens(w, src, now, len(alerts)); code != 0 {
		return code
	}

	// Finish what was started even if the sender hangs up: its retry is
	// then a duplicate rather than a half-done delivery.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 20*time.Second)
	defer cancel()
	resp := Response{Source: name, RequestIDs: []string{}, Alerts: make([]AlertResult, 0, len(alerts))}
	var unmatched []string
	for _, a := range alerts {
		res, err := h.process(ctx, src, a, now)
		if err != nil {
			res.Outcome, res.Reason = OutcomeFailed, err.Error()
			resp.Error = err.Error()
			resp.Alerts = append(resp.Alerts, res)
			h.alerts.WithLabelValues(name, OutcomeFailed).Inc()
			return reply(w, http.StatusServiceUnavailable, resp)
		}
		h.alerts.WithLabelValues(name, res.Outcome).Inc()
		if res.Outcome == OutcomeUnmatched {
			unmatched = append(unmatched, a.ID)
		}
		for _, q := range res.Requests {
			resp.RequestIDs = append(resp.RequestIDs, q.RequestID)
		}
		resp.Alerts = append(resp.Alerts, res)
	}
	if len(unmatched) > 0 {
		h.auditUnmatched(ctx, src, unmatched)
	}
	code := status(&resp)
	return reply(w, code, resp)
}

// status picks the reply's code from the alerts' outcomes: 202 as soon as
// one request was queued (or re-found as a duplicate), else the most
// telling failure, else 202 for a delivery with nothing to do.
func status(resp *Response) int {
	first := func(outcome string) (AlertResult, bool) {
		for _, a := range resp.Alerts {
			if a.Outcome == outcome {
				return a, true
			}
		}
		return AlertResult{}, false
	}
	if _, ok := first(OutcomeAccepted); ok {
		return http.StatusAccepted
	}
	if _, ok := first(OutcomeDuplicate); ok {
		return http.StatusAccepted
	}
	if a, ok := first(OutcomeInvalid); ok {
		resp.Error, resp.Field = a.Reason, a.Field
		return http.StatusUnprocessableEntity
	}
	if a, ok := first(OutcomeRefused); ok {
		resp.Error, resp.Field = a.Reason, a.Field
		return http.StatusForbidden
	}
	if _, ok := first(OutcomeUnmatched); ok {
		resp.Error = "no rule of source " + resp.Source + " matched"
		return http.StatusUnprocessableEntity
	}
	return http.StatusAccepted
}

func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request, src *source, err error) int {
	if c := src.auth.challenge(); c != "" {
		w.Header().Set("WWW-Authenticate", c)
	}
	h.alerts.WithLabelValues(src.name, "unauthorized").Inc()
	h.log.Warn("webhook refused: authentication failed", "source", src.name, "remote", r.RemoteAddr, "reason", err.Error())
	return reply(w, http.StatusUnauthorized, Response{Source: src.name, Error: err.Error()})
}

// severity re-normalises an alert's severity with the source's settings.
func (s *source) severity(a Alert) Severity {
	raw := a.RawSeverity
	if s.sevLabel != "" {
		raw = a.Labels[s.sevLabel]
	}
	if sev, ok := s.sevMap[strings.ToLower(strings.TrimSpace(raw))]; ok {
		return sev
	}
	sev := ParseSeverity(raw)
	if sev == SeverityUnknown {
		sev = s.defaultSev
	}
	return sev
}

func (r *rule) matches(a Alert) bool {
	for k, v := range r.match {
		if got, ok := a.Labels[k]; !ok || got != v {
			return false
		}
	}
	for k, re := range r.matchRE {
		if got, ok := a.Labels[k]; !ok || !re.MatchString(got) {
			return false
		}
	}
	return true
}

// target is one request an alert asks for.
type target struct{ tenant, secret string }

// process turns one alert into requests. Its error is errUnavailable only.
func (h *Handler) process(ctx context.Context, src *source, a Alert, now time.Time) (AlertResult, error) {
	res := AlertResult{ID: a.ID, Name: a.Name, Status: a.Status, Severity: src.severity(a)}
	if a.Status != StatusFiring {
		res.Outcome, res.Reason = OutcomeIgnored, "alert is "+string(a.Status)
		return res, nil
	}
	var chosen *rule
	below := ""
	for i := range src.rules {
		r := &src.rules[i]
		if !r.matches(a) {
			continue
		}
		if res.Severity < r.minSeverity {
			if below == "" {
				below = fmt.Sprintf("severity %s is below min_severity %s of rule %s", res.Severity, r.minSeverity, r.name)
			}
			continue
		}
		chosen = r
		break
	}
	if chosen == nil {
		if below != "" {
			res.Outcome, res.Reason = OutcomeIgnored, below
		} else {
			res.Outcome, res.Reason = OutcomeUnmatched, "no rule matched"
		}
		return res, nil
	}
	res.Rule, res.Action = chosen.name, chosen.action

	targets, field, reason, refused := h.targets(src, chosen, a)
	switch {
	case refused:
		res.Outcome, res.Reason, res.Field = OutcomeRefused, reason, field
		h.log.Warn("alert refused", "source", src.name, "alert_id", a.ID, "rule", chosen.name, "reason", reason)
		if t := targets[0].tenant; t != "" {
			h.record(ctx, src, a, chosen, t, targets[0].secret, schemas.OutcomeRefused, "", map[string]string{"reason": reason})
		}
		return res, nil
	case reason != "":
		res.Outcome, res.Reason, res.Field = OutcomeInvalid, reason, field
		h.log.Warn("alert refused", "source", src.name, "alert_id", a.ID, "rule", chosen.name, "reason", reason)
		if len(targets) > 0 {
			h.record(ctx, src, a, chosen, targets[0].tenant, targets[0].secret, schemas.OutcomeRefused, "", map[string]string{"reason": reason})
		}
		return res, nil
	}

	if field, reason := src.stale(a, now); reason != "" {
		res.Outcome, res.Reason, res.Field = OutcomeInvalid, reason, field
		h.log.Warn("alert refused", "source", src.name, "alert_id", a.ID, "rule", chosen.name, "reason", reason)
		h.record(ctx, src, a, chosen, targets[0].tenant, targets[0].secret, schemas.OutcomeRefused, "", map[string]string{"reason": reason})
		return res, nil
	}

	chosen, targets = h.canary(src, chosen, targets)
	res.Action = chosen.action
	fresh := 0
	for _, t := range targets {
		q, err := h.publish(ctx, src, a, chosen, t, now)
		if err != nil {
			return res, err
		}
		if !q.Duplicate {
			fresh++
		}
		res.Requests = append(res.Requests, q)
	}
	res.Outcome = OutcomeAccepted
	if fresh == 0 {
		res.Outcome = OutcomeDuplicate
	}
	return res, nil
}

// canary escalates an alert that names a canary secret (policy.canary):
// no one uses a canary, so an alert about it is proof of a leak, and it
// trips the tenant's kill switch (policy.on_canary revoke, the default) or
// rotates every secret of the tenant (rotate_tenant), whatever the rule
// says.
func (h *Handler) canary(src *source, r *rule, ts []target) (*rule, []target) {
	if r.action == ActionRevoke {
		return r, ts
	}
	for _, t := range ts {
		sc, _ := h.rekey.Secret(t.tenant, t.secret)
		if !sc.Policy.Canary {
			continue
		}
		esc := *r
		esc.name = r.name + "+canary"
		h.log.Warn("alert names a canary secret; escalating", "source", src.name, "tenant", t.tenant, "secret", t.secret,
			"on_canary", sc.Policy.LeakAction())
		if sc.Policy.LeakAction() == orchestrator.LeakRevoke {
			esc.action = ActionRevoke
			return &esc, []target{{tenant: t.tenant}}
		}
		var all []target
		for _, s := range h.rekey.TenantSecrets(t.tenant) {
			all = append(all, target{tenant: t.tenant, secret: s})
		}
		return &esc, all
	}
	return r, ts
}

// targets resolves the rule's tenant and secrets for alert a. On failure
// it returns the field (the label or config field) and the reason;
// refused is set when the tenant is valid but not allowed, and then
// targets[0] holds the tenant (for the audit record). An invalid secret
// of an allowed tenant also returns that tenant in targets[0].
func (h *Handler) targets(src *source, r *rule, a Alert) (ts []target, field, reason string, refused bool) {
	tenant, field := r.tenant, "tenant"
	if r.tenantLabel != "" {
		field = "labels." + r.tenantLabel
		v, ok := a.Labels[r.tenantLabel]
		if !ok || strings.TrimSpace(v) == "" {
			return nil, field, fmt.Sprintf("rule %s: alert has no label %q naming the tenant", r.name, r.tenantLabel), false
		}
		tenant = strings.TrimSpace(v)
	}
	if schemas.ValidateID("tenant", tenant) != nil {
		return nil, field, fmt.Sprintf("rule %s: %s", r.name, badID("tenant", tenant)), false
	}
	if !src.allowed[tenant] {
		reason := fmt.Sprintf("tenant %q is not allowed for source %s", tenant, src.name)
		if _, known := h.rekey.Tenants[tenant]; !known {
			return []target{{}}, field, reason, true // not audited: no such tenant
		}
		return []target{{tenant: tenant}}, field, reason, true
	}
	if r.action == ActionRevoke {
		return []target{{tenant: tenant}}, "", "", false
	}
	var secrets []string
	switch {
	case r.allSecrets:
		secrets = h.rekey.TenantSecrets(tenant)
	case r.secretLabel != "":
		field = "labels." + r.secretLabel
		v, ok := a.Labels[r.secretLabel]
		if !ok || strings.TrimSpace(v) == "" {
			return []target{{tenant: tenant}}, field, fmt.Sprintf("rule %s: alert has no label %q naming the secret", r.name, r.secretLabel), false
		}
		for s := range strings.SplitSeq(v, ",") {
			secrets = append(secrets, strings.TrimSpace(s))
		}
	default:
		field, secrets = "secrets", r.secrets
	}
	seen := map[string]bool{}
	for _, s := range secrets {
		if schemas.ValidateID("secret", s) != nil {
			return []target{{tenant: tenant}}, field, fmt.Sprintf("rule %s: %s", r.name, badID("secret", s)), false
		}
		if _, ok := h.rekey.Secret(tenant, s); !ok {
			return []target{{tenant: tenant}}, field, fmt.Sprintf("secret %q of tenant %q is not configured", s, tenant), false
		}
		if !seen[s] {
			seen[s] = true
			ts = append(ts, target{tenant: tenant, secret: s})
		}
	}
	if len(ts) == 0 {
		return []target{{tenant: tenant}}, field, fmt.Sprintf("rule %s: no secret named", r.name), false
	}
	return ts, "", "", false
}

// badID says why v is not a valid ID without repeating v: a label may
// hold anything, even the leaked credential an alert is about, and the
// reason goes into the reply, the log and the audit record.
func badID(kind, v string) string {
	var why []string
	if len(v) > 63 {
		why = append(why, fmt.Sprintf("is %d bytes long (at most 63)", len(v)))
	}
	var chars []string
	seen := map[rune]bool{}
	upper, other := false, false
	for i, c := range v {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		case c >= 'A' && c <= 'Z':
			upper = true
		case c > ' ' && c < 0x7f || c == ' ':
			if !seen[c] {
				seen[c] = true
				chars = append(chars, strconv.Quote(string(c)))
			}
		default:
			other = true
		}
	}
	if len(chars) > 0 {
		why = append(why, "contains "+strings.Join(chars, " "))
	}
	if upper {
		why = append(why, "has upper case letters")
	}
	if other {
		why = append(why, "has control or non-ASCII characters")
	}
	return fmt.Sprintf("%s id must match %s: it %s", kind, schemas.IDPattern, strings.Join(why, ", "))
}

// publish queues one request with an id derived from the alert, unless
// the same alert already queued it within the dedup window.
func (h *Handler) publish(ctx context.Context, src *source, a Alert, r *rule, t target, now time.Time) (Request, error) {
	key := dedupKey(src.name, a.ID, firedKey(a.FiredAt), t.tenant, t.secret, r.action)
	q := Request{Tenant: t.tenant, Secret: t.secret, Action: r.action}
	var (
		subject, typ, ceSubject string
		data                    any
	)
	trigger := schemas.Trigger{Kind: schemas.TriggerSIEM, Source: src.name, Actor: a.ID}
	reason := fmt.Sprintf("siem source %s, rule %s", src.name, r.name)
	if r.action == ActionRevoke {
		subject, typ, ceSubject = schemas.RevokeSubject(t.tenant), schemas.TypeRevocationRequested, t.tenant
		data = schemas.RevocationRequested{Tenant: t.tenant, Action: schemas.ActionRevoke, Reason: reason, Trigger: trigger, RequestedAt: now.UTC()}
	} else {
		subject, typ, ceSubject = schemas.RotateSubject(t.tenant, t.secret), schemas.TypeRotationRequested, t.tenant+"/"+t.secret
		data = schemas.RotationRequested{Tenant: t.tenant, Secret: t.secret, Reason: reason, Trigger: trigger, RequestedAt: now.UTC()}
	}
	q.Subject = subject
	if id, dup := h.dedup.seen(ctx, key, now, src.window); dup {
		q.RequestID, q.Duplicate = id, true
		return q, nil
	}
	ev, err := schemas.NewEvent(EventSource, typ, t.tenant, ceSubject, data)
	if err != nil {
		return q, fmt.Errorf("encode request: %w", err)
	}
	ev = ev.WithID(eventID(key, now, src.window))
	ack, err := h.bus.Publish(ctx, subject, ev)
	if err != nil {
		h.log.Error("request not queued", "source", src.name, "tenant", t.tenant, "secret", t.secret, "request_id", ev.ID, "error", err)
		return q, errUnavailable
	}
	q.RequestID, q.Duplicate = ev.ID, ack.Duplicate
	h.dedup.record(ctx, key, ev.ID, now, src.window)
	if ack.Duplicate {
		return q, nil
	}
	h.record(ctx, src, a, r, t.tenant, t.secret, schemas.OutcomeAccepted, ev.ID, nil)
	h.metrics.RequestsTotal.WithLabelValues(requestKind(r.action), "requested").Inc()
	h.log.Info("request queued", "source", src.name, "tenant", t.tenant, "secret", t.secret, "request_id", ev.ID,
		"subject", subject, "alert_id", a.ID, "rule", r.name)
	return q, nil
}

// futureSkew is how far in the future an alert's firing time may lie
// (clock skew between the sender and rekeyd).
const futureSkew = 5 * time.Minute

// stale applies require_timestamp: the alert must say when it started
// firing, and that must lie within the source's dedup window (older: it
// was acted on when it was new, or it is a replay of a captured delivery)
// and not beyond futureSkew ahead. Sources without require_timestamp take
// alerts of any age, as they always did (a compromise alert delayed by an
// outage of rekeyd still acts); their firing time, when the payload has
// one, still goes into the dedup key.
func (s *source) stale(a Alert, now time.Time) (field, reason string) {
	switch {
	case !s.needTime:
		return "", ""
	case a.FiredAt.IsZero():
		return "fired_at", fmt.Sprintf("source %s requires the alert's firing time (require_timestamp) and the alert has none", s.name)
	case now.Sub(a.FiredAt) > s.window:
		return "fired_at", fmt.Sprintf("alert fired at %s, longer ago than the dedup window %s: stale or replayed", a.FiredAt.Format(time.RFC3339), s.window)
	case a.FiredAt.Sub(now) > futureSkew:
		return "fired_at", fmt.Sprintf("alert fired at %s, more than %s in the future", a.FiredAt.Format(time.RFC3339), futureSkew)
	}
	return "", ""
}

// firedKey is the firing time's part of the dedup key ("" when unknown).
func firedKey(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func requestKind(action string) string {
	if action == ActionRevoke {
		return "revoke"
	}
	return "rotate"
}

// record writes an audit record about alert a. Detail carries the alert's
// id, status and severity and the rule, never the payload.
func (h *Handler) record(ctx context.Context, src *source, a Alert, r *rule, tenant, secret, outcome, requestID string, extra map[string]string) {
	action := "rotation.request"
	if r.action == ActionRevoke {
		action, secret = "revocation.revoke.request", ""
	}
	detail := map[string]string{
		"alert_id": a.ID, "format": src.format, "rule": r.name, "severity": src.severity(a).String(), "status": string(a.Status),
	}
	for k, v := range extra {
		detail[k] = v
	}
	_ = h.audit.Record(ctx, schemas.AuditRecord{
		Tenant: tenant, Secret: secret, Actor: "siem:" + src.name, Action: action, Outcome: outcome,
		RequestID: requestID, Component: "siem", Detail: detail,
	})
}

// auditUnmatched writes one record per allow-listed tenant of the source
// (the alerts named no tenant a rule could use) listing the alert ids.
func (h *Handler) auditUnmatched(ctx context.Context, src *source, ids []string) {
	const maxIDs = 20
	list := ids
	if len(list) > maxIDs {
		list = list[:maxIDs]
	}
	detail := map[string]string{
		"alert_ids": strings.Join(list, ","), "alerts": strconv.Itoa(len(ids)), "format": src.format, "reason": "no rule matched",
	}
	h.log.Info("alerts matched no rule", "source", src.name, "alerts", len(ids))
	for _, t := range src.tenants {
		_ = h.audit.Record(ctx, schemas.AuditRecord{
			Tenant: t, Actor: "siem:" + src.name, Action: "siem.alert", Outcome: schemas.OutcomeRefused,
			Component: "siem", Detail: detail,
		})
	}
}

func reply(w http.ResponseWriter, code int, v Response) int {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
	return code
}
