package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/schemas"
)

// ResyncQueue is the queue group of the resync servers: each request is
// answered by one rekeyd replica.
const ResyncQueue = "rekey-resync"

const (
	// Per tenant: each subscription has its own goroutine and pending
	// buffer, so one tenant's flood overflows its own buffer only.
	resyncSubscriptions = 2
	resyncPending       = 512
	resyncTimeout       = 5 * time.Second
)

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
	nc      *nats.Conn
	tenants []string
	log     *slog.Logger
	refused atomic.Int64
}

// NewResyncServer returns a resync server for the configured tenants on nc
// (the fetch role's connection: it may read the INVALIDATE stream and
// publish to the tenants' agent inboxes only). nil tenants accepts every
// valid tenant ID (tests).
func NewResyncServer(nc *nats.Conn, tenants []string, log *slog.Logger) *ResyncServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ResyncServer{nc: nc, tenants: slices.Clone(tenants), log: log.With("component", "fanout.resync")}
}

// Refused is how many requests were dropped for their subject or reply.
func (s *ResyncServer) Refused() int64 { return s.refused.Load() }

// Run serves until ctx ends, then drains its subscriptions.
func (s *ResyncServer) Run(ctx context.Context) error {
	reqCtx := context.WithoutCancel(ctx)
	var subs []*nats.Subscription
	defer func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe() // no-op once drained
		}
	}()
	subjects := []string{schemas.SubjectResyncAll}
	if s.tenants != nil {
		subjects = subjects[:0]
		for _, t := range s.tenants {
			subjects = append(subjects, schemas.ResyncSubject(t, "*"))
		}
	}
	for _, subject := range subjects {
		for range resyncSubscriptions {
			sub, err := s.nc.QueueSubscribe(subject, ResyncQueue, func(m *nats.Msg) { s.handle(reqCtx, m) })
			if err != nil {
				return fmt.Errorf("fanout: resync server: subscribe %s: %w", subject, err)
			}
			if err := sub.SetPendingLimits(resyncPending, resyncPending*1024); err != nil {
				return fmt.Errorf("fanout: resync server: pending limits: %w", err)
			}
			subs = append(subs, sub)
		}
	}
	if err := s.nc.FlushTimeout(resyncTimeout); err != nil && ctx.Err() == nil {
		return fmt.Errorf("fanout: resync server: flush subscriptions: %w", err)
	}
	s.log.InfoContext(ctx, "resync server started", "subject", schemas.SubjectResyncAll, "queue", ResyncQueue)
	<-ctx.Done()
	for _, sub := range subs {
		if err := sub.Drain(); err != nil {
			s.log.Warn("resync server: drain", "error", err)
		}
	}
	return nil
}

func (s *ResyncServer) handle(ctx context.Context, m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	tenant, token, ok := strings.Cut(strings.TrimPrefix(m.Subject, "rekey.resync."), ".")
	validToken := token == schemas.TenantToken || schemas.ValidateID("secret", token) == nil
	knownTenant := schemas.ValidateID("tenant", tenant) == nil && (s.tenants == nil || slices.Contains(s.tenants, tenant))
	if !ok || !knownTenant || !validToken || !schemas.ReplyAllowed(tenant, m.Reply) {
		s.refused.Add(1)
		s.log.WarnContext(ctx, "resync refused: unknown subject or reply subject not an inbox of the tenant's agents",
			"subject", m.Subject[:min(len(m.Subject), 200)], "reply", m.Reply[:min(len(m.Reply), 200)])
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
