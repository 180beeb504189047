// Package agentreq serves agents' request/reply subjects (fetch, resync)
// the one way rekey allows: one set of queue subscriptions per tenant,
// each with a bounded pending buffer (one tenant's flood overflows its own
// buffers only), and a reply only on an inbox of the tenant named in the
// request subject (schemas.ReplyAllowed): NATS does not check a reply
// subject against the requester's permissions, so a responder that
// replied anywhere would publish, with its own rights, where its caller
// chose. Run it on a connection that may publish to the tenants' agent
// inboxes only.
package agentreq

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/schemas"
)

const (
	subsPerSubject = 2 // each with its own callback goroutine
	// pending is how many requests one tenant's subscriptions hold
	// together (half each); beyond, requests are dropped and the agent
	// waits out its fetch timeout (5 s) before asking again. After a
	// rotation every live agent of the tenant may fetch the new value at
	// once: it holds as many as fanout's default max_agents_per_tenant
	// (10,000), with room to spare. A request's data is at most a few
	// hundred bytes (pendingBytes bounds it, per subscription).
	pending      = 16384
	pendingBytes = 8 << 20
	flushTimeout = 5 * time.Second
	drainTimeout = 10 * time.Second
)

// Server answers requests on Subjects (one per tenant, or one wildcard in
// tests) in queue group Queue. Handle is called only for a request whose
// reply subject is an inbox of tenant, the second token of its subject.
type Server struct {
	NC       *nats.Conn
	Name     string // for logs and errors, e.g. "fetch server"
	Queue    string
	Subjects []string
	Handle   func(ctx context.Context, tenant string, m *nats.Msg)
	Log      *slog.Logger

	refused atomic.Int64
}

// Refused is how many requests were dropped for their subject or reply.
func (s *Server) Refused() int64 { return s.refused.Load() }

// Run serves until ctx ends, then drains (requests already received are
// answered, each under its own context) and returns nil.
func (s *Server) Run(ctx context.Context) error {
	reqCtx := context.WithoutCancel(ctx)
	var subs []*nats.Subscription
	var closed []<-chan nats.SubStatus
	defer func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe() // no-op once drained
		}
	}()
	for _, subject := range s.Subjects {
		for range subsPerSubject {
			sub, err := s.NC.QueueSubscribe(subject, s.Queue, func(m *nats.Msg) { s.handle(reqCtx, m) })
			if err != nil {
				return fmt.Errorf("%s: subscribe %s: %w", s.Name, subject, err)
			}
			if err := sub.SetPendingLimits(pending/subsPerSubject, pendingBytes); err != nil {
				return fmt.Errorf("%s: pending limits: %w", s.Name, err)
			}
			subs = append(subs, sub)
			closed = append(closed, sub.StatusChanged(nats.SubscriptionClosed))
		}
	}
	if err := s.NC.FlushTimeout(flushTimeout); err != nil && ctx.Err() == nil {
		return fmt.Errorf("%s: flush subscriptions: %w", s.Name, err)
	}
	s.Log.InfoContext(ctx, s.Name+" started", "subjects", len(s.Subjects), "queue", s.Queue)
	<-ctx.Done()
	for _, sub := range subs {
		if err := sub.Drain(); err != nil {
			s.Log.Warn(s.Name+": drain", "error", err)
		}
	}
	deadline := time.NewTimer(drainTimeout)
	defer deadline.Stop()
	for _, ch := range closed {
		select {
		case <-ch:
		case <-deadline.C:
			s.Log.Warn(s.Name+": drain timed out", "timeout", drainTimeout)
			return nil
		}
	}
	s.Log.Info(s.Name + " stopped")
	return nil
}

func (s *Server) handle(ctx context.Context, m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	// rekey.<kind>.<tenant>.<...>
	parts := strings.SplitN(m.Subject, ".", 4)
	if len(parts) < 4 || schemas.ValidateID("tenant", parts[2]) != nil || !schemas.ReplyAllowed(parts[2], m.Reply) {
		s.refused.Add(1)
		s.Log.WarnContext(ctx, s.Name+": request refused: reply subject is not an inbox of the tenant's agents",
			"subject", m.Subject[:min(len(m.Subject), 200)], "reply", m.Reply[:min(len(m.Reply), 200)])
		return
	}
	s.Handle(ctx, parts[2], m)
}
