package bench_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/bench"
)

func TestPropagationSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := bench.Propagation(ctx, 5, 3, nil)
	require.NoError(t, err)
	require.Len(t, res.AllDropped, 3)
	require.Len(t, res.EachDropped, 15)
	var out bytes.Buffer
	res.Print(&out)
	require.Contains(t, out.String(), "request -> all 5 agents dropped")
}

func TestMain(m *testing.M) {
	bench.RunFanoutChild() // the fanout bench's child processes are this binary
	os.Exit(m.Run())
}

// TestFanoutBenchSmall runs `rekeyctl bench fanout` at a tiny size, with
// rekeyd and the agents in processes of their own (this test binary
// started again): every rotation is dropped and acked by every agent, in
// both agent processes, and the table names both measures.
func TestFanoutBenchSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := bench.Fanout(ctx, bench.FanoutOptions{Agents: 20, Rotations: 4, Procs: 2, Run: 1}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Len(t, res.RawBaseline, 4)
	require.Len(t, res.PublishToLastDrop, 4)
	require.Len(t, res.FinishToLastDrop, 4)
	require.Len(t, res.PublishToLastAck, 4)
	for i, d := range res.PublishToLastAck {
		require.Positive(t, res.PublishToLastDrop[i], "times from the processes' clocks")
		require.Positive(t, res.RawBaseline[i])
		require.GreaterOrEqual(t, d, res.PublishToLastDrop[i]-time.Millisecond, "an agent acks after it dropped")
	}
	require.Positive(t, res.ServerHeapPerAgent)
	require.Positive(t, res.AgentHeapPerAgent)
	require.Greater(t, res.MessageBytes, 300, "the raw baseline sends messages as large as an invalidation")
	var out bytes.Buffer
	bench.PrintFanout(&out, []bench.FanoutResult{res})
	require.Contains(t, out.String(), "agents (each on its own connection) in 2 others")
	require.Contains(t, out.String(), "p99 ratio")
}

// TestSidecarFleetBenchSmall runs `rekeyctl bench sidecar-fleet` at a tiny
// size: every rotation is served in its new version by every in-process
// agent and every sidecar's client, in both processes.
func TestSidecarFleetBenchSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := bench.SidecarFleet(ctx, bench.SidecarFleetOptions{Sidecars: 6, Rotations: 3, Procs: 2}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Len(t, res.Agents, 3)
	require.Len(t, res.SidecarClients, 3)
	for i := range res.Agents {
		require.Positive(t, res.Agents[i], "the new version is served after the rotation finished")
		require.Positive(t, res.SidecarClients[i], "the new version is served after the rotation finished")
	}
	var out bytes.Buffer
	bench.PrintSidecarFleet(&out, []bench.SidecarFleetResult{res})
	require.Contains(t, out.String(), "sidecar (events + GET)")
	require.Contains(t, out.String(), "p99 ratio")
}

// TestFanoutBenchRefusesTooManyAgents: the size is checked before any
// process starts.
func TestFanoutBenchRefusesTooManyAgents(t *testing.T) {
	_, err := bench.Fanout(context.Background(), bench.FanoutOptions{Agents: 1 << 20, Rotations: 1}, nil)
	require.ErrorContains(t, err, "agents")
}

func TestWebhookBenchSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := bench.Webhook(ctx, 2, 300*time.Millisecond, 2, 2, nil)
	require.NoError(t, err)
	require.Positive(t, res.Accepted)
	require.Empty(t, res.Other, "every signed webhook is accepted")
	require.Len(t, res.ToDropped, 2)
}

// TestCapacitySmall runs `rekeyctl bench capacity` at a tiny size: two
// replicas on a three-node cluster do every rotation and invalidation.
func TestCapacitySmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := bench.CapacityConfig{Replicas: []int{2}, Nodes: 3, Secrets: 3, Rounds: 2, Invalidations: 20, Agents: 4}
	rows, err := bench.Capacity(ctx, cfg, nil)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, 12, rows[0].Rotations.N)
	require.Equal(t, 20, rows[0].Invalidations.N)
	require.Equal(t, 5, rows[0].InvalidationsToAgents.N)
	require.EqualValues(t, 5*2, rows[0].Acks, "each of the 2 agents of a tenant acks its tenant's invalidations")
	var out bytes.Buffer
	bench.PrintCapacity(&out, cfg, rows)
	require.Contains(t, out.String(), "rotations/s")
}

// TestFloodBenchSmall runs `rekeyctl bench flood` at a tiny size: globex's
// max_uses rotations happen before and during acme's flood, and the table
// names both.
func TestFloodBenchSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := bench.Flood(ctx, bench.FloodOptions{Samples: 3, Conns: 1, Instances: 5, Rate: 5000}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Len(t, res.Before, 3)
	require.Len(t, res.During, 3)
	require.Positive(t, res.FloodSent)
	var out bytes.Buffer
	res.Print(&out)
	require.Contains(t, out.String(), "during the flood")
}

// TestSidecarBenchSmall runs `rekeyctl bench sidecar` small, with each
// kind of client (raw clients in a process of their own, raw clients in
// this process, Go's http.Client): every path reads (a raw client checks
// each reply is 200 with its Content-Length), and the table names them.
func TestSidecarBenchSmall(t *testing.T) {
	for _, c := range []struct {
		name string
		opts bench.SidecarOptions
		rows int
	}{
		{"raw clients apart", bench.SidecarOptions{}, 6},
		{"raw clients here", bench.SidecarOptions{SameProcess: true}, 6},
		{"http.Client", bench.SidecarOptions{HTTPClient: true}, 5},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := c.opts
			opts.Clients, opts.Duration = 2, 100*time.Millisecond
			rows, err := bench.Sidecar(context.Background(), opts, nil)
			require.NoError(t, err)
			require.Len(t, rows, c.rows)
			var out strings.Builder
			bench.PrintSidecar(&out, opts, rows)
			for _, r := range rows {
				require.Positive(t, r.Reads, r.Path)
				require.Positive(t, r.CPU, r.Path)
				require.LessOrEqual(t, r.P50, r.P99, r.Path)
				require.Contains(t, out.String(), r.Path)
			}
		})
	}
}

// TestMeasureOps holds the loop behind `rekeyctl bench get` (which may not
// link package testing) to what testing.Benchmark reports: every operation
// counted, allocations per operation, and a stop at the first error.
func TestMeasureOps(t *testing.T) {
	var calls atomic.Int64
	var sink [][]byte
	var mu sync.Mutex
	r, err := bench.MeasureOps(2, 50*time.Millisecond, func() error {
		calls.Add(1)
		b := make([]byte, 4096)
		mu.Lock()
		sink = append(sink[:0], b)
		mu.Unlock()
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, calls.Load(), int64(r.N), "every operation counted")
	require.GreaterOrEqual(t, r.T, 50*time.Millisecond)
	require.GreaterOrEqual(t, r.AllocsPerOp(), int64(1))
	require.GreaterOrEqual(t, r.AllocedBytesPerOp(), int64(4096))

	boom := errors.New("boom")
	calls.Store(0)
	r, err = bench.MeasureOps(1, time.Minute, func() error {
		if calls.Add(1) == 10 {
			return boom
		}
		return nil
	})
	require.ErrorIs(t, err, boom)
	require.Equal(t, int64(10), calls.Load(), "no operation after the error")
	require.Less(t, r.N, 10, "the failed batch is not counted")
}
