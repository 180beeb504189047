package local

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/agentreq"
	"github.com/rekey-dev/rekey/schemas"
)

// FetchQueue is the queue group of the fetch servers: each request is
// answered by one rekeyd replica.
const FetchQueue = "rekey-local-fetch"

// fetchTimeout bounds the work for one request.
const fetchTimeout = 5 * time.Second

// Server answers agents' fetch requests (schemas.FetchSubject) with the
// current value of a local secret.
type Server struct {
	srv     agentreq.Server // subscriptions and the reply check
	b       *Backend
	resolve func(tenant, secret string) (handlers.SecretRef, bool)
	revoked func(ctx context.Context, tenant string) (bool, error)
	log     *slog.Logger
	served  ServedFunc // nil: nobody is told
}

// ServedFunc is told of each value served: the tenant, the secret, its
// version and the instance that asked (see requester; empty if unknown).
// It never sees the value. It must return quickly.
type ServedFunc func(ctx context.Context, tenant, secret, version, instance string)

// requester is the instance that asked: the instance token of the reply
// inbox when it is an instance inbox (_INBOX_<tenant>.<instance>.<id>.<id>,
// agent.NATSOptions), which NATS enforces for an agent with its own
// identity; else the agent the request names (the tenant-wide login may
// claim any name of its tenant either way); else empty.
func requester(tenant, reply, claimed string) string {
	rest, ok := strings.CutPrefix(reply, schemas.AgentInboxPrefix(tenant)+".")
	if tokens := strings.Split(rest, "."); ok && len(tokens) >= 3 && schemas.ValidateInstance(tokens[0]) == nil {
		return tokens[0]
	}
	if schemas.ValidateInstance(claimed) == nil {
		return claimed
	}
	return ""
}

// Refused is how many requests were dropped because their reply subject
// was not an inbox of the tenant they asked about.
func (s *Server) Refused() int64 { return s.srv.Refused() }

// NewServer returns a fetch server for b. Each of tenants gets its own
// subscriptions (nil tenants: shared ones, for tests). resolve maps the IDs in a request
// subject to a configured secret (false: no such secret); revoked tells
// whether a tenant is revoked, and an error there fails closed. A nil
// resolve knows no secret; a nil revoked means no tenant is ever revoked.
//
// served, if set, is told of each value served, e.g. to watch who fetches
// a canary secret.
func NewServer(nc *nats.Conn, tenants []string, b *Backend, resolve func(tenant, secret string) (handlers.SecretRef, bool),
	revoked func(ctx context.Context, tenant string) (bool, error), served ServedFunc, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if resolve == nil {
		resolve = func(string, string) (handlers.SecretRef, bool) { return handlers.SecretRef{}, false }
	}
	if revoked == nil {
		revoked = func(context.Context, string) (bool, error) { return false, nil }
	}
	s := &Server{b: b, resolve: resolve, revoked: revoked, served: served, log: log.With("component", "backend.local.fetch")}
	subjects := []string{schemas.SubjectFetchAll}
	if tenants != nil {
		subjects = subjects[:0]
		for _, t := range tenants {
			subjects = append(subjects, schemas.FetchSubject(t, "*"))
		}
	}
	s.srv = agentreq.Server{NC: nc, Name: "fetch server", Queue: FetchQueue, Subjects: subjects, Handle: s.handle, Log: s.log}
	return s
}

// Run serves until ctx ends, then drains its subscriptions (requests already
// received are answered) and returns nil.
func (s *Server) Run(ctx context.Context) error { return s.srv.Run(ctx) }

// handle answers one request whose reply subject agentreq has checked.
func (s *Server) handle(ctx context.Context, _ string, m *nats.Msg) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()

	var req schemas.FetchRequest
	_ = json.Unmarshal(m.Data, &req) // optional; only used for the log
	resp := s.answer(ctx, m.Subject, req.Agent)
	if s.served != nil && resp.Code == "" && resp.Version != "" {
		s.served(ctx, resp.Tenant, resp.Secret, resp.Version, requester(resp.Tenant, m.Reply, req.Agent))
	}
	data, err := json.Marshal(resp)
	clear(resp.Value)
	if err != nil {
		s.log.ErrorContext(ctx, "fetch: encode reply", "error", err)
		return
	}
	err = m.Respond(data)
	clear(data)
	if err != nil {
		s.log.WarnContext(ctx, "fetch: reply", "subject", m.Subject, "error", err)
	}
}

// answer builds the reply for one request subject. Only a successful reply
// carries a value.
func (s *Server) answer(ctx context.Context, subject, agent string) schemas.FetchResponse {
	tokens := strings.Split(subject, ".")
	if len(tokens) != 4 {
		return schemas.FetchResponse{Code: schemas.FetchInvalid, Error: "subject is not rekey.fetch.<tenant>.<secret>"}
	}
	tenant, secret := tokens[2], tokens[3]
	if err := schemas.ValidateRef(tenant, secret); err != nil {
		return schemas.FetchResponse{Code: schemas.FetchInvalid, Error: err.Error()}
	}
	log := s.log.With("tenant", tenant, "secret", secret, "agent", agent)

	revoked, err := s.revoked(ctx, tenant)
	if err != nil {
		log.ErrorContext(ctx, "fetch: revocation state unknown, refusing", "error", err)
		return schemas.FetchResponse{Code: schemas.FetchInternal, Error: "revocation state unavailable"}
	}
	if revoked {
		log.InfoContext(ctx, "fetch refused: tenant revoked")
		return schemas.FetchResponse{Code: schemas.FetchRevoked, Error: handlers.ErrRevoked.Error()}
	}
	ref, ok := s.resolve(tenant, secret)
	if !ok {
		log.DebugContext(ctx, "fetch: unknown secret")
		return schemas.FetchResponse{Code: schemas.FetchNotFound, Error: "unknown secret " + tenant + "/" + secret}
	}
	version, value, err := s.b.Read(ctx, ref)
	if errors.Is(err, handlers.ErrNotFound) {
		log.DebugContext(ctx, "fetch: no version")
		return schemas.FetchResponse{Code: schemas.FetchNotFound, Error: "secret " + tenant + "/" + secret + " has no version"}
	}
	if err != nil {
		log.ErrorContext(ctx, "fetch failed", "error", err)
		return schemas.FetchResponse{Code: schemas.FetchInternal, Error: "cannot read secret"}
	}
	log.DebugContext(ctx, "fetch served", "version", version)
	return schemas.FetchResponse{Tenant: tenant, Secret: secret, Version: version, Value: value}
}
