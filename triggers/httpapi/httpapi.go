// Package httpapi is the admin HTTP API of rekeyd: it turns authenticated
// requests into rotation and revocation requests on NATS and reports a
// secret's status. It never calls a backend and never returns a value.
package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Config configures the API.
type Config struct {
	// AdminToken is the bearer token every route requires.
	AdminToken string
	// MaxBodyBytes bounds request bodies (default 1 MiB).
	MaxBodyBytes int64
	// Source is the CloudEvents source of the requests published.
	Source string
}

// Validate checks the config.
func (c Config) Validate() error {
	if len(c.AdminToken) < 16 {
		return errors.New("httpapi: admin token must be at least 16 characters")
	}
	return nil
}

// API serves the /v1 admin routes.
type API struct {
	cfg     Config
	rekey   *orchestrator.Config
	bus     *orchestrator.Bus
	state   *orchestrator.State
	audit   *orchestrator.Auditor
	metrics *orchestrator.Metrics
	log     *slog.Logger
	tokenID string

	deliveries Deliveries
}

// New returns the API.
func New(cfg Config, rekey *orchestrator.Config, bus *orchestrator.Bus, state *orchestrator.State,
	audit *orchestrator.Auditor, metrics *orchestrator.Metrics, log *slog.Logger) (*API, error) {
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.Source == "" {
		cfg.Source = "rekeyd/httpapi"
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &API{cfg: cfg, rekey: rekey, bus: bus, state: state, audit: audit, metrics: metrics,
		log: log.With("component", "httpapi"), tokenID: orchestrator.TokenID(cfg.AdminToken)}, nil
}

// Register mounts the routes on mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.Handle("POST /v1/tenants/{tenant}/secrets/{secret}/rotate", a.route("rotate", a.rotate))
	mux.Handle("GET /v1/tenants/{tenant}/secrets/{secret}", a.route("secret_status", a.secretStatus))
	mux.Handle("GET /v1/tenants/{tenant}", a.route("tenant_status", a.tenantStatus))
	mux.Handle("POST /v1/tenants/{tenant}/revoke", a.route("revoke", a.revocation(schemas.ActionRevoke)))
	mux.Handle("POST /v1/tenants/{tenant}/restore", a.route("restore", a.revocation(schemas.ActionRestore)))
}

// apiError is the JSON body of every error reply.
type apiError struct {
	Status int    `json:"-"`
	Error  string `json:"error"`
	Field  string `json:"field,omitempty"`
}

func errorf(status int, field, format string, args ...any) *apiError {
	return &apiError{Status: status, Field: field, Error: fmt.Sprintf(format, args...)}
}

type handlerFunc func(w http.ResponseWriter, r *http.Request) (int, any, *apiError)

// route authenticates, runs h and writes its JSON reply.
func (a *API) route(name string, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status, body, apiErr := a.authenticate(r), any(nil), (*apiError)(nil)
		if status != nil {
			apiErr = status
			w.Header().Set("WWW-Authenticate", `Bearer realm="rekey"`)
		} else {
			r.Body = http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes)
			var code int
			code, body, apiErr = h(w, r)
			if apiErr == nil {
				writeJSON(w, code, body)
				a.metrics.HTTPRequestsTotal.WithLabelValues(name, fmt.Sprint(code)).Inc()
				return
			}
		}
		writeJSON(w, apiErr.Status, apiErr)
		a.metrics.HTTPRequestsTotal.WithLabelValues(name, fmt.Sprint(apiErr.Status)).Inc()
	})
}

func (a *API) authenticate(r *http.Request) *apiError {
	h := r.Header.Get("Authorization")
	if h == "" {
		return errorf(http.StatusUnauthorized, "", "missing Authorization: Bearer <admin token>")
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return errorf(http.StatusUnauthorized, "", "Authorization must be a Bearer token")
	}
	// Compare digests so the comparison takes the same time whatever the length.
	got, want := sha256.Sum256([]byte(strings.TrimSpace(tok))), sha256.Sum256([]byte(a.cfg.AdminToken))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return errorf(http.StatusUnauthorized, "", "invalid admin token")
	}
	return nil
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

func readBody(r *http.Request) (requestBody, *apiError) {
	var body requestBody
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return body, errorf(http.StatusRequestEntityTooLarge, "", "body over %d bytes", tooBig.Limit)
		}
		return body, errorf(http.StatusBadRequest, "", "read body: %v", err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return body, nil
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return body, errorf(http.StatusBadRequest, "body", "invalid JSON body: %v", err)
	}
	if len(body.Reason) > 512 {
		return body, errorf(http.StatusBadRequest, "reason", "reason is over 512 characters")
	}
	return body, nil
}

// Accepted is the reply to a request that was queued.
type Accepted struct {
	RequestID string `json:"request_id"`
	Subject   string `json:"subject"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

func (a *API) rotate(_ http.ResponseWriter, r *http.Request) (int, any, *apiError) {
	t, s, apiErr := a.ids(r, true)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	body, apiErr := readBody(r)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	reason := body.Reason
	if reason == "" {
		reason = "requested through the admin API"
	}
	req := schemas.RotationRequested{
		Tenant: t, Secret: s, Reason: reason, RequestedAt: time.Now().UTC(),
		Trigger: schemas.Trigger{Kind: schemas.TriggerAPI, Source: "admin", Actor: a.tokenID},
	}
	return a.publish(r, t, s, schemas.RotateSubject(t, s), schemas.TypeRotationRequested, req, "rotation.request")
}

func (a *API) revocation(action string) handlerFunc {
	return func(_ http.ResponseWriter, r *http.Request) (int, any, *apiError) {
		t, _, apiErr := a.ids(r, false)
		if apiErr != nil {
			return 0, nil, apiErr
		}
		body, apiErr := readBody(r)
		if apiErr != nil {
			return 0, nil, apiErr
		}
		req := schemas.RevocationRequested{
			Tenant: t, Action: action, Reason: body.Reason, RequestedAt: time.Now().UTC(),
			Trigger: schemas.Trigger{Kind: schemas.TriggerAPI, Source: "admin", Actor: a.tokenID},
		}
		return a.publish(r, t, "", schemas.RevokeSubject(t), schemas.TypeRevocationRequested, req, "revocation."+action+".request")
	}
}

// publish sends a request event. An Idempotency-Key header derives the
// event id, so a retried HTTP call is dropped by JetStream as a duplicate.
func (a *API) publish(r *http.Request, t, s, subject, typ string, data any, action string) (int, any, *apiError) {
	ceSubject := t
	if s != "" {
		ceSubject += "/" + s
	}
	ev, err := schemas.NewEvent(a.cfg.Source, typ, t, ceSubject, data)
	if err != nil {
		return 0, nil, errorf(http.StatusInternalServerError, "", "encode request: %v", err)
	}
	if key := r.Header.Get("Idempotency-Key"); key != "" {
		if len(key) > 200 {
			return 0, nil, errorf(http.StatusBadRequest, "Idempotency-Key", "header is over 200 characters")
		}
		h := sha256.Sum256([]byte(subject + "\x00" + key))
		ev = ev.WithID("idem-" + hex.EncodeToString(h[:16]))
	}
	ack, err := a.bus.Publish(r.Context(), subject, ev)
	if err != nil {
		a.log.Error("request not queued", "tenant", t, "secret", s, "request_id", ev.ID, "err", err)
		return 0, nil, errorf(http.StatusServiceUnavailable, "", "request not queued: NATS unavailable, retry")
	}
	_ = a.audit.Record(r.Context(), schemas.AuditRecord{
		Tenant: t, Secret: s, Actor: "api:" + a.tokenID, Action: action, Outcome: schemas.OutcomeAccepted,
		RequestID: ev.ID, Component: "httpapi", Detail: map[string]string{"remote": r.RemoteAddr, "duplicate": fmt.Sprint(ack.Duplicate)},
	})
	a.log.Info("request queued", "tenant", t, "secret", s, "request_id", ev.ID, "subject", subject, "duplicate", ack.Duplicate)
	return http.StatusAccepted, Accepted{RequestID: ev.ID, Subject: subject, Duplicate: ack.Duplicate}, nil
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
}

// Deliveries reports the latest invalidation of a secret; fanout
// implements it (through an adapter in cmd/).
type Deliveries interface {
	LatestInvalidation(tenant, secret string) (InvalidationStatus, bool)
}

// SetDeliveries makes secret status replies include who confirmed the
// latest invalidation.
func (a *API) SetDeliveries(d Deliveries) { a.deliveries = d }

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

func (a *API) secretStatus(_ http.ResponseWriter, r *http.Request) (int, any, *apiError) {
	t, s, apiErr := a.ids(r, true)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	st, err := a.state.SecretStatus(r.Context(), t, s)
	if err != nil {
		return 0, nil, errorf(http.StatusServiceUnavailable, "", "status unavailable: %v", err)
	}
	ts, err := a.state.TenantState(r.Context(), t)
	if err != nil {
		return 0, nil, errorf(http.StatusServiceUnavailable, "", "tenant state unavailable: %v", err)
	}
	out := toStatus(st, ts, a.rekey)
	if a.deliveries != nil {
		if inv, ok := a.deliveries.LatestInvalidation(t, s); ok {
			out.Invalidation = &inv
		}
	}
	return http.StatusOK, out, nil
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

func (a *API) tenantStatus(_ http.ResponseWriter, r *http.Request) (int, any, *apiError) {
	t, _, apiErr := a.ids(r, false)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	ts, err := a.state.TenantState(r.Context(), t)
	if err != nil {
		return 0, nil, errorf(http.StatusServiceUnavailable, "", "tenant state unavailable: %v", err)
	}
	out := TenantStatus{Tenant: t, Revoked: ts.Revoked, RequestID: ts.RequestID}
	if !ts.Since.IsZero() {
		out.Since = &ts.Since
	}
	for _, s := range a.rekey.TenantSecrets(t) {
		st, err := a.state.SecretStatus(r.Context(), t, s)
		if err != nil {
			return 0, nil, errorf(http.StatusServiceUnavailable, "", "status unavailable: %v", err)
		}
		out.Secrets = append(out.Secrets, toStatus(st, ts, a.rekey))
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
