package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"text/tabwriter"
	"time"

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
	c, err := StartCluster(ctx, log, func(cfg *orchestrator.Config) { cfg.Rotation.MinInterval = 0 })
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
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t\n", row.name, len(s), ms(Percentile(s, 50)), ms(Percentile(s, 99)), ms(Percentile(s, 100)))
	}
	tw.Flush()
}

// GetResult is the cost of an agent's cached Get.
type GetResult struct {
	Serial, Parallel testing.BenchmarkResult
}

// BenchGet measures Agent.Get on a cached secret, serially and from all
// cores at once.
func BenchGet(ctx context.Context, log *slog.Logger) (GetResult, error) {
	c, err := StartCluster(ctx, log)
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
	var benchErr error
	serial := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := a.Get(ctx, "openai-key"); err != nil {
				benchErr = err
				b.FailNow()
			}
		}
	})
	parallel := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := a.Get(ctx, "openai-key"); err != nil {
					benchErr = err
					return
				}
			}
		})
	})
	return GetResult{Serial: serial, Parallel: parallel}, benchErr
}

// Print writes the result as a table.
func (r GetResult) Print(w io.Writer) {
	fmt.Fprintln(w, "agent Get of a cached secret (fanout/agent)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\titerations\tns/op\tallocs/op\tB/op\t")
	for _, row := range []struct {
		name string
		r    testing.BenchmarkResult
	}{{"serial", r.Serial}, {"parallel (all cores)", r.Parallel}} {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%d\t%d\t\n", row.name, row.r.N, float64(row.r.T.Nanoseconds())/float64(max(row.r.N, 1)), row.r.AllocsPerOp(), row.r.AllocedBytesPerOp())
	}
	tw.Flush()
}
