package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/schemas"
)

// BucketLeases holds one key per lease; its TTL is the lease TTL.
const BucketLeases = "rekey_leases"

// Leases runs the parts of rekey that must run on one replica at a time
// (the cron scheduler, invalidation confirmations) on whichever replica
// holds their lease, a key in the rekey_leases KV bucket:
//
//   - taking a lease is a Create of its key, which fails while another
//     replica holds it;
//   - the holder renews it every TTL/3 with a revision-checked Update, so a
//     replica that lost it (expired, taken over) finds out at once;
//   - the bucket's TTL removes a key not renewed for TTL, so when the
//     holder dies another replica takes the lease over after at most TTL
//     (plus its polling interval);
//   - a holder that cannot renew gives up (cancels its work) after 4/5 of
//     the TTL counted from when it sent its last successful renewal, that is
//     before the key can expire on the server: two holders never overlap,
//     as long as the NATS servers' clocks agree;
//   - a clean stop deletes the key at once, so another replica takes over
//     within its polling interval.
type Leases struct {
	kv    jetstream.KeyValue
	owner string
	ttl   time.Duration
	poll  time.Duration
	log   *slog.Logger
	held  *prometheus.GaugeVec // lease
}

// NewLeases opens (creating if needed) the leases bucket with ttl. owner
// names this replica in the bucket (for operators: `nats kv get`).
// metrics may be nil.
func NewLeases(ctx context.Context, bus *Bus, owner string, ttl time.Duration, metrics *Metrics, log *slog.Logger) (*Leases, error) {
	if ttl < 100*time.Millisecond {
		return nil, fmt.Errorf("leases: ttl %s is too short", ttl)
	}
	if log == nil {
		log = slog.Default()
	}
	kv, err := bus.KV(ctx, BucketLeases, ttl)
	if err != nil {
		return nil, err
	}
	l := &Leases{kv: kv, owner: owner, ttl: ttl, poll: min(max(ttl/10, 20*time.Millisecond), time.Second),
		log: log.With("component", "lease", "owner", owner)}
	if metrics != nil {
		l.held, err = Register(metrics, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rekey_lease_held",
			Help: "1 while this replica holds the lease (and runs the part it guards), else 0.",
		}, []string{"lease"}))
		if err != nil {
			return nil, fmt.Errorf("leases: %w", err)
		}
	}
	return l, nil
}

// leaseRecord is the value of a lease key. Token is new at each
// acquisition, so that a holder recognises its own renewal when the reply
// to it was lost.
type leaseRecord struct {
	Owner string    `json:"owner"`
	Token string    `json:"token"`
	Since time.Time `json:"since"`
}

// Holder returns the owner holding the named lease, "" when none does.
func (l *Leases) Holder(ctx context.Context, name string) (string, error) {
	e, err := l.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("lease %s: %w", name, err)
	}
	var rec leaseRecord
	if err := decodeStrict(e.Value(), &rec, "owner", "token"); err != nil {
		return "", fmt.Errorf("lease %s: decode: %w", name, err)
	}
	return rec.Owner, nil
}

// RunExclusive runs fn while this replica holds the named lease, and only
// then: it waits for the lease, runs fn with a context that is cancelled
// when the lease is lost (or ctx ends), and when fn returned because the
// lease was lost, waits for it again. It returns nil when ctx ends, or
// fn's result when fn returns on its own (after giving the lease up).
func (l *Leases) RunExclusive(ctx context.Context, name string, fn func(context.Context) error) error {
	log := l.log.With("lease", name)
	for {
		h, err := l.acquire(ctx, name)
		if err != nil {
			return nil // ctx ended
		}
		log.Info("lease taken; running", "ttl", l.ttl)
		l.setHeld(name, 1)
		holdCtx, cancel := context.WithCancel(ctx)
		kept := make(chan bool, 1) // true: the lease was lost
		go func() { kept <- l.keep(holdCtx, h, cancel, log) }()
		err = fn(holdCtx)
		cancel()
		lost := <-kept
		l.setHeld(name, 0)
		if !lost {
			l.release(h, log)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case lost:
			log.Warn("lease lost; stopped, waiting to take it again", "error", err)
			continue
		case err != nil && !errors.Is(err, context.Canceled):
			return err
		default:
			return nil
		}
	}
}

// Exclusive wraps c so that it runs only on the replica holding the named
// lease (see RunExclusive).
func (l *Leases) Exclusive(name string, c Component) Component {
	return exclusive{l: l, name: name, c: c}
}

type exclusive struct {
	l    *Leases
	name string
	c    Component
}

func (e exclusive) Run(ctx context.Context) error { return e.l.RunExclusive(ctx, e.name, e.c.Run) }

func (l *Leases) setHeld(name string, v float64) {
	if l.held != nil {
		l.held.WithLabelValues(name).Set(v)
	}
}

// holding is one acquisition of a lease.
type holding struct {
	name  string
	value []byte
	token string
	rev   uint64
	sent  time.Time // when the Create was sent
}

// acquire waits until it creates the lease key; it fails only when ctx ends.
func (l *Leases) acquire(ctx context.Context, name string) (*holding, error) {
	warned := false
	var unsure *holding // a Create whose reply was lost may have succeeded
	for {
		token := schemas.NewULID()
		value, err := json.Marshal(leaseRecord{Owner: l.owner, Token: token, Since: time.Now().UTC()})
		if err != nil {
			return nil, err
		}
		h := &holding{name: name, value: value, token: token, sent: time.Now()}
		cctx, cancel := context.WithTimeout(ctx, l.ttl/2)
		h.rev, err = l.kv.Create(cctx, name, value)
		if err != nil && IsConflict(err) && unsure != nil && time.Since(unsure.sent) < l.ttl/2 {
			if rev, ownErr := l.stillOurs(cctx, unsure); ownErr == nil {
				h, h.rev, err = unsure, rev, nil
			}
		}
		cancel()
		if err == nil {
			return h, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		unsure = nil
		if !IsConflict(err) {
			unsure = h
			if !warned {
				// NATS unreachable, bucket being moved...: keep trying.
				l.log.Warn("lease not taken; retrying", "lease", name, "error", err)
				warned = true
			}
		}
		if !retry.Sleep(ctx, l.poll) {
			return nil, ctx.Err()
		}
	}
}

// keep renews the lease until ctx ends. When the lease is lost (another
// replica holds it) or could not be renewed for 4/5 of the TTL, it calls
// lost and returns true.
func (l *Leases) keep(ctx context.Context, h *holding, lost context.CancelFunc, log *slog.Logger) bool {
	every := l.ttl / 3
	retryEvery := max(l.ttl/20, 10*time.Millisecond)
	giveUp := l.ttl * 4 / 5
	// The server stored the last write after it was sent: its key expires
	// at least TTL after renewed.
	renewed := h.sent
	wait := every
	for {
		if !retry.Sleep(ctx, min(wait, time.Until(renewed.Add(giveUp)))) {
			return false
		}
		if time.Since(renewed) >= giveUp {
			log.Warn("lease not renewed in time; giving it up", "since_renewal", time.Since(renewed).Round(time.Millisecond))
			lost()
			return true
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, max(renewed.Add(giveUp).Sub(sent), time.Millisecond))
		rev, err := l.kv.Update(rctx, h.name, h.value, h.rev)
		adopted := false
		if err != nil && IsConflict(err) && ctx.Err() == nil {
			// Ours after all if the key holds our token: a renewal whose
			// reply was lost. Anything else: another replica holds it.
			// (A read may be stale: only a successful Update, tried again
			// at once with the revision read, counts as a renewal.)
			rev, err = l.stillOurs(rctx, h)
			adopted = err == nil
		}
		cancel()
		switch {
		case adopted:
			h.rev, wait = rev, retryEvery
		case err == nil:
			h.rev, renewed, wait = rev, sent, every
		case ctx.Err() != nil:
			return false
		case errors.Is(err, errLeaseTaken):
			log.Warn("lease taken over by another replica")
			lost()
			return true
		default:
			log.Debug("lease renewal failed; retrying", "error", err)
			wait = retryEvery
		}
	}
}

var errLeaseTaken = errors.New("lease held by another replica")

func (l *Leases) stillOurs(ctx context.Context, h *holding) (uint64, error) {
	e, err := l.kv.Get(ctx, h.name)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return 0, errLeaseTaken // expired
	}
	if err != nil {
		return 0, err
	}
	var rec leaseRecord
	if decodeStrict(e.Value(), &rec, "owner", "token") != nil || rec.Token != h.token {
		return 0, errLeaseTaken
	}
	return e.Revision(), nil
}

// release deletes the lease key if it still is this holding's, so that
// another replica takes over at once.
func (l *Leases) release(h *holding, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := l.kv.Delete(ctx, h.name, jetstream.LastRevision(h.rev))
	if IsConflict(err) {
		// A renewal cut short by the stop (its context ended while the
		// Update was on its way) may have been stored after all: the key
		// is still ours if it holds our token, at the revision read.
		if rev, ownErr := l.stillOurs(ctx, h); ownErr == nil {
			err = l.kv.Delete(ctx, h.name, jetstream.LastRevision(rev))
		}
	}
	if err != nil {
		log.Warn("lease not released; it expires after its TTL", "error", err)
		return
	}
	log.Info("lease released")
}
