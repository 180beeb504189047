package orchestrator_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
)

const leaseTTL = time.Second

// replica is one contender for a lease, on its own NATS connection, as a
// rekeyd replica would be.
type replica struct {
	name   string
	bus    *orchestrator.Bus
	leases *orchestrator.Leases
	cancel context.CancelFunc
	done   chan error
}

func newReplica(t *testing.T, srv *server.Server, name string) *replica {
	t.Helper()
	ctx := context.Background()
	bus, err := orchestrator.Connect(ctx, srv.ClientURL(), name, orchestrator.NATSConfig{}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	leases, err := orchestrator.NewLeases(ctx, bus, name, leaseTTL, orchestrator.NewMetrics(), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	return &replica{name: name, bus: bus, leases: leases}
}

// holders counts the replicas running the guarded function at once.
type holders struct {
	mu      sync.Mutex
	running map[string]bool
	most    int
	starts  []string
}

func newHolders() *holders { return &holders{running: map[string]bool{}} }

// fn is the guarded function of replica name: it runs until its context ends.
func (h *holders) fn(name string) func(context.Context) error {
	return func(ctx context.Context) error {
		h.mu.Lock()
		h.running[name] = true
		h.most = max(h.most, len(h.running))
		h.starts = append(h.starts, name)
		h.mu.Unlock()
		<-ctx.Done()
		h.mu.Lock()
		delete(h.running, name)
		h.mu.Unlock()
		return ctx.Err()
	}
}

func (h *holders) current() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for n := range h.running {
		out = append(out, n)
	}
	return out
}

func (h *holders) max() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.most
}

func (r *replica) run(t *testing.T, h *holders) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan error, 1)
	go func() { r.done <- r.leases.RunExclusive(ctx, "cron", h.fn(r.name)) }()
	t.Cleanup(func() { r.stop(t) })
}

func (r *replica) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	select {
	case err := <-r.done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: RunExclusive did not return within 10s of ctx ending", r.name)
	}
	r.cancel = nil
}

// waitHolder waits until exactly one replica runs and returns it.
func waitHolder(t *testing.T, h *holders, within time.Duration) string {
	t.Helper()
	var got []string
	require.Eventually(t, func() bool {
		got = h.current()
		return len(got) == 1
	}, within, 10*time.Millisecond, "one holder expected, have %v", got)
	return got[0]
}

func TestLeaseOneHolderAndTakeoverAfterKill(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	h := newHolders()
	reps := map[string]*replica{}
	for i := range 3 {
		r := newReplica(t, srv, fmt.Sprintf("replica-%d", i))
		reps[r.name] = r
		r.run(t, h)
	}
	first := waitHolder(t, h, 5*time.Second)
	holder, err := reps[first].leases.Holder(context.Background(), "cron")
	require.NoError(t, err)
	require.Equal(t, first, holder)
	// Renewals keep it: well past the TTL, the same holder.
	time.Sleep(3 * leaseTTL)
	require.Equal(t, []string{first}, h.current())

	// "kill -9" the holder: its connection goes away without a release.
	// It stops on its own (it can no longer renew) and another replica
	// takes over once the key expired.
	killed := time.Now()
	reps[first].bus.NC.Close()
	require.Eventually(t, func() bool {
		cur := h.current()
		return len(cur) == 1 && cur[0] != first
	}, 10*time.Second, 10*time.Millisecond, "no takeover")
	took := time.Since(killed)
	t.Logf("takeover %s after the holder was killed (ttl %s)", took.Round(time.Millisecond), leaseTTL)
	require.Equal(t, 1, h.max(), "two holders at once")
}

func TestLeaseNeverTwoHolders(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	h := newHolders()
	var reps []*replica
	for i := range 4 {
		r := newReplica(t, srv, fmt.Sprintf("replica-%d", i))
		reps = append(reps, r)
		r.run(t, h)
	}
	// Stop and restart holders, cleanly or not, while others contend.
	var changes atomic.Int64
	for round := range 6 {
		cur := waitHolder(t, h, 5*time.Second)
		h.mu.Lock()
		before := len(h.starts)
		h.mu.Unlock()
		for _, r := range reps {
			if r.name != cur {
				continue
			}
			if round%2 == 0 {
				r.stop(t) // clean stop: released at once
			} else {
				r.bus.NC.Close() // dies: expires
				r.stop(t)
				*r = *newReplica(t, srv, r.name+"b")
			}
			changes.Add(1)
			r.run(t, h)
		}
		require.Eventually(t, func() bool {
			h.mu.Lock()
			defer h.mu.Unlock()
			return len(h.starts) > before && len(h.running) == 1
		}, 10*time.Second, 10*time.Millisecond, "no new holder after round %d", round)
	}
	require.Equal(t, 1, h.max(), "two holders at once")
	require.EqualValues(t, 6, changes.Load())
}

func TestLeaseReleasedOnStop(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	h := newHolders()
	a, b := newReplica(t, srv, "a"), newReplica(t, srv, "b")
	a.run(t, h)
	require.Equal(t, "a", waitHolder(t, h, 5*time.Second))
	b.run(t, h)
	time.Sleep(2 * leaseTTL)
	require.Equal(t, []string{"a"}, h.current(), "b must wait while a renews")

	stopped := time.Now()
	a.stop(t)
	holder, err := b.leases.Holder(context.Background(), "cron")
	require.NoError(t, err)
	require.NotEqual(t, "a", holder, "a clean stop deletes the key")
	require.Equal(t, "b", waitHolder(t, h, 5*time.Second))
	took := time.Since(stopped)
	t.Logf("takeover %s after a clean stop (ttl %s)", took.Round(time.Millisecond), leaseTTL)
	require.Less(t, took, leaseTTL*4/5, "a released lease is taken over without waiting for the TTL")
	require.Equal(t, 1, h.max())
}

// TestLeaseFnReturning: fn ending on its own gives the lease up and
// RunExclusive returns its result; a lost lease cancels fn.
func TestLeaseFnReturning(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	a, b := newReplica(t, srv, "a"), newReplica(t, srv, "b")
	ctx := context.Background()
	boom := fmt.Errorf("boom")
	require.ErrorIs(t, a.leases.RunExclusive(ctx, "job", func(context.Context) error { return boom }), boom)
	require.NoError(t, a.leases.RunExclusive(ctx, "job", func(context.Context) error { return nil }))
	holder, err := a.leases.Holder(ctx, "job")
	require.NoError(t, err)
	require.Empty(t, holder, "released when fn returned")

	// The holder's lease is deleted behind its back (an operator, or an
	// expiry while it was cut off): at its next renewal it finds out,
	// cancels fn, and waits to take the lease again.
	h := newHolders()
	a.run(t, h)
	require.Equal(t, "a", waitHolder(t, h, 5*time.Second))
	kv, err := b.bus.JS.KeyValue(ctx, orchestrator.BucketLeases)
	require.NoError(t, err)
	require.NoError(t, kv.Delete(ctx, "cron"))
	require.Eventually(t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.starts) >= 2
	}, 5*time.Second, 10*time.Millisecond, "fn cancelled and run again")
	require.Equal(t, 1, h.max(), "two holders at once")
}

// TestConflictsOnReplicatedBucket: on a 3-node cluster, an R3 bucket
// reports compare-and-set conflicts as error 10164 as well as 10071;
// IsConflict recognises both, so concurrent updates retry instead of failing.
func TestConflictsOnReplicatedBucket(t *testing.T) {
	cl := testutil.StartNATSClusterT(t, 3)
	ctx := context.Background()
	const writers, each = 6, 25
	var conflicts, constant atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		bus, err := orchestrator.Connect(ctx, cl.ClientURL(w%3), fmt.Sprintf("w%d", w), orchestrator.NATSConfig{Replicas: 3}, slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		t.Cleanup(bus.Close)
		kv, err := bus.KV(ctx, "conflicts", 0)
		require.NoError(t, err)
		wg.Go(func() {
			for done := 0; done < each; {
				n, rev := 0, uint64(0)
				if e, err := kv.Get(ctx, "n"); err == nil {
					_, _ = fmt.Sscan(string(e.Value()), &n)
					rev = e.Revision()
				}
				var err error
				if rev == 0 {
					_, err = kv.Create(ctx, "n", fmt.Append(nil, n+1))
				} else {
					_, err = kv.Update(ctx, "n", fmt.Append(nil, n+1), rev)
				}
				switch {
				case err == nil:
					done++
				case orchestrator.IsConflict(err):
					conflicts.Add(1)
					var apiErr *jetstream.APIError
					if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant {
						constant.Add(1)
					}
				default:
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err, "a write failed with something other than a conflict")
	}
	t.Logf("%d conflicts, %d of them reported as 10164", conflicts.Load(), constant.Load())
	bus, err := orchestrator.Connect(ctx, cl.URLs(), "check", orchestrator.NATSConfig{Replicas: 3}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	kv, err := bus.KV(ctx, "conflicts", 0)
	require.NoError(t, err)
	e, err := kv.Get(ctx, "n")
	require.NoError(t, err)
	require.Equal(t, fmt.Sprint(writers*each), string(e.Value()))
}
