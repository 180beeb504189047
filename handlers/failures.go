package handlers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/orchestrator"
)

// failures counts how often each request really failed, in the
// rekey_failures bucket. JetStream's delivery count is not that: a request
// held by a process that crashed or stopped is delivered again without
// having failed, and must not move closer to being given up.
type failures struct {
	kv jetstream.KeyValue
}

// openFailures opens (creating if needed) the failures bucket. Its keys
// expire after ttl (the longest a request stays queued).
func openFailures(ctx context.Context, bus *orchestrator.Bus, ttl time.Duration) (*failures, error) {
	kv, err := bus.KV(ctx, orchestrator.BucketFailures, ttl)
	if err != nil {
		return nil, err
	}
	return &failures{kv: kv}, nil
}

// failureKey is a request id as a valid KV key (ids may hold any
// character an Idempotency-Key or an event id allows).
func failureKey(requestID string) string {
	sum := sha256.Sum256([]byte(requestID))
	return hex.EncodeToString(sum[:16])
}

// Add records one more failure of the request and returns how many it has
// had. When the bucket cannot be reached it returns fallback (the delivery
// count, which overstates and so errs on giving up sooner).
func (f *failures) Add(ctx context.Context, requestID string, fallback int) int {
	key := failureKey(requestID)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	for range 5 {
		e, err := f.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if _, err := f.kv.Create(ctx, key, []byte("1")); err == nil {
				return 1
			} else if !orchestrator.IsConflict(err) {
				return fallback
			}
		case err != nil:
			return fallback
		default:
			n, perr := strconv.Atoi(string(e.Value()))
			if perr != nil {
				n = 0
			}
			if _, err := f.kv.Update(ctx, key, []byte(strconv.Itoa(n+1)), e.Revision()); err == nil {
				return n + 1
			} else if !orchestrator.IsConflict(err) {
				return fallback
			}
		}
	}
	return fallback
}

// Count returns the failures recorded for the request (0 when none or
// unknown).
func (f *failures) Count(ctx context.Context, requestID string) int {
	e, err := f.kv.Get(ctx, failureKey(requestID))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(string(e.Value()))
	return n
}

// Clear forgets a request that ended (acked or terminated). Best effort:
// a key left behind expires with the bucket's TTL.
func (f *failures) Clear(ctx context.Context, requestID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = f.kv.Purge(ctx, failureKey(requestID))
}
