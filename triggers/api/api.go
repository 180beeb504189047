// Package api is the HTTP API of rekeyd: it turns authenticated
// requests into rotation and revocation requests on NATS and reports a
// secret's status. It never calls a backend and never returns a value.
//
// Every request is authenticated into a Principal: the admin token reaches
// every route; a tenant token (checked by an Authenticator, see
// triggers/api/tenantauth) reaches only the self-service routes of its own
// tenant (rotate, list, status), and its rotations are spaced out by a
// Limiter. Anything else is 403 and audited as refused.
package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Config configures the API.
type Config struct {
	// AdminToken is the bearer token that reaches every route.
	AdminToken string
	// MaxBodyBytes bounds request bodies (default 1 MiB).
	MaxBodyBytes int64
	// Source is the CloudEvents source of the requests published.
	Source string
	// IdempotencyTTL is how long the answer to an Idempotency-Key is
	// replayed (default 24h).
	IdempotencyTTL time.Duration
	// QueuedPerTenant and QueuedPerSecret cap the requests waiting in
	// ROTATE (REVOKE for a tenant's revoke and restore): beyond them the
	// API answers 429 with Retry-After (nats.limits). 0: no cap.
	QueuedPerTenant, QueuedPerSecret int
}

// Validate checks the config.
func (c Config) Validate() error {
	if len(c.AdminToken) < 16 {
		return errors.New("httpapi: admin token must be at least 16 characters")
	}
	if c.IdempotencyTTL < 0 {
		return errors.New("httpapi: idempotency TTL must not be negative")
	}
	if c.QueuedPerTenant < 0 || c.QueuedPerSecret < 0 {
		return errors.New("httpapi: queued request caps must not be negative")
	}
	return nil
}

// API serves the /v1 routes and /openapi.json.
type API struct {
	cfg     Config
	rekey   *orchestrator.Config
	bus     *orchestrator.Bus
	state   *orchestrator.State
	audit   *orchestrator.Auditor
	metrics *orchestrator.Metrics
	log     *slog.Logger
	tokenID string
	idem    *idempotency
	now     func() time.Time

	deliveries Deliveries
	tenantAuth Authenticator
	limiter    Limiter
	storage    StorageGate
	streams    sync.Map // name -> jetstream.Stream, for queued counts
	routes     []string
}

// StorageGate says whether new requests for a stream are refused because
// it (or AUDIT) is nearly full (orchestrator.StorageMonitor).
type StorageGate interface {
	Refuses(stream string) (full string, refused bool)
}

// Deps are what the API is built with: rekeyd's common dependencies
// (Rekey, Bus and Audit required) and what its routes read or consult.
type Deps struct {
	orchestrator.Deps
	// State is read by the status routes (required).
	State *orchestrator.State
	// Storage makes the API refuse new requests (503) while their stream
	// or the audit stream is full; nil refuses nothing.
	Storage StorageGate
	// Deliveries reports the agents' acks of a secret's last
	// invalidation in its status; nil leaves it out.
	Deliveries Deliveries
	// Tenants turns a tenant token into a principal of its tenant, and
	// Limiter spaces out the rotations tenants ask for; with Tenants nil
	// only the admin token gets in.
	Tenants Authenticator
	Limiter Limiter
}

// New returns the API.
func New(cfg Config, deps Deps) (*API, error) {
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.Source == "" {
		cfg.Source = "rekeyd/httpapi"
	}
	if cfg.IdempotencyTTL == 0 {
		cfg.IdempotencyTTL = DefaultIdempotencyTTL
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := deps.Check("httpapi", "rekey", "bus", "audit"); err != nil {
		return nil, err
	}
	if deps.State == nil {
		return nil, errors.New("httpapi: deps: state is required")
	}
	return &API{cfg: cfg, rekey: deps.Rekey, bus: deps.Bus, state: deps.State, audit: deps.Audit, metrics: deps.Metrics,
		log: deps.Log.With("component", "httpapi"), tokenID: orchestrator.TokenID(cfg.AdminToken),
		idem: &idempotency{bus: deps.Bus, ttl: cfg.IdempotencyTTL}, now: time.Now,
		storage: deps.Storage, deliveries: deps.Deliveries, tenantAuth: deps.Tenants, limiter: deps.Limiter}, nil
}

// scope says which principals reach a route.
type scope int

const (
	adminOnly scope = iota // admin token only
	ownTenant              // admin, or a tenant token on its own tenant
)

// Register mounts the routes on mux.
func (a *API) Register(mux *http.ServeMux) {
	a.handle(mux, "POST /v1/tenants/{tenant}/secrets/{secret}/rotate", a.route("rotate", "rotation.request", ownTenant, a.rotate))
	a.handle(mux, "GET /v1/tenants/{tenant}/secrets/{secret}", a.route("secret_status", "status.read", ownTenant, a.secretStatus))
	a.handle(mux, "GET /v1/tenants/{tenant}/secrets", a.route("secret_list", "status.read", ownTenant, a.secretList))
	a.handle(mux, "GET /v1/tenants/{tenant}", a.route("tenant_status", "status.read", adminOnly, a.tenantStatus))
	a.handle(mux, "POST /v1/tenants/{tenant}/revoke", a.route("revoke", "revocation.revoke.request", adminOnly, a.revocation(schemas.ActionRevoke)))
	a.handle(mux, "POST /v1/tenants/{tenant}/restore", a.route("restore", "revocation.restore.request", adminOnly, a.revocation(schemas.ActionRestore)))
	a.handle(mux, "GET /openapi.json", http.HandlerFunc(serveOpenAPI))
}

func (a *API) handle(mux *http.ServeMux, pattern string, h http.Handler) {
	mux.Handle(pattern, h)
	a.routes = append(a.routes, pattern)
}

// Routes are the patterns Register mounted ("METHOD /path"), sorted.
func (a *API) Routes() []string {
	out := slices.Clone(a.routes)
	slices.Sort(out)
	return out
}

// requestTimeout bounds the NATS work of one API request.
const requestTimeout = 4 * time.Second

// apiError is the JSON body of every error reply.
type apiError struct {
	Status int    `json:"-"`
	Error  string `json:"error"`
	Field  string `json:"field,omitempty"`
}

func errorf(status int, field, format string, args ...any) *apiError {
	return &apiError{Status: status, Field: field, Error: fmt.Sprintf(format, args...)}
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, p Principal) (int, any, *apiError)

// route authenticates, checks the principal's scope, runs h and writes
// its JSON reply. action names the route in audit records of refusals.
func (a *API) route(name, action string, sc scope, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// NATS calls (tenant state, idempotency, publish) retry through a
		// reconnect or a failover, but never longer than this: a client
		// gets its 503 (and retries) instead of hanging.
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		var code int
		var body any
		var p Principal
		apiErr := checkHeaders(r)
		if apiErr == nil {
			if p, apiErr = a.authenticate(r); apiErr != nil {
				w.Header().Set("WWW-Authenticate", `Bearer realm="rekey"`)
			}
		}
		if apiErr == nil {
			apiErr = a.authorize(r, p, sc, action)
		}
		if apiErr == nil {
			r.Body = http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes)
			code, body, apiErr = h(w, r, p)
		}
		if apiErr != nil {
			code, body = apiErr.Status, apiErr
		}
		writeJSON(w, code, body)
		a.metrics.HTTPRequestsTotal.WithLabelValues(name, strconv.Itoa(code)).Inc()
	})
}

// authorize keeps tenant principals on their own tenant's self-service
// routes, and out while their tenant is revoked (fail closed). Every
// refusal is audited in the token's tenant's trail.
func (a *API) authorize(r *http.Request, p Principal, sc scope, action string) *apiError {
	if p.Kind == PrincipalAdmin {
		return nil
	}
	target := r.PathValue("tenant")
	var refusal *apiError
	switch {
	case sc == adminOnly:
		refusal = errorf(http.StatusForbidden, "", "a tenant token may not call %s", r.Pattern)
	case target != p.Tenant:
		refusal = errorf(http.StatusForbidden, "tenant", "a tenant token only reaches its own tenant")
	default:
		revoked, err := a.state.IsRevoked(r.Context(), p.Tenant)
		if err != nil {
			return errorf(http.StatusServiceUnavailable, "", "tenant state unavailable, retry")
		}
		if revoked {
			refusal = errorf(http.StatusForbidden, "tenant", "tenant %q is revoked", p.Tenant)
		}
	}
	if refusal == nil {
		return nil
	}
	detail := map[string]string{"route": r.Pattern, "reason": refusal.Error, "remote": r.RemoteAddr}
	if schemas.ValidateID("tenant", target) == nil {
		detail["target_tenant"] = target
	} else {
		detail["target_tenant"] = "(invalid)"
	}
	if s := r.PathValue("secret"); s != "" && schemas.ValidateID("secret", s) == nil {
		detail["target_secret"] = s
	}
	_ = a.audit.Record(r.Context(), schemas.AuditRecord{
		Tenant: p.Tenant, Actor: p.Actor(), Action: action, Outcome: schemas.OutcomeRefused,
		Component: "httpapi", Detail: detail,
	})
	a.log.Warn("tenant request refused", "tenant", p.Tenant, "token_id", p.TokenID, "target_tenant", detail["target_tenant"],
		"action", action, "reason", refusal.Error)
	return refusal
}

// ids validates the path IDs, then checks they are configured.
func (a *API) ids(r *http.Request, withSecret bool) (string, string, *apiError) {
	t := r.PathValue("tenant")
	if err := schemas.ValidateID("tenant", t); err != nil {
		return "", "", errorf(http.StatusBadRequest, "tenant", "%v", err)
	}
	s := ""
	if withSecret {
		s = r.PathValue("secret")
		if err := schemas.ValidateID("secret", s); err != nil {
			return "", "", errorf(http.StatusBadRequest, "secret", "%v", err)
		}
	}
	if _, ok := a.rekey.Tenants[t]; !ok {
		return "", "", errorf(http.StatusNotFound, "tenant", "tenant %q is not configured", t)
	}
	if withSecret {
		if _, ok := a.rekey.Secret(t, s); !ok {
			return "", "", errorf(http.StatusNotFound, "secret", "secret %q of tenant %q is not configured", s, t)
		}
	}
	return t, s, nil
}

// requestBody is the optional JSON body of POST routes.
type requestBody struct {
	Reason string `json:"reason"`
}

func readBody(w http.ResponseWriter, r *http.Request) (requestBody, *apiError) {
	var body requestBody
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		var netErr net.Error
		switch {
		case errors.As(err, &tooBig):
			return body, errorf(http.StatusRequestEntityTooLarge, "", "body over %d bytes", tooBig.Limit)
		case errors.As(err, &netErr) && netErr.Timeout():
			// A body too slow to arrive gets an answer, not a closed
			// connection; the connection is not reused.
			w.Header().Set("Connection", "close")
			return body, errorf(http.StatusRequestTimeout, "body", "body not received in time")
		}
		return body, errorf(http.StatusBadRequest, "body", "read body: %v", err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return body, nil
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return body, jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return body, errorf(http.StatusBadRequest, "body", "invalid JSON body: data after the JSON object")
	}
	// encoding/json turns invalid UTF-8 (raw, or a lone surrogate escape)
	// into U+FFFD silently: refuse it instead of storing a mangled reason.
	if !utf8.ValidString(body.Reason) || strings.ContainsRune(body.Reason, utf8.RuneError) || !utf8.Valid(b) {
		return body, errorf(http.StatusBadRequest, "reason", "reason is not valid UTF-8")
	}
	if len(body.Reason) > 512 {
		return body, errorf(http.StatusBadRequest, "reason", "reason is over 512 characters")
	}
	return body, nil
}

// jsonError names the field of a JSON decoding error where it can.
func jsonError(err error) *apiError {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return errorf(http.StatusBadRequest, typeErr.Field, "invalid JSON body: %s must be a %s, not %s", typeErr.Field, typeErr.Type, typeErr.Value)
	case errors.As(err, &typeErr):
		return errorf(http.StatusBadRequest, "body", "invalid JSON body: must be an object, not %s", typeErr.Value)
	case errors.As(err, &syntaxErr):
		return errorf(http.StatusBadRequest, "body", "invalid JSON body at byte %d: %v", syntaxErr.Offset, err)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		return errorf(http.StatusBadRequest, name, "invalid JSON body: unknown field %q", name)
	}
	return errorf(http.StatusBadRequest, "body", "invalid JSON body: %v", err)
}

// Header lengths: a header over its bound gets 431 before anything else.
const maxAuthorization = 4096

// checkHeaders refuses an over-long header the API reads (the server
// already answers 431 when all headers together exceed its limit).
func checkHeaders(r *http.Request) *apiError {
	for _, h := range []struct {
		name string
		max  int
	}{{"Authorization", maxAuthorization}, {"Idempotency-Key", maxIdempotencyKey}} {
		if n := len(r.Header.Get(h.name)); n > h.max {
			return errorf(http.StatusRequestHeaderFieldsTooLarge, h.name, "header %s is over %d characters", h.name, h.max)
		}
	}
	return nil
}

// Accepted is the reply to a request that was queued.
type Accepted struct {
	RequestID string `json:"request_id"`
	Subject   string `json:"subject"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// triggerOf is what a principal's requests say asked for them.
func triggerOf(p Principal) schemas.Trigger {
	if p.Kind == PrincipalTenant {
		return schemas.Trigger{Kind: schemas.TriggerTenant, Source: "selfservice", Actor: p.TokenID}
	}
	return schemas.Trigger{Kind: schemas.TriggerAPI, Source: "admin", Actor: p.TokenID}
}

func (a *API) rotate(w http.ResponseWriter, r *http.Request, p Principal) (int, any, *apiError) {
	t, s, apiErr := a.ids(r, true)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	body, apiErr := readBody(w, r)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	reason := body.Reason
	if reason == "" {
		reason = "requested through the admin API"
		if p.Kind == PrincipalTenant {
			reason = "requested through the self-service API"
		}
	}
	req := schemas.RotationRequested{
		Tenant: t, Secret: s, Reason: reason, RequestedAt: a.now().UTC(), Trigger: triggerOf(p),
	}
	return a.request(w, r, p, outgoing{
		tenant: t, secret: s, subject: schemas.RotateSubject(t, s), typ: schemas.TypeRotationRequested,
		data: req, action: "rotation.request", fingerprint: fingerprint(body.Reason),
		limited: p.Kind == PrincipalTenant,
	})
}

func (a *API) revocation(action string) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, p Principal) (int, any, *apiError) {
		t, _, apiErr := a.ids(r, false)
		if apiErr != nil {
			return 0, nil, apiErr
		}
		body, apiErr := readBody(w, r)
		if apiErr != nil {
			return 0, nil, apiErr
		}
		req := schemas.RevocationRequested{
			Tenant: t, Action: action, Reason: body.Reason, RequestedAt: a.now().UTC(), Trigger: triggerOf(p),
		}
		return a.request(w, r, p, outgoing{
			tenant: t, subject: schemas.RevokeSubject(t), typ: schemas.TypeRevocationRequested,
			data: req, action: "revocation." + action + ".request", fingerprint: fingerprint(action, body.Reason),
		})
	}
}

// outgoing is a request about to be published.
type outgoing struct {
	tenant, secret string
	subject, typ   string
	data           any
	action         string
	// fingerprint identifies the request's content for Idempotency-Key.
	fingerprint string
	// limited: subject to the Limiter (tenant-initiated rotations).
	limited bool
}

// request publishes o once. With an Idempotency-Key, the first answer is
// kept in KV and a retry gets it back (marked duplicate) without anything
// new being started; the key also derives the event id, so that JetStream
// drops a second publish within its duplicate window as well.
func (a *API) request(w http.ResponseWriter, r *http.Request, p Principal, o outgoing) (int, any, *apiError) {
	key := r.Header.Get("Idempotency-Key")
	// Claims are settled even when the client went away.
	bg := context.WithoutCancel(r.Context())
	var stored *idemRecord
	published := false
	if key != "" {
		k := idemKey(p, r.Method, r.URL.EscapedPath(), key)
		rev, old, err := a.idem.claim(r.Context(), k, o.fingerprint, a.now())
		if err != nil {
			a.log.Error("idempotency store unavailable", "tenant", o.tenant, "secret", o.secret, "error", err)
			return 0, nil, errorf(http.StatusServiceUnavailable, "", "request not queued: idempotency store unavailable, retry")
		}
		if old != nil {
			return a.replay(w, o, old)
		}
		stored = &idemRecord{Started: a.now().UTC(), Fingerprint: o.fingerprint}
		defer func() {
			ctx, cancel := context.WithTimeout(bg, 5*time.Second)
			defer cancel()
			if stored.Reply == nil {
				if err := a.idem.release(ctx, k, rev); err != nil {
					a.log.Warn("idempotency key not released", "tenant", o.tenant, "secret", o.secret, "error", err)
				}
				return
			}
			if err := a.idem.complete(ctx, k, rev, *stored); err != nil {
				a.log.Warn("idempotent answer not stored", "tenant", o.tenant, "secret", o.secret,
					"request_id", stored.Reply.RequestID, "error", err)
			}
		}()
	}
	// After the claim, so that a retry of a request already accepted gets
	// its answer; a refusal releases the claim (stored.Reply is nil).
	if apiErr := a.admit(w, r, p, o); apiErr != nil {
		return 0, nil, apiErr
	}
	if o.limited && a.limiter != nil {
		undo, err := a.limiter.Reserve(r.Context(), o.tenant, o.secret)
		var tooSoon *TooSoonError
		if errors.As(err, &tooSoon) {
			secs := max(1, int(math.Ceil(tooSoon.RetryAfter.Seconds())))
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			_ = a.audit.Record(r.Context(), schemas.AuditRecord{
				Tenant: o.tenant, Secret: o.secret, Actor: p.Actor(), Action: o.action, Outcome: schemas.OutcomeRateLimited,
				Component: "httpapi", Detail: map[string]string{"remote": r.RemoteAddr, "retry_after_s": strconv.Itoa(secs)},
			})
			return 0, nil, errorf(http.StatusTooManyRequests, "", "secret %q was rotated through the self-service API less than the minimum interval ago; retry in %ds", o.secret, secs)
		}
		if err != nil {
			a.log.Error("rate limiter unavailable", "tenant", o.tenant, "secret", o.secret, "error", err)
			return 0, nil, errorf(http.StatusServiceUnavailable, "", "request not queued: NATS unavailable, retry")
		}
		if undo != nil {
			defer func() {
				if !published {
					ctx, cancel := context.WithTimeout(bg, 5*time.Second)
					defer cancel()
					undo(ctx)
				}
			}()
		}
	}
	code, acc, apiErr := a.publish(r, p, o, key)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	published = true
	if stored != nil {
		stored.Status, stored.Reply = code, &acc
	}
	return code, acc, nil
}

// admit refuses a request that would overfill storage: 503 while its
// stream or AUDIT is full, 429 while its tenant (or secret) has too many
// requests queued. Both are audited and say when to retry.
func (a *API) admit(w http.ResponseWriter, r *http.Request, p Principal, o outgoing) *apiError {
	stream := schemas.StreamRotate
	if o.secret == "" {
		stream = schemas.StreamRevoke
	}
	refuse := func(status int, retry, reason string, detail map[string]string) *apiError {
		w.Header().Set("Retry-After", retry)
		detail["remote"], detail["reason"] = r.RemoteAddr, reason
		outcome := schemas.OutcomeRefused
		if status == http.StatusTooManyRequests {
			outcome = schemas.OutcomeRateLimited
		}
		_ = a.audit.Record(r.Context(), schemas.AuditRecord{
			Tenant: o.tenant, Secret: o.secret, Actor: p.Actor(), Action: o.action, Outcome: outcome,
			Component: "httpapi", Detail: detail,
		})
		return errorf(status, "", "request not queued: %s", reason)
	}
	if a.storage != nil {
		if full, refused := a.storage.Refuses(stream); refused {
			a.log.Warn("request refused: storage full", "tenant", o.tenant, "secret", o.secret, "stream", full)
			return refuse(http.StatusServiceUnavailable, "30", "storage full ("+full+"), retry later", map[string]string{"stream": full})
		}
	}
	if a.cfg.QueuedPerTenant == 0 && a.cfg.QueuedPerSecret == 0 {
		return nil
	}
	filter := schemas.RevokeSubject(o.tenant)
	if o.secret != "" {
		filter = strings.TrimSuffix(o.subject, o.secret) + ">"
	}
	s, err := a.stream(r.Context(), stream)
	var subjects map[string]uint64
	if err == nil {
		var info *jetstream.StreamInfo
		info, err = s.Info(r.Context(), jetstream.WithSubjectFilter(filter))
		if err == nil {
			subjects = info.State.Subjects
		}
	}
	if err != nil {
		a.log.Error("queued requests unknown", "tenant", o.tenant, "secret", o.secret, "error", err)
		return errorf(http.StatusServiceUnavailable, "", "request not queued: NATS unavailable, retry")
	}
	var tenant uint64
	for _, n := range subjects {
		tenant += n
	}
	if a.cfg.QueuedPerTenant > 0 && tenant >= uint64(a.cfg.QueuedPerTenant) {
		return refuse(http.StatusTooManyRequests, "1", fmt.Sprintf("tenant %q has %d requests queued (limit %d), retry later", o.tenant, tenant, a.cfg.QueuedPerTenant),
			map[string]string{"queued": strconv.FormatUint(tenant, 10)})
	}
	if n := subjects[o.subject]; o.secret != "" && a.cfg.QueuedPerSecret > 0 && n >= uint64(a.cfg.QueuedPerSecret) {
		return refuse(http.StatusTooManyRequests, "1", fmt.Sprintf("secret %q has %d requests queued (limit %d), retry later", o.secret, n, a.cfg.QueuedPerSecret),
			map[string]string{"queued": strconv.FormatUint(n, 10)})
	}
	return nil
}

// stream returns a handle on a stream, looked up once.
func (a *API) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	if s, ok := a.streams.Load(name); ok {
		return s.(jetstream.Stream), nil
	}
	s, err := a.bus.JS.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	a.streams.Store(name, s)
	return s, nil
}

// replay answers a retried request from its stored record.
func (a *API) replay(w http.ResponseWriter, o outgoing, old *idemRecord) (int, any, *apiError) {
	switch {
	case old.Fingerprint != o.fingerprint:
		return 0, nil, errorf(http.StatusUnprocessableEntity, "Idempotency-Key", "Idempotency-Key was already used for a different request")
	case old.Pending || old.Reply == nil:
		w.Header().Set("Retry-After", "1")
		return 0, nil, errorf(http.StatusConflict, "Idempotency-Key", "a request with this Idempotency-Key is still in progress; retry")
	}
	w.Header().Set("Idempotent-Replayed", "true")
	acc := *old.Reply
	acc.Duplicate = true
	a.log.Info("request replayed", "tenant", o.tenant, "secret", o.secret, "request_id", acc.RequestID)
	return old.Status, acc, nil
}

// publish sends a request event and audits it.
func (a *API) publish(r *http.Request, p Principal, o outgoing, idempotencyKey string) (int, Accepted, *apiError) {
	ceSubject := o.tenant
	if o.secret != "" {
		ceSubject += "/" + o.secret
	}
	ev, err := schemas.NewEvent(a.cfg.Source, o.typ, o.tenant, ceSubject, o.data)
	if err != nil {
		return 0, Accepted{}, errorf(http.StatusInternalServerError, "", "encode request: %v", err)
	}
	if idempotencyKey != "" {
		// Admin ids are derived as they always were; a tenant's are
		// scoped, so that a tenant cannot shadow an admin's request.
		in := o.subject + "\x00" + idempotencyKey
		if p.Kind == PrincipalTenant {
			in = "tenant:" + p.Tenant + "\x00" + in
		}
		h := sha256.Sum256([]byte(in))
		ev = ev.WithID("idem-" + hex.EncodeToString(h[:16]))
	}
	ack, err := a.bus.Publish(r.Context(), o.subject, ev)
	if err != nil {
		a.log.Error("request not queued", "tenant", o.tenant, "secret", o.secret, "request_id", ev.ID, "error", err)
		return 0, Accepted{}, errorf(http.StatusServiceUnavailable, "", "request not queued: NATS unavailable, retry")
	}
	_ = a.audit.Record(r.Context(), schemas.AuditRecord{
		Tenant: o.tenant, Secret: o.secret, Actor: p.Actor(), Action: o.action, Outcome: schemas.OutcomeAccepted,
		RequestID: ev.ID, Component: "httpapi", Detail: map[string]string{"remote": r.RemoteAddr, "duplicate": strconv.FormatBool(ack.Duplicate)},
	})
	a.log.Info("request queued", "tenant", o.tenant, "secret", o.secret, "request_id", ev.ID, "subject", o.subject,
		"duplicate", ack.Duplicate, "principal", string(p.Kind), "token_id", p.TokenID)
	return http.StatusAccepted, Accepted{RequestID: ev.ID, Subject: o.subject, Duplicate: ack.Duplicate}, nil
}

// InvalidationStatus says which agents confirmed the latest invalidation
// of a secret (fanout tracks it from agents' acks and heartbeats).
type InvalidationStatus struct {
	RequestID   string    `json:"request_id"`
	Kind        string    `json:"kind"`
	Version     string    `json:"version,omitempty"`
	PublishedAt time.Time `json:"published_at"`
	// LiveAgents were alive (heartbeating) when it was published.
	LiveAgents int `json:"live_agents"`
	// Acked are the agents that confirmed it, Missing the live ones that
	// have not (agents that stopped heartbeating are not listed).
	Acked     []string `json:"acked"`
	Missing   []string `json:"missing"`
	LastAckMS float64  `json:"last_ack_ms"`
	// AckedCount and MissingCount are the lengths of the full lists; a
	// reply lists at most MaxListedAgents of each (the *Truncated flag
	// says so), so it stays small however many agents a tenant has.
	AckedCount       int  `json:"acked_count"`
	MissingCount     int  `json:"missing_count"`
	AckedTruncated   bool `json:"acked_truncated,omitempty"`
	MissingTruncated bool `json:"missing_truncated,omitempty"`
}

// MaxListedAgents bounds the agents a status reply names in each of
// InvalidationStatus.Acked and Missing.
const MaxListedAgents = 1000

// bounded counts the lists and keeps at most MaxListedAgents of each.
func (s InvalidationStatus) bounded() InvalidationStatus {
	s.AckedCount, s.MissingCount = len(s.Acked), len(s.Missing)
	if len(s.Acked) > MaxListedAgents {
		s.Acked, s.AckedTruncated = s.Acked[:MaxListedAgents], true
	}
	if len(s.Missing) > MaxListedAgents {
		s.Missing, s.MissingTruncated = s.Missing[:MaxListedAgents], true
	}
	return s
}

// Deliveries reports the latest invalidation of a secret; fanout
// implements it (through an adapter in cmd/).
type Deliveries interface {
	LatestInvalidation(tenant, secret string) (InvalidationStatus, bool)
}

// SecretStatus is the reply of GET /v1/tenants/{t}/secrets/{s}.
type SecretStatus struct {
	Tenant          string        `json:"tenant"`
	Secret          string        `json:"secret"`
	Backend         string        `json:"backend"`
	State           string        `json:"state"`
	Version         string        `json:"version,omitempty"`
	PreviousVersion string        `json:"previous_version,omitempty"`
	Rotations       int64         `json:"rotations"`
	TenantRevoked   bool          `json:"tenant_revoked"`
	LastRotation    *LastRotation `json:"last_rotation,omitempty"`
	LastError       string        `json:"last_error,omitempty"`
	LastFailedAt    *time.Time    `json:"last_failed_at,omitempty"`
	// Invalidation is the latest invalidation this rekeyd published for
	// the secret and the agents' acks, when known.
	Invalidation *InvalidationStatus `json:"invalidation,omitempty"`
}

// LastRotation describes the last completed rotation.
type LastRotation struct {
	RequestID   string          `json:"request_id"`
	Reason      string          `json:"reason"`
	Trigger     schemas.Trigger `json:"trigger"`
	StartedAt   time.Time       `json:"started_at"`
	CompletedAt time.Time       `json:"completed_at"`
}

func (a *API) secretStatus(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, *apiError) {
	t, s, apiErr := a.ids(r, true)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	ts, err := a.state.TenantState(r.Context(), t)
	if err != nil {
		return 0, nil, errorf(http.StatusServiceUnavailable, "", "tenant state unavailable: %v", err)
	}
	out, apiErr := a.status(r.Context(), t, s, ts)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	return http.StatusOK, out, nil
}

// status is one secret's status, with its latest invalidation if known.
func (a *API) status(ctx context.Context, t, s string, ts orchestrator.TenantState) (SecretStatus, *apiError) {
	st, err := a.state.SecretStatus(ctx, t, s)
	if err != nil {
		return SecretStatus{}, errorf(http.StatusServiceUnavailable, "", "status unavailable: %v", err)
	}
	out := toStatus(st, ts, a.rekey)
	if a.deliveries != nil {
		if inv, ok := a.deliveries.LatestInvalidation(t, s); ok {
			inv = inv.bounded()
			out.Invalidation = &inv
		}
	}
	return out, nil
}

// SecretList is the reply of GET /v1/tenants/{t}/secrets.
type SecretList struct {
	Tenant        string         `json:"tenant"`
	TenantRevoked bool           `json:"tenant_revoked"`
	Secrets       []SecretStatus `json:"secrets"`
}

func (a *API) secretList(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, *apiError) {
	t, _, apiErr := a.ids(r, false)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	ts, secrets, apiErr := a.tenantSecrets(r.Context(), t)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	return http.StatusOK, SecretList{Tenant: t, TenantRevoked: ts.Revoked, Secrets: secrets}, nil
}

// tenantSecrets reads a tenant's revocation state and every secret's status.
func (a *API) tenantSecrets(ctx context.Context, t string) (orchestrator.TenantState, []SecretStatus, *apiError) {
	ts, err := a.state.TenantState(ctx, t)
	if err != nil {
		return ts, nil, errorf(http.StatusServiceUnavailable, "", "tenant state unavailable: %v", err)
	}
	out := []SecretStatus{}
	for _, s := range a.rekey.TenantSecrets(t) {
		st, apiErr := a.status(ctx, t, s, ts)
		if apiErr != nil {
			return ts, nil, apiErr
		}
		out = append(out, st)
	}
	return ts, out, nil
}

func toStatus(st orchestrator.SecretStatus, ts orchestrator.TenantState, cfg *orchestrator.Config) SecretStatus {
	out := SecretStatus{
		Tenant: st.Tenant, Secret: st.Secret, Backend: st.Backend, State: st.State, Version: st.Version,
		PreviousVersion: st.PreviousVersion, Rotations: st.Rotations, TenantRevoked: ts.Revoked, LastError: st.LastError,
	}
	if out.Backend == "" {
		sc, _ := cfg.Secret(st.Tenant, st.Secret)
		out.Backend = sc.Backend
	}
	if !st.LastCompletedAt.IsZero() {
		out.LastRotation = &LastRotation{RequestID: st.LastRequestID, Reason: st.LastReason, Trigger: st.LastTrigger,
			StartedAt: st.LastStartedAt, CompletedAt: st.LastCompletedAt}
	}
	if !st.LastFailedAt.IsZero() {
		f := st.LastFailedAt
		out.LastFailedAt = &f
	}
	return out
}

// TenantStatus is the reply of GET /v1/tenants/{t}.
type TenantStatus struct {
	Tenant    string         `json:"tenant"`
	Revoked   bool           `json:"revoked"`
	Since     *time.Time     `json:"since,omitempty"`
	RequestID string         `json:"request_id,omitempty"`
	Secrets   []SecretStatus `json:"secrets"`
}

func (a *API) tenantStatus(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, *apiError) {
	t, _, apiErr := a.ids(r, false)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	ts, secrets, apiErr := a.tenantSecrets(r.Context(), t)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	out := TenantStatus{Tenant: t, Revoked: ts.Revoked, RequestID: ts.RequestID, Secrets: secrets}
	if !ts.Since.IsZero() {
		out.Since = &ts.Since
	}
	return http.StatusOK, out, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
