// Package retry holds what the retry loops of rekey's server side share:
// the exponential backoff between attempts, a sleep that ends with its
// context, and a default timeout for a call whose caller set none.
//
// fanout/agent and its fetchers do not use it: they are meant to be
// embedded without the server side's packages.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is an exponential delay: Initial before the first retry, doubled
// before each next one up to Max, each spread by Jitter.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
	// Jitter spreads a delay d evenly over d-Jitter*d to d+Jitter*d
	// (0.2: +-20%); 0 keeps delays exact.
	Jitter float64
}

// Outage is the backoff of a long-running loop that waits out an outage
// (NATS, a cloud API): 500ms, doubling up to 30s, exact.
var Outage = Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second}

// Delay returns the delay before retry n (1-based): Initial*2^(n-1),
// capped at Max, then jittered.
func (b Backoff) Delay(n int) time.Duration {
	d := b.Initial
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if b.Jitter > 0 {
		d += time.Duration(float64(d) * b.Jitter * (2*rand.Float64() - 1))
	}
	return d
}

// Sleep waits for d or until ctx ends, and reports whether ctx is still
// live (false: stop retrying).
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// WithDefaultTimeout bounds ctx by d unless the caller set a deadline.
func WithDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}
