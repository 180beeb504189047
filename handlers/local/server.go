package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/schemas"
)

// FetchQueue is the queue group of the fetch servers: each request is
// answered by one rekeyd replica.
const FetchQueue = "rekey-local-fetch"

const (
	// fetchSubscriptions is how many queue subscriptions one Server holds
	// per tenant; each has its own callback goroutine and pending buffer,
	// so one tenant's flood fills and overflows its own buffers only.
	fetchSubscriptions = 2
	// fetchPending bounds the requests one subscription holds; beyond, the
	// client library drops them (the requester times out and retries).
	fetchPending = 512
	// fetchTimeout bounds the work for one request.
	fetchTimeout = 5 * time.Second
	// drainTimeout bounds the wait for in-flight requests at shutdown.
	drainTimeout = 10 * time.Second
)

// Server answers agents' fetch requests (schemas.FetchSubject) with the
// current value of a local secret.
type Server struct {
	nc      *nats.Conn
	tenants []string // nil: one set of subscriptions for all (tests)
	b       *Backend
	resolve func(tenant, secret string) (handlers.SecretRef, bool)
	revoked func(ctx context.Context, tenant string) (bool, error)
	log     *slog.Logger
	// refused counts requests dropped for their reply subject.
	refused atomic.Int64
}

// Refused is how many requests were dropped because their reply subject
// was not an inbox of the tenant they asked about.
func (s *Server) Refused() int64 { return s.refused.Load() }

// NewServer returns a fetch server for b. Each of tenants gets its own
// subscriptions (nil tenants: shared ones, for tests). resolve maps the IDs in a request
// subject to a configured secret (false: no such secret); revoked tells
// whether a tenant is revoked, and an error there fails closed. A nil
// resolve knows no secret; a nil revoked means no tenant is ever revoked.
func NewServer(nc *nats.Conn, tenants []string, b *Backend, resolve func(tenant, secret string) (handlers.SecretRef, bool), revoked func(ctx context.Context, tenant string) (bool, error), log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if resolve == nil {
		resolve = func(string, string) (handlers.SecretRef, bool) { return handlers.SecretRef{}, false }
	}
	if revoked == nil {
		revoked = func(context.Context, string) (bool, error) { return false, nil }
	}
	return &Server{nc: nc, tenants: slices.Clone(tenants), b: b, resolve: resolve, revoked: revoked, log: log.With("component", "backend.local.fetch")}
}

// Run serves until ctx ends, then drains its subscriptions (requests already
// received are answered) and returns nil.
func (s *Server) Run(ctx context.Context) error {
	// In-flight requests finish even when ctx ends; each has its own timeout.
	reqCtx := context.WithoutCancel(ctx)
	var subs []*nats.Subscription
	var closed []<-chan nats.SubStatus
	defer func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe() // no-op once drained
		}
	}()
	subjects := []string{schemas.SubjectFetchAll}
	if s.tenants != nil {
		subjects = subjects[:0]
		for _, t := range s.tenants {
			subjects = append(subjects, schemas.FetchSubject(t, "*"))
		}
	}
	for _, subject := range subjects {
		for range fetchSubscriptions {
			sub, err := s.nc.QueueSubscribe(subject, FetchQueue, func(m *nats.Msg) { s.handle(reqCtx, m) })
			if err != nil {
				return fmt.Errorf("local: fetch server: subscribe %s: %w", subject, err)
			}
			if err := sub.SetPendingLimits(fetchPending, fetchPending*4096); err != nil {
				return fmt.Errorf("local: fetch server: pending limits: %w", err)
			}
			subs = append(subs, sub)
			closed = append(closed, sub.StatusChanged(nats.SubscriptionClosed))
		}
	}
	if err := s.nc.FlushTimeout(fetchTimeout); err != nil && ctx.Err() == nil {
		return fmt.Errorf("local: fetch server: flush subscriptions: %w", err)
	}
	s.log.InfoContext(ctx, "fetch server started", "subject", schemas.SubjectFetchAll, "queue", FetchQueue)

	<-ctx.Done()

	// Stop taking work, then wait for what was taken.
	for _, sub := range subs {
		if err := sub.Drain(); err != nil {
			s.log.Warn("fetch server: drain", "error", err)
		}
	}
	deadline := time.NewTimer(drainTimeout)
	defer deadline.Stop()
	for _, ch := range closed {
		select {
		case <-ch:
		case <-deadline.C:
			s.log.Warn("fetch server: drain timed out", "timeout", drainTimeout)
			return nil
		}
	}
	s.log.Info("fetch server stopped")
	return nil
}

func (s *Server) handle(ctx context.Context, m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	// Reply only to an inbox of the tenant named in the subject: NATS does
	// not check the reply subject against the requester's permissions, so
	// anything else would publish the tenant's value, with this
	// connection's rights, wherever the requester chose.
	tenant, _, _ := strings.Cut(strings.TrimPrefix(m.Subject, "rekey.fetch."), ".")
	if schemas.ValidateID("tenant", tenant) != nil || !schemas.ReplyAllowed(tenant, m.Reply) {
		s.log.WarnContext(ctx, "fetch refused: reply subject is not an inbox of the tenant's agents",
			"subject", m.Subject, "reply", m.Reply[:min(len(m.Reply), 200)])
		s.refused.Add(1)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()

	var req schemas.FetchRequest
	_ = json.Unmarshal(m.Data, &req) // optional; only used for the log
	resp := s.answer(ctx, m.Subject, req.Agent)
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
