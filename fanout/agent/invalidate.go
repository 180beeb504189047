package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/schemas"
)

// invalidation is a parsed, checked invalidation message.
type invalidation struct {
	id    string // CloudEvents ID
	token string // last subject token: a secret or schemas.TenantToken
	at    time.Time
	inv   schemas.Invalidation
}

// olderThan orders invalidations of one subject by publication time, then
// by ID (ULIDs sort by time).
func (p invalidation) olderThan(m mark) bool {
	return p.at.Before(m.at) || (p.at.Equal(m.at) && p.id < m.id)
}

// parseInvalidation checks one message received on subject against the
// tenant the agent serves. Anything that is not a well-formed invalidation
// of this tenant, consistent with its subject, is an error.
func parseInvalidation(tenant, subject string, data []byte) (invalidation, error) {
	token, err := subjectToken(invalidatePrefix(tenant), subject)
	if err != nil {
		return invalidation{}, err
	}
	var inv schemas.Invalidation
	ev, err := schemas.DecodeAs(data, schemas.TypeInvalidation, &inv) // one pass: this runs in every agent
	if err != nil {
		return invalidation{}, err
	}
	if ev.Tenant != tenant {
		return invalidation{}, fmt.Errorf("event %s is for tenant %q: %w", ev.ID, ev.Tenant, schemas.ErrMalformed)
	}
	if inv.Tenant != tenant {
		return invalidation{}, fmt.Errorf("event %s: invalidation is for tenant %q: %w", ev.ID, inv.Tenant, schemas.ErrMalformed)
	}
	if token == schemas.TenantToken {
		if inv.Secret != "" || (inv.Kind != schemas.InvalidationRevoked && inv.Kind != schemas.InvalidationRestored) {
			return invalidation{}, fmt.Errorf("event %s: %s on %s must be a tenant revoked or restored: %w", ev.ID, inv.Kind, subject, schemas.ErrMalformed)
		}
	} else if inv.Secret != token {
		return invalidation{}, fmt.Errorf("event %s: secret %q received on %s: %w", ev.ID, inv.Secret, subject, schemas.ErrMalformed)
	}
	at := inv.PublishedAt
	if at.IsZero() {
		at = ev.Time
	}
	return invalidation{id: ev.ID, token: token, at: at, inv: inv}, nil
}

// invalidatePrefix is what the invalidation subjects of tenant start with.
func invalidatePrefix(tenant string) string { return schemas.InvalidateSubject(tenant, "") }

// subjectToken returns the last token of an invalidation subject that
// starts with prefix (invalidatePrefix): a secret or schemas.TenantToken.
func subjectToken(prefix, subject string) (string, error) {
	token, ok := strings.CutPrefix(subject, prefix)
	if !ok || token == "" || strings.Contains(token, ".") {
		return "", fmt.Errorf("subject %q is not %s<secret>: %w", truncate(subject, 200), prefix, schemas.ErrMalformed)
	}
	return token, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// handleMsg is the callback of the live subscription.
//
// On a secret's subject the cached value is dropped the moment the message
// arrives, before it is decoded: only rekeyd may publish there, and a drop
// is always safe (the next Get fetches). Decoding, the checks, the ordering
// mark, the ack and OnInvalidate follow AckDelay later, on the ack loop,
// so that when one host runs thousands of agents every one of them has
// dropped the value before any spends its CPU on the rest. A tenant-wide
// invalidation (revoked or restored) is decoded at once: what it does
// depends on its kind.
func (a *Agent) handleMsg(m *nats.Msg) {
	received := time.Now()
	token, err := subjectToken(a.invPrefix, m.Subject)
	if err != nil {
		a.log.Debug("ignoring invalidation message", "subject", m.Subject, "error", err)
		return
	}
	if token != schemas.TenantToken && a.cfg.AckDelay >= 0 {
		a.mu.Lock()
		a.dropLocked(token)
		dropped := time.Now()
		a.mu.Unlock()
		a.ackMu.Lock()
		a.live = append(a.live, liveDrop{subject: m.Subject, data: m.Data, received: received, dropped: dropped})
		a.armAckTimerLocked(m.Header)
		a.ackMu.Unlock()
		return
	}
	if ack, ok := a.settle(m.Subject, m.Data, received, time.Time{}); ok {
		a.queueAck(ack, m.Header)
	}
}

// ackDelay is how long the acks of a live invalidation with headers h
// wait: Config.AckDelay, or the longer delay fanout asks for in
// schemas.HeaderAckDelay (as long as delivering it to the tenant's live
// agents takes) plus up to half again at random, so that thousands of
// agents' acks neither slow that delivery down nor arrive all at once.
func (a *Agent) ackDelay(h nats.Header) time.Duration {
	d := a.cfg.AckDelay
	ms, err := strconv.Atoi(h.Get(schemas.HeaderAckDelay))
	if err != nil || ms <= 0 {
		return d
	}
	asked := time.Duration(min(ms, schemas.MaxAckDelayMS)) * time.Millisecond
	return max(d, asked) + rand.N(asked/2+1)
}

// liveDrop is a live invalidation of one secret whose value was dropped on
// arrival and which the ack loop has yet to decode.
type liveDrop struct {
	subject           string
	data              []byte
	received, dropped time.Time
}

// settle decodes and applies a live invalidation (dropped, when not zero,
// is when its secret's value was already dropped) and returns its ack.
func (a *Agent) settle(subject string, data []byte, received, dropped time.Time) (schemas.InvalidationAck, bool) {
	p, err := parseInvalidation(a.cfg.Tenant, subject, data)
	if err != nil {
		a.log.Debug("ignoring invalidation message", "subject", subject, "error", err)
		return schemas.InvalidationAck{}, false
	}
	return a.apply(p, received, dropped, false)
}

// apply applies one invalidation, live or replayed, and returns its ack
// when it is to be acked. A live one always drops and acks; predropped, if
// not zero, is when handleMsg already dropped its secret's value. A
// replayed one (resync) changes only what it finds out of date, is acked
// only then, and is skipped when it, or an invalidation published later
// on the same subject, was already applied.
func (a *Agent) apply(p invalidation, received, predropped time.Time, replayed bool) (schemas.InvalidationAck, bool) {
	// The logger with attributes is built only when something is logged:
	// apply runs for every agent on every invalidation.
	log := func() *slog.Logger {
		return a.log.With("secret", p.token, "request_id", p.inv.RequestID, "kind", p.inv.Kind, "version", p.inv.Version)
	}
	debug := a.log.Enabled(context.Background(), slog.LevelDebug)
	tenantWide := p.token == schemas.TenantToken
	a.mu.Lock()
	m, seen := a.marks[p.token]
	older := seen && p.olderThan(m)
	// A replayed invalidation already applied, or outdated, is skipped. A
	// live one is applied even if it looks older (clocks of rekeyd
	// replicas may differ), since dropping is always safe, except for a
	// restore: it must never undo a later revocation.
	if (replayed && (older || (seen && p.id == m.id))) ||
		(!replayed && older && tenantWide && p.inv.Kind == schemas.InvalidationRestored) {
		a.mu.Unlock()
		if debug {
			log().Debug("invalidation already applied or outdated", "event", p.id, "replayed", replayed)
		}
		return schemas.InvalidationAck{}, false
	}
	if !older {
		a.marks[p.token] = mark{at: p.at, id: p.id}
	}

	var changed, ack bool
	switch {
	case tenantWide && p.inv.Kind == schemas.InvalidationRevoked:
		was := a.gate.Load()&gateRevoked != 0
		a.gate.Or(gateRevoked)
		dropped := a.dropAllLocked()
		changed = !was || dropped
		ack = !replayed || changed
	case tenantWide: // restored
		changed = a.gate.Load()&gateRevoked != 0
		a.gate.And(^gateRevoked)
	case p.inv.Kind == schemas.InvalidationRestored:
		// Nothing is held back per secret; nothing to do.
	case replayed:
		// Missed while away: drop what differs from the last version
		// rekey announced. An in-flight fetch may predate it: restart it.
		if e := (*a.cache.Load())[p.token]; e != nil && e.secret.Version != p.inv.Version {
			changed = a.dropLocked(p.token)
		} else if st := a.states[p.token]; st != nil {
			st.epoch++
		}
		ack = changed
	default: // live rotated (or revoked) secret, unless handleMsg dropped it on arrival
		if predropped.IsZero() {
			a.dropLocked(p.token)
		}
		changed, ack = true, true
	}
	dropped := predropped
	if dropped.IsZero() {
		dropped = time.Now()
	}
	a.mu.Unlock()

	if p.inv.Kind == schemas.InvalidationRestored && changed {
		log().Info("tenant restored")
	} else if tenantWide && changed {
		log().Warn("tenant revoked: cache dropped, failing closed")
	} else if debug {
		log().Debug("invalidation applied", "replayed", replayed, "changed", changed)
	}
	if a.cfg.OnInvalidate != nil && (changed || !replayed) {
		a.cfg.OnInvalidate(Invalidated{Invalidation: p.inv, EventTime: p.at, ReceivedAt: received, DroppedAt: dropped})
	}
	if !ack {
		return schemas.InvalidationAck{}, false
	}
	return newAck(a.cfg, p, received, dropped), true
}

// newAck is the confirmation that p was applied.
func newAck(cfg Config, p invalidation, received, dropped time.Time) schemas.InvalidationAck {
	ack := schemas.InvalidationAck{
		Tenant:     cfg.Tenant,
		Agent:      cfg.Instance,
		Version:    p.inv.Version,
		RequestID:  p.inv.RequestID,
		ReceivedAt: received.UTC(),
		DroppedAt:  dropped.UTC(),
	}
	if p.token != schemas.TenantToken {
		ack.Secret = p.token
	}
	return ack
}

// queueAck sends ack on AckSubject after the delay of the invalidation
// with headers h (see ackDelay; nil: Config.AckDelay), at once if
// Config.AckDelay is negative.
func (a *Agent) queueAck(ack schemas.InvalidationAck, h nats.Header) {
	if a.cfg.AckDelay < 0 {
		a.sendAck(ack)
		return
	}
	a.ackMu.Lock()
	a.acks = append(a.acks, ack)
	a.armAckTimerLocked(h)
	a.ackMu.Unlock()
}

// armAckTimerLocked starts the delay of the invalidation with headers h
// when its ack or live drop is the first to wait; later ones leave with
// it, and their delay is not computed. The caller holds a.ackMu and has
// just added one.
func (a *Agent) armAckTimerLocked(h nats.Header) {
	if len(a.acks)+len(a.live) == 1 { // the last batch is gone: time the next
		a.ackTimer.Reset(a.ackDelay(h))
	}
}

// ackLoop settles the live drops and sends the acks waiting when ackTimer
// fires, AckDelay after the first of them. It is one long-lived goroutine, not a timer's goroutine
// per batch (the encoder needs a deep stack, which a fresh goroutine
// would grow each time), and it wakes only when the timer fires.
func (a *Agent) ackLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return // Close sends what is still waiting
		case <-a.ackTimer.C:
			a.sendAcks()
		}
	}
}

// sendAcks settles the live drops waiting, then publishes the acks
// waiting, in the order they were made.
func (a *Agent) sendAcks() {
	a.ackMu.Lock()
	acks, live := a.acks, a.live
	a.acks, a.live = nil, nil
	a.ackMu.Unlock()
	for _, d := range live {
		if ack, ok := a.settle(d.subject, d.data, d.received, d.dropped); ok {
			acks = append(acks, ack)
		}
	}
	for _, ack := range acks {
		a.sendAck(ack)
	}
}

// sendAck encodes and publishes one ack. Encoding waits with the ack, so
// that it too stays out of the first milliseconds after an invalidation.
func (a *Agent) sendAck(ack schemas.InvalidationAck) {
	subject, evSubject := schemas.AckSubject(a.cfg.Tenant, schemas.TenantToken, a.cfg.Instance), a.cfg.Tenant
	if ack.Secret != "" {
		subject, evSubject = schemas.AckSubject(a.cfg.Tenant, ack.Secret, a.cfg.Instance), a.cfg.Tenant+"/"+ack.Secret
	}
	_, b, err := schemas.EncodeNew(a.source, schemas.TypeInvalidationAck, a.cfg.Tenant, evSubject, ack)
	if err == nil {
		err = a.nc.Publish(subject, b)
	}
	if err != nil {
		a.log.Warn("ack invalidation", "secret", ack.Secret, "request_id", ack.RequestID, "subject", subject, "error", err)
	}
}

// Resync reads the last invalidation of the tenant's subject and of every
// secret this Agent has read, from the INVALIDATE stream: it applies a
// revocation or a restore, and drops cached secrets whose version differs
// from the last one announced. Start runs it, and so does every reconnect;
// call it when some other reason to think invalidations were missed arises.
//
// It asks rekeyd's resync server (schemas.ResyncSubject), which reads the
// last message per subject with a JetStream direct get: no consumer is
// created, so thousands of agents reconnecting at once cost the server no
// state. Agents never call the JetStream API themselves. No resync server
// (rekeyd is not running yet) is not an error.
func (a *Agent) Resync(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.cfg.FetchTimeout)
		defer cancel()
	}
	mark := a.syncBegin()
	a.mu.Lock()
	tokens := make([]string, 0, len(a.states)+1)
	tokens = append(tokens, schemas.TenantToken)
	for name := range a.states {
		tokens = append(tokens, name)
	}
	a.mu.Unlock()

	applied := 0
	for _, token := range tokens {
		subject := schemas.InvalidateSubject(a.cfg.Tenant, token)
		msg, err := a.nc.RequestWithContext(ctx, schemas.ResyncSubject(a.cfg.Tenant, token), nil)
		if errors.Is(err, nats.ErrNoResponders) {
			a.log.Debug("no resync server to resync from", "subject", schemas.ResyncSubject(a.cfg.Tenant, token))
			a.syncDone(mark)
			return nil
		}
		if err != nil {
			return fmt.Errorf("agent: resync %s: last invalidation on %s: %w", a.cfg.Tenant, subject, err)
		}
		switch status := msg.Header.Get("Status"); status {
		case "":
		case "404": // nothing announced on this subject yet
			continue
		default:
			return fmt.Errorf("agent: resync %s: last invalidation on %s: status %s %s", a.cfg.Tenant, subject, status, msg.Header.Get("Description"))
		}
		received := time.Now()
		from := msg.Header.Get("Nats-Subject")
		if from == "" {
			from = subject
		}
		p, err := parseInvalidation(a.cfg.Tenant, from, msg.Data)
		if err != nil {
			a.log.Debug("resync: ignoring invalidation message", "subject", from, "error", err)
			continue
		}
		if ack, ok := a.apply(p, received, time.Time{}, true); ok {
			a.queueAck(ack, nil)
		}
		applied++
	}
	a.log.Debug("resynced", "replayed", applied, "revoked", a.Revoked())
	a.syncDone(mark)
	return nil
}

// reconnectMu serializes the chaining of reconnect handlers by the agents
// of this process that share a connection.
var reconnectMu sync.Mutex

// chainReconnectHandler adds a resync to nc's reconnect handler, keeping the
// handler already set. nats.go keeps one handler per connection, so a
// handler set later with SetReconnectHandler, outside this package,
// replaces it. After Close the link does nothing.
func (a *Agent) chainReconnectHandler() {
	reconnectMu.Lock()
	defer reconnectMu.Unlock()
	prev := a.nc.ReconnectHandler()
	a.nc.SetReconnectHandler(func(nc *nats.Conn) {
		if prev != nil {
			prev(nc)
		}
		a.requestResync()
	})
}

func (a *Agent) requestResync() {
	if a.gate.Load()&gateClosed != 0 {
		return
	}
	select {
	case a.kick <- struct{}{}:
	default: // one is already pending
	}
}

// resyncLoop runs a resync for each reconnect, retrying with backoff until
// one succeeds or another reconnect asks again.
func (a *Agent) resyncLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		}
		wait := 500 * time.Millisecond
		for {
			err := a.Resync(ctx)
			if err == nil || ctx.Err() != nil {
				break
			}
			a.log.Warn("resync after reconnect failed; retrying", "error", err, "in", wait)
			select {
			case <-ctx.Done():
				return
			case <-a.kick: // a new reconnect: try again now, from the first wait
				wait = 500 * time.Millisecond
				continue
			case <-time.After(wait):
			}
			wait = min(2*wait, 30*time.Second)
		}
	}
}
