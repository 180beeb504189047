package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// busAccess makes the kill switch cut a revoked tenant's agents off the
// embedded NATS server: once the tenant's revocation invalidation is
// published (so that every connected agent has dropped its cache and
// failed closed), the login gate refuses the tenant's agents and their
// live connections are closed, until the tenant is restored.
//
// A tenant is cut off while the last tenant-wide invalidation on
// rekey.invalidate.<t>._tenant says "revoked", or while its state cannot
// be read (fail closed). It is checked at start, at every tenant-wide
// invalidation, and every resyncInterval (a missed message, a restore
// made by another replica).
type busAccess struct {
	emb     *orchestrator.EmbeddedServer
	gate    *orchestrator.LoginGate
	bus     *orchestrator.Bus // the fanout role's: reads INVALIDATE and tenant state
	tenants *orchestrator.Tenants
	all     []string
	// cutDelay is how long after a revocation invalidation the cut waits,
	// so that the invalidation reaches every agent before its connection
	// is closed.
	cutDelay time.Duration
	log      *slog.Logger

	mu sync.Mutex // one apply at a time
}

const (
	busAccessResync   = 2 * time.Second
	busAccessCutDelay = 250 * time.Millisecond
)

func newBusAccess(emb *orchestrator.EmbeddedServer, gate *orchestrator.LoginGate, bus *orchestrator.Bus,
	tenants *orchestrator.Tenants, all []string, log *slog.Logger) *busAccess {
	return &busAccess{emb: emb, gate: gate, bus: bus, tenants: tenants, all: all, cutDelay: busAccessCutDelay,
		log: log.With("component", "bus-access")}
}

// apply decides, for every tenant, whether its agents may log in, tells
// the gate, and closes the live connections of every tenant cut off (also
// those that logged in just before the cut).
func (b *busAccess) apply(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	// One stream handle for every tenant's look-up (each Stream call is a
	// JetStream API request).
	stream, serr := b.bus.JS.Stream(ctx, schemas.StreamInvalidate)
	if serr != nil {
		serr = fmt.Errorf("stream %s: %w", schemas.StreamInvalidate, serr)
	}
	var errs []error
	for _, t := range b.all {
		off, err := true, serr
		if serr == nil {
			off, err = b.cutOff(ctx, stream, t)
		}
		if err != nil {
			b.log.Error("tenant's access undecidable: its agents stay off the bus", "tenant", t, "error", err)
			off = true
		}
		if off != b.gate.Cut(t) {
			b.log.Info("tenant's agents' bus access changed", "tenant", t, "cut_off", off)
		}
		b.gate.SetCut(t, off)
		if !off {
			continue
		}
		n, err := b.emb.DisconnectUsers(func(user string) bool { return orchestrator.IsAgentOf(user, t) })
		if err != nil {
			errs = append(errs, err)
		}
		if n > 0 {
			b.log.Info("revoked tenant's agent connections closed", "tenant", t, "connections", n)
		}
	}
	return errors.Join(errs...)
}

// cutOff reports whether tenant's agents must stay off the bus.
func (b *busAccess) cutOff(ctx context.Context, stream jetstream.Stream, tenant string) (bool, error) {
	// Unreadable state fails closed; a revoked state whose invalidation is
	// not out yet waits for it (the agents must get it first).
	if _, err := b.tenants.IsRevoked(ctx, tenant); err != nil {
		return true, err
	}
	m, err := stream.GetLastMsgForSubject(ctx, schemas.InvalidateSubject(tenant, schemas.TenantToken))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil // never revoked
	}
	if err != nil {
		return true, fmt.Errorf("last tenant invalidation of %s: %w", tenant, err)
	}
	var inv schemas.Invalidation
	if _, err := schemas.DecodeAs(m.Data, schemas.TypeInvalidation, &inv); err != nil {
		return true, fmt.Errorf("last tenant invalidation of %s: %w", tenant, err)
	}
	return inv.Kind == schemas.InvalidationRevoked, nil
}

// Start lets the agents of every tenant not cut off log in: the server
// starts with no agent users. New calls it, so that agents can connect as
// soon as New returns.
func (b *busAccess) Start(ctx context.Context) error {
	if err := b.apply(ctx); err != nil {
		return fmt.Errorf("bus access: %w", err)
	}
	return nil
}

// Run applies access again on every tenant-wide invalidation and every
// busAccessResync, until ctx ends.
func (b *busAccess) Run(ctx context.Context) error {
	kick := make(chan struct{}, 1)
	sub, err := b.bus.NC.Subscribe(schemas.InvalidateSubject("*", schemas.TenantToken), func(m *nats.Msg) {
		var inv schemas.Invalidation
		if _, err := schemas.DecodeAs(m.Data, schemas.TypeInvalidation, &inv); err != nil || !slices.Contains(b.all, inv.Tenant) {
			return
		}
		if inv.Kind == schemas.InvalidationRevoked {
			time.AfterFunc(b.cutDelay, func() { notify(kick) })
			return
		}
		notify(kick)
	})
	if err != nil {
		return fmt.Errorf("bus access: subscribe: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	t := time.NewTicker(busAccessResync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-t.C:
		}
		if err := b.apply(ctx); err != nil && ctx.Err() == nil {
			b.log.Error("bus access not applied", "error", err)
		}
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
