package fanout

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/internal/agentreq"
	"github.com/rekey-dev/rekey/schemas"
)

// ResyncQueue is the queue group of the resync servers: each request is
// answered by one rekeyd replica.
const ResyncQueue = "rekey-resync"

const resyncTimeout = 5 * time.Second

// ResyncServer answers agents' resync requests (schemas.ResyncSubject)
// with the last invalidation of the subject asked for, read from the
// INVALIDATE stream with a direct get. The reply is the direct get's
// answer as it came (headers Nats-Subject, or Status 404 when nothing was
// announced yet), sent only to an inbox of the tenant named in the
// subject.
//
// It exists so that agents need no JetStream API permission: JetStream
// answers whatever reply subject a request names, with the server's
// rights, so an agent allowed a direct get could aim the answer at any
// stream or bucket.
type ResyncServer struct {
	srv agentreq.Server // subscriptions and the reply check
	nc  *nats.Conn
	log *slog.Logger
}

// NewResyncServer returns a resync server for the configured tenants on nc
// (the fetch role's connection: it may read the INVALIDATE stream and
// publish to the tenants' agent inboxes only). nil tenants accepts every
// valid tenant ID (tests).
func NewResyncServer(nc *nats.Conn, tenants []string, log *slog.Logger) *ResyncServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &ResyncServer{nc: nc, log: log.With("component", "fanout.resync")}
	subjects := []string{schemas.SubjectResyncAll}
	if tenants != nil {
		subjects = subjects[:0]
		for _, t := range tenants {
			subjects = append(subjects, schemas.ResyncSubject(t, "*"))
		}
	}
	s.srv = agentreq.Server{NC: nc, Name: "resync server", Queue: ResyncQueue, Subjects: subjects, Handle: s.handle, Log: s.log}
	return s
}

// Refused is how many requests were dropped for their reply subject.
func (s *ResyncServer) Refused() int64 { return s.srv.Refused() }

// Run serves until ctx ends, then drains its subscriptions.
func (s *ResyncServer) Run(ctx context.Context) error { return s.srv.Run(ctx) }

// handle answers one request whose reply subject agentreq has checked
// (and whose tenant the subscription subjects already limit).
func (s *ResyncServer) handle(ctx context.Context, tenant string, m *nats.Msg) {
	token := m.Subject[len(schemas.ResyncSubject(tenant, "")):]
	if token != schemas.TenantToken && schemas.ValidateID("secret", token) != nil {
		s.log.WarnContext(ctx, "resync refused: not a secret of the tenant", "subject", m.Subject[:min(len(m.Subject), 200)])
		return
	}
	ctx, cancel := context.WithTimeout(ctx, resyncTimeout)
	defer cancel()
	last, err := s.nc.RequestWithContext(ctx,
		"$JS.API.DIRECT.GET."+schemas.StreamInvalidate+"."+schemas.InvalidateSubject(tenant, token), nil)
	if errors.Is(err, nats.ErrNoResponders) {
		// No INVALIDATE stream yet: nothing was ever announced.
		last, err = &nats.Msg{Header: nats.Header{"Status": []string{"404"}, "Description": []string{"No Invalidation Stream"}}}, nil
	}
	if err != nil {
		s.log.WarnContext(ctx, "resync: direct get", "tenant", tenant, "token", token, "error", err)
		return // the agent times out and retries
	}
	out := &nats.Msg{Subject: m.Reply, Header: last.Header, Data: last.Data}
	if err := s.nc.PublishMsg(out); err != nil {
		s.log.WarnContext(ctx, "resync: reply", "tenant", tenant, "error", err)
	}
}
