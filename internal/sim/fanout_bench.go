package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// FanoutResult is one row group of `rekeyctl bench fanout`.
type FanoutResult struct {
	Agents, Rotations int
	// FinishToLastDrop: rotation finished (RotationCompleted.CompletedAt)
	// -> the last agent dropped the old value, one sample per rotation.
	FinishToLastDrop []time.Duration
	// PublishToLastDrop: invalidation published -> the last agent dropped.
	PublishToLastDrop []time.Duration
	// RawBaseline: a plain NATS publish -> the last of as many plain
	// subscribers (each on its own connection) received it.
	RawBaseline []time.Duration
	// HeapPerAgent is the Go heap held per connected agent, counting both
	// the agent's side and the embedded server's side of its connection.
	HeapPerAgent float64
	// PublishToLastAck: invalidation published -> the last live agent's
	// ack reached fanout (InvalidationConfirmed.LastAckMS).
	PublishToLastAck []time.Duration
	// ConnectTime is how long connecting and starting all agents took.
	ConnectTime time.Duration
	// CollectBetween is FanoutOptions.CollectBetween.
	CollectBetween bool
	// GCs is how many garbage collections ran during the rotations (not
	// counting those run between samples), and
	// AllocPerAgentRotation the bytes the process allocated per agent
	// per rotation (rekeyd, the NATS server and the agents together).
	GCs                   int
	AllocPerAgentRotation float64
}

// FanoutOptions configures one Fanout measurement.
type FanoutOptions struct {
	Agents, Rotations int
	// CollectBetween runs a garbage collection between samples, raw rounds
	// and rotations alike, as go test -bench does before each benchmark:
	// then no collection of the one heap that holds every agent's
	// connection (in production, one heap per agent process) lands inside
	// a sample.
	CollectBetween bool
}

// Fanout measures invalidation fanout to opts.Agents agents, each on its
// own NATS connection, against a raw NATS baseline with as many plain
// subscribers, in the same process and the same run.
func Fanout(ctx context.Context, opts FanoutOptions, log *slog.Logger) (FanoutResult, error) {
	n, rotations := opts.Agents, opts.Rotations
	res := FanoutResult{Agents: n, Rotations: rotations, CollectBetween: opts.CollectBetween}
	c, err := StartCluster(ctx, log, func(cfg *orchestrator.Config) {
		cfg.Rotation.MinInterval = 0
		cfg.Log.Level = "error"
	})
	if err != nil {
		return res, err
	}
	defer c.Close()

	// Raw baseline first, on the same server: n plain subscribers.
	raw, err := rawBaseline(ctx, c, n, rotations, opts.CollectBetween)
	if err != nil {
		return res, err
	}
	res.RawBaseline = raw

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	began := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := 0; i < n; i++ {
		g.Go(func() error {
			a, err := c.NewAgent(gctx, "acme", fmt.Sprintf("fanout-%05d", i))
			if err != nil {
				return err
			}
			_, err = a.Get(gctx, "openai-key")
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return res, fmt.Errorf("start agents: %w", err)
	}
	res.ConnectTime = time.Since(began)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	res.HeapPerAgent = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)

	completed, unsubCompleted, err := c.Events("acme", schemas.KindRotationCompleted)
	if err != nil {
		return res, err
	}
	defer unsubCompleted()
	confirmed, unsubConfirmed, err := c.Events("acme", schemas.KindInvalidationConfirmed)
	if err != nil {
		return res, err
	}
	defer unsubConfirmed()
	var mem0, mem1 runtime.MemStats
	runtime.ReadMemStats(&mem0)
	for i := 0; i < rotations; i++ {
		id, err := c.PublishRotate(ctx, "acme", "openai-key")
		if err != nil {
			return res, err
		}
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		drops, err := c.WaitDrops(wctx, id, n)
		cancel()
		if err != nil {
			return res, err
		}
		var done schemas.RotationCompleted
		if err := waitEvent(ctx, completed, schemas.TypeRotationCompleted, id, &done, func(d *schemas.RotationCompleted) string { return d.RequestID }); err != nil {
			return res, err
		}
		var conf schemas.InvalidationConfirmed
		if err := waitEvent(ctx, confirmed, schemas.TypeInvalidationConfirmed, id, &conf, func(c *schemas.InvalidationConfirmed) string { return c.RequestID }); err != nil {
			return res, err
		}
		if !conf.Complete || conf.Acked < n {
			return res, fmt.Errorf("rotation %s: %d of %d agents acked (missing %v)", id, conf.Acked, conf.LiveAgents, conf.Missing)
		}
		var last, pub time.Time
		for _, d := range drops {
			if d.Dropped.After(last) {
				last = d.Dropped
			}
			pub = d.Published
		}
		res.FinishToLastDrop = append(res.FinishToLastDrop, last.Sub(done.CompletedAt))
		res.PublishToLastDrop = append(res.PublishToLastDrop, last.Sub(pub))
		res.PublishToLastAck = append(res.PublishToLastAck, time.Duration(conf.LastAckMS*float64(time.Millisecond)))
		// One rotation at a time, as the raw rounds are: the next starts
		// once every agent's ack of this one was counted, so that a
		// sample is one rotation's latency, not two overlapping (bench
		// capacity measures throughput).
		betweenSamples(opts.CollectBetween)
	}
	runtime.ReadMemStats(&mem1)
	res.GCs = int(mem1.NumGC-mem0.NumGC) - int(mem1.NumForcedGC-mem0.NumForcedGC)
	res.AllocPerAgentRotation = float64(mem1.TotalAlloc-mem0.TotalAlloc) / float64(rotations) / float64(n)
	return res, nil
}

// waitEvent reads events until one of type typ whose data names request id
// arrives (decoded into v), for at most 30 seconds.
func waitEvent[T any](ctx context.Context, events <-chan schemas.Event, typ, id string, v *T, requestID func(*T) string) error {
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case ev := <-events:
			if ev.Type == typ && ev.DecodeData(typ, v) == nil && requestID(v) == id {
				return nil
			}
		case <-timeout.C:
			return fmt.Errorf("no %s event for %s", typ, id)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// rawBaseline publishes rounds messages to n plain subscribers, each on its
// own connection, and returns per round the time until the last received.
func rawBaseline(ctx context.Context, c *Cluster, n, rounds int, collect bool) ([]time.Duration, error) {
	url := c.Daemon.NATSURL()
	opts := c.Daemon.AdminNATSOptions()
	var (
		mu    sync.Mutex
		got   = map[int]int{}
		last  = map[int]time.Time{}
		cond  = sync.NewCond(&mu)
		conns []*nats.Conn
	)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	var made atomic.Int64
	g, _ := errgroup.WithContext(ctx)
	g.SetLimit(16)
	var cmu sync.Mutex
	for i := 0; i < n; i++ {
		g.Go(func() error {
			nc, err := nats.Connect(url, append(opts, nats.Name(fmt.Sprintf("raw-%05d", i)))...)
			if err != nil {
				return err
			}
			cmu.Lock()
			conns = append(conns, nc)
			cmu.Unlock()
			if _, err := nc.Subscribe("bench.raw", func(m *nats.Msg) {
				now := time.Now()
				var round int
				_, _ = fmt.Sscanf(string(m.Data), "%d", &round)
				mu.Lock()
				got[round]++
				if now.After(last[round]) {
					last[round] = now
				}
				cond.Broadcast()
				mu.Unlock()
			}); err != nil {
				return err
			}
			made.Add(1)
			return nc.Flush()
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("raw subscribers: %w", err)
	}
	pub, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	var out []time.Duration
	for r := 0; r < rounds; r++ {
		sent := time.Now()
		if err := pub.Publish("bench.raw", []byte(fmt.Sprint(r))); err != nil {
			return nil, err
		}
		if err := pub.Flush(); err != nil {
			return nil, err
		}
		deadline := time.Now().Add(30 * time.Second)
		mu.Lock()
		for got[r] < n {
			if time.Now().After(deadline) {
				mu.Unlock()
				return nil, fmt.Errorf("raw round %d: %d of %d received", r, got[r], n)
			}
			waitCond(cond, 100*time.Millisecond)
		}
		out = append(out, last[r].Sub(sent))
		mu.Unlock()
		betweenSamples(collect)
	}
	return out, nil
}

// betweenSamples pauses between two samples, running a garbage
// collection first when collect is set.
func betweenSamples(collect bool) {
	if collect {
		runtime.GC()
	}
	time.Sleep(5 * time.Millisecond)
}

// waitCond waits on cond (its lock held) for at most d.
func waitCond(cond *sync.Cond, d time.Duration) {
	t := time.AfterFunc(d, func() {
		cond.L.Lock()
		cond.Broadcast()
		cond.L.Unlock()
	})
	cond.Wait()
	t.Stop()
}

// PrintFanout writes the results as one table.
func PrintFanout(w io.Writer, results []FanoutResult) {
	fmt.Fprintln(w, "invalidation fanout: every agent on its own NATS connection, rekeyd + agents + embedded NATS in one process")
	if len(results) > 0 {
		if results[0].CollectBetween {
			fmt.Fprintln(w, "garbage collected between samples (--gc-between-samples=false to leave the collector alone)")
		} else {
			fmt.Fprintln(w, "the collector left alone: a collection of the shared heap may land inside a sample")
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents\tmeasure\tsamples\tp50\tp99\tmax\t")
	for _, r := range results {
		for _, row := range []struct {
			name string
			d    []time.Duration
		}{
			{"raw NATS publish -> last subscriber", r.RawBaseline},
			{"invalidation published -> last agent dropped", r.PublishToLastDrop},
			{"rotation finished -> last agent dropped", r.FinishToLastDrop},
			{"invalidation published -> last ack at rekeyd", r.PublishToLastAck},
		} {
			s := SortDurations(append([]time.Duration(nil), row.d...))
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t\n", r.Agents, row.name, len(s), ms(Percentile(s, 50)), ms(Percentile(s, 99)), ms(Percentile(s, 100)))
		}
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents\tp99 fanout / p99 raw\theap per agent connection\tconnect+start all agents\tallocated per agent per rotation\tGCs during rotations\t")
	for _, r := range results {
		raw := SortDurations(append([]time.Duration(nil), r.RawBaseline...))
		fin := SortDurations(append([]time.Duration(nil), r.PublishToLastDrop...))
		ratio := float64(Percentile(fin, 99)) / float64(max(Percentile(raw, 99), 1))
		fmt.Fprintf(tw, "%d\t%.2fx\t%.1f KiB\t%s\t%.1f KiB\t%d\t\n", r.Agents, ratio, r.HeapPerAgent/1024, r.ConnectTime.Round(time.Millisecond),
			r.AllocPerAgentRotation/1024, r.GCs)
	}
	tw.Flush()
}
