// Package bench holds the measurements behind `rekeyctl bench`:
// propagation, Agent.Get, fanout against raw NATS, webhook to agents,
// capacity of several replicas, an agent flood, and recovery after a crash.
// Each returns a result that prints a table; none of them asserts a speed.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/orchestrator"
)

// PropagationResult holds the latencies measured by Propagation.
type PropagationResult struct {
	Agents, Rotations int
	// AllDropped: request sent -> the last of the agents dropped, one per rotation.
	AllDropped []time.Duration
	// EachDropped: request sent -> each agent dropped.
	EachDropped []time.Duration
	// PublishToDrop: invalidation published by fanout -> each agent dropped.
	PublishToDrop []time.Duration
}

// Propagation starts rekeyd with n agents of tenant acme (each on its own
// NATS connection) and runs rotations of acme/openai-key one after the
// other through the HTTP API, measuring how long until every agent dropped
// the old value.
func Propagation(ctx context.Context, agents, rotations int, log *slog.Logger) (PropagationResult, error) {
	res := PropagationResult{Agents: agents, Rotations: rotations}
	// Back-to-back rotations of one secret: no minimum interval.
	c, err := demo.StartCluster(ctx, log, func(cfg *orchestrator.Config) { cfg.Rotation.MinInterval = 0 })
	if err != nil {
		return res, err
	}
	defer c.Close()
	for i := 0; i < agents; i++ {
		a, err := c.NewAgent(ctx, "acme", fmt.Sprintf("bench-agent-%03d", i))
		if err != nil {
			return res, err
		}
		if _, err := a.Get(ctx, "openai-key"); err != nil {
			return res, err
		}
	}
	for i := 0; i < rotations; i++ {
		t0 := time.Now()
		id, err := c.Rotate(ctx, "acme", "openai-key")
		if err != nil {
			return res, err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		drops, err := c.WaitDrops(wctx, id, agents)
		cancel()
		if err != nil {
			return res, err
		}
		var last time.Duration
		for _, d := range drops {
			e := d.Dropped.Sub(t0)
			last = max(last, e)
			res.EachDropped = append(res.EachDropped, e)
			res.PublishToDrop = append(res.PublishToDrop, d.Dropped.Sub(d.Published))
		}
		res.AllDropped = append(res.AllDropped, last)
	}
	return res, nil
}

// Print writes the result as a table.
func (r PropagationResult) Print(w io.Writer) {
	fmt.Fprintf(w, "rotation request -> agents invalidated: %d agents, %d rotations (HTTP API -> NATS -> worker -> local backend -> fanout -> agents)\n", r.Agents, r.Rotations)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "measure\tsamples\tp50\tp99\tmax\t")
	for _, row := range []struct {
		name string
		d    []time.Duration
	}{
		{fmt.Sprintf("request -> all %d agents dropped", r.Agents), r.AllDropped},
		{"request -> each agent dropped", r.EachDropped},
		{"invalidation published -> each agent dropped", r.PublishToDrop},
	} {
		s := SortDurations(append([]time.Duration(nil), row.d...))
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t\n", row.name, len(s), demo.Millis(Percentile(s, 50)), demo.Millis(Percentile(s, 99)), demo.Millis(Percentile(s, 100)))
	}
	tw.Flush()
}

// GetResult is the cost of an agent's cached Get.
type GetResult struct {
	Serial, Parallel OpsResult
}

// BenchGet measures Agent.Get on a cached secret, serially and from all
// cores at once.
func BenchGet(ctx context.Context, log *slog.Logger) (GetResult, error) {
	c, err := demo.StartCluster(ctx, log)
	if err != nil {
		return GetResult{}, err
	}
	defer c.Close()
	a, err := c.NewAgent(ctx, "acme", "bench-get")
	if err != nil {
		return GetResult{}, err
	}
	if _, err := a.Get(ctx, "openai-key"); err != nil {
		return GetResult{}, err
	}
	get := func() error { _, err := a.Get(ctx, "openai-key"); return err }
	serial, err := MeasureOps(1, time.Second, get)
	if err != nil {
		return GetResult{Serial: serial}, err
	}
	parallel, err := MeasureOps(runtime.GOMAXPROCS(0), time.Second, get)
	return GetResult{Serial: serial, Parallel: parallel}, err
}

// Print writes the result as a table.
func (r GetResult) Print(w io.Writer) {
	fmt.Fprintln(w, "agent Get of a cached secret (fanout/agent)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\titerations\tns/op\tallocs/op\tB/op\t")
	for _, row := range []struct {
		name string
		r    OpsResult
	}{{"serial", r.Serial}, {"parallel (all cores)", r.Parallel}} {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%d\t%d\t\n", row.name, row.r.N, float64(row.r.T.Nanoseconds())/float64(max(row.r.N, 1)), row.r.AllocsPerOp(), row.r.AllocedBytesPerOp())
	}
	tw.Flush()
}

// OpsResult is what MeasureOps measured, the figures of a
// testing.BenchmarkResult: rekeyctl and rekeyd do not link package testing.
type OpsResult struct {
	N             int           // operations done
	T             time.Duration // wall time of all of them
	Allocs, Bytes uint64        // heap allocations and bytes, over all N
}

// AllocsPerOp is the heap allocations of one operation.
func (r OpsResult) AllocsPerOp() int64 {
	if r.N <= 0 {
		return 0
	}
	return int64(r.Allocs) / int64(r.N)
}

// AllocedBytesPerOp is the heap bytes allocated by one operation.
func (r OpsResult) AllocedBytesPerOp() int64 {
	if r.N <= 0 {
		return 0
	}
	return int64(r.Bytes) / int64(r.N)
}

// MeasureOps calls op from workers goroutines at once for about d, as
// testing.Benchmark with RunParallel does (b.Loop for one worker), and
// stops at the first error. Each worker reads the clock once per batch,
// batches growing to 1024 operations, so the clock costs little per op.
func MeasureOps(workers int, d time.Duration, op func() error) (OpsResult, error) {
	workers = max(workers, 1)
	var (
		n       atomic.Int64
		stop    atomic.Bool
		errOnce sync.Once
		opErr   error
		wg      sync.WaitGroup
		before  runtime.MemStats
		after   runtime.MemStats
	)
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for batch := 1; !stop.Load(); batch = min(2*batch, 1024) {
				for range batch {
					if err := op(); err != nil {
						errOnce.Do(func() { opErr = err })
						stop.Store(true)
						return
					}
				}
				n.Add(int64(batch))
				if time.Since(start) >= d {
					stop.Store(true)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	return OpsResult{
		N: int(n.Load()), T: elapsed,
		Allocs: after.Mallocs - before.Mallocs, Bytes: after.TotalAlloc - before.TotalAlloc,
	}, opErr
}

// Percentile returns the p-th percentile (0..100) of sorted durations.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// SortDurations sorts in place and returns d.
func SortDurations(d []time.Duration) []time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d
}
