package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/usage"
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
	// MessageBytes is the size of an invalidation (data and headers), and
	// of each raw baseline message.
	MessageBytes int
	// ConnectTime is how long connecting and starting all agents took.
	ConnectTime time.Duration
	// CollectBetween is FanoutOptions.CollectBetween.
	CollectBetween bool
	// GCs is how many garbage collections ran during the rotations, not
	// counting the GCsBetween run between samples;
	// AllocPerAgentRotation the bytes the process allocated per agent
	// per rotation (rekeyd, the NATS server and the agents together).
	GCs, GCsBetween       int
	AllocPerAgentRotation float64
}

// FanoutOptions configures one Fanout measurement.
type FanoutOptions struct {
	Agents, Rotations int
	// CollectBetween runs a garbage collection between two samples, raw
	// rounds and rotations alike, when the next sample would otherwise
	// start one (go test -bench similarly collects before each
	// benchmark): then no collection of the one heap that holds every
	// agent's connection (in production, one heap per agent process)
	// lands inside a sample.
	CollectBetween bool
	// CPUProfile, if set, is the path prefix of two CPU profiles: of the
	// raw rounds (<prefix>-<agents>-raw.pprof) and of the rotations
	// (<prefix>-<agents>-fanout.pprof), warm-ups included.
	CPUProfile string
}

// Fanout measures invalidation fanout to opts.Agents agents, each on its
// own NATS connection, against a raw NATS baseline with as many plain
// subscribers, in the same process and the same run.
func Fanout(ctx context.Context, opts FanoutOptions, log *slog.Logger) (FanoutResult, error) {
	n, rotations := opts.Agents, opts.Rotations
	res := FanoutResult{Agents: n, Rotations: rotations, CollectBetween: opts.CollectBetween}
	c, err := demo.StartCluster(ctx, log, func(cfg *orchestrator.Config) {
		cfg.Rotation.MinInterval = 0
		cfg.Log.Level = "error"
	})
	if err != nil {
		return res, err
	}
	defer c.Close()

	// The raw baseline first, on the same server: n plain subscribers,
	// sent messages as large as an invalidation, so that the two differ
	// only by what rekey does. Its connections are closed before the
	// agents connect, so it has the server and the heap to itself.
	size, err := invalidationSize(ctx, c, "acme", "openai-key")
	if err != nil {
		return res, err
	}
	res.MessageBytes = size
	stopProfile, err := startProfile(opts.CPUProfile, n, "raw")
	if err != nil {
		return res, err
	}
	res.RawBaseline, err = rawBaseline(ctx, c, n, rotations, size, opts.CollectBetween, stopProfile)
	if err != nil {
		return res, err
	}

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
	if err := settleUsage(ctx, c, demo.AgentUsageInterval); err != nil {
		return res, err
	}
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
	var mem0, mem1 runtime.MemStats // after the warm-up, at the end
	gap := newSampleGap(opts.CollectBetween)
	stopProfile, err = startProfile(opts.CPUProfile, n, "fanout")
	if err != nil {
		return res, err
	}
	defer stopProfile()
	for i := -1; i < rotations; i++ { // -1: a warm-up rotation, not counted
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
		if i >= 0 {
			res.FinishToLastDrop = append(res.FinishToLastDrop, last.Sub(done.CompletedAt))
			res.PublishToLastDrop = append(res.PublishToLastDrop, last.Sub(pub))
			res.PublishToLastAck = append(res.PublishToLastAck, time.Duration(conf.LastAckMS*float64(time.Millisecond)))
		}
		// One rotation at a time, as the raw rounds are: the next starts
		// once every agent's ack of this one was counted, so that a
		// sample is one rotation's latency, not two overlapping (bench
		// capacity measures throughput).
		gap.pause()
		if i < 0 {
			runtime.ReadMemStats(&mem0) // allocations and GCs count from here
		}
	}
	stopProfile()
	runtime.ReadMemStats(&mem1)
	res.GCsBetween = int(mem1.NumForcedGC - mem0.NumForcedGC)
	res.GCs = int(mem1.NumGC-mem0.NumGC) - res.GCsBetween
	res.AllocPerAgentRotation = float64(mem1.TotalAlloc-mem0.TotalAlloc) / float64(rotations) / float64(n)
	return res, nil
}

// settleUsage waits until the use reports of the agents' first Gets were
// published (within interval) and counted by rekeyd: 5,000 of them cost
// rekeyd's usage trigger most of a second of CPU, which would otherwise
// fall on the first samples and nowhere in the raw rounds.
func settleUsage(ctx context.Context, c *demo.Cluster, interval time.Duration) error {
	select {
	case <-time.After(interval + interval/5): // the reports' jitter is 10%
	case <-ctx.Done():
		return ctx.Err()
	}
	for deadline := time.Now().Add(60 * time.Second); !c.ConsumerDrained(ctx, schemas.UsageStream("acme"), usage.DurableFor("acme")); time.Sleep(50 * time.Millisecond) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("use reports still pending or unacked after 60s")
		}
	}
	return nil
}

// startProfile starts a CPU profile into <prefix>-<agents>-<phase>.pprof
// when prefix is set. The returned stop may be called more than once.
func startProfile(prefix string, agents int, phase string) (stop func(), err error) {
	if prefix == "" {
		return func() {}, nil
	}
	f, err := os.Create(fmt.Sprintf("%s-%d-%s.pprof", prefix, agents, phase))
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			pprof.StopCPUProfile()
			f.Close()
		})
	}, nil
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

// rawBaseline publishes rounds messages of size bytes to n plain
// subscribers, each on its own connection, and returns per round the time
// until the last received it.
// stopProfile is called after the last round, before the subscribers
// are closed.
func rawBaseline(ctx context.Context, c *demo.Cluster, n, rounds, size int, collect bool, stopProfile func()) ([]time.Duration, error) {
	goroutines := runtime.NumGoroutine()
	raw, err := newRawSubscribers(ctx, c, n, size)
	if err != nil {
		return nil, err
	}
	defer func() {
		raw.close()
		// The server lets go of closed connections in the background:
		// wait for it, so that the heap measured next holds none of them.
		for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > goroutines+16 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	}()
	out := make([]time.Duration, 0, rounds)
	gap := newSampleGap(collect)
	for i := -1; i < rounds; i++ { // -1: a warm-up round, not counted
		d, err := raw.round(i)
		if err != nil {
			return nil, err
		}
		if i >= 0 {
			out = append(out, d)
		}
		gap.pause()
	}
	stopProfile()
	return out, nil
}

// rawSubscribers are n plain subscribers of bench.raw, each on its own
// connection, and a publisher.
type rawSubscribers struct {
	n, size int
	conns   []*nats.Conn
	pub     *nats.Conn
	mu      sync.Mutex
	cond    *sync.Cond
	got     map[int]int       // by round: how many received
	last    map[int]time.Time // by round: the last receipt
}

func newRawSubscribers(ctx context.Context, c *demo.Cluster, n, size int) (*rawSubscribers, error) {
	r := &rawSubscribers{n: n, size: size, got: map[int]int{}, last: map[int]time.Time{}}
	r.cond = sync.NewCond(&r.mu)
	url, opts := c.Daemon.NATSURL(), c.Daemon.AdminNATSOptions()
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
			r.conns = append(r.conns, nc)
			cmu.Unlock()
			if _, err := nc.Subscribe("bench.raw", r.receive); err != nil {
				return err
			}
			return nc.Flush()
		})
	}
	err := g.Wait()
	if err == nil {
		r.pub, err = nats.Connect(url, opts...)
	}
	if err != nil {
		r.close()
		return nil, fmt.Errorf("raw subscribers: %w", err)
	}
	return r, nil
}

func (r *rawSubscribers) receive(m *nats.Msg) {
	now := time.Now()
	var round int
	_, _ = fmt.Sscanf(string(m.Data), "%d", &round)
	r.mu.Lock()
	r.got[round]++
	if now.After(r.last[round]) {
		r.last[round] = now
	}
	if r.got[round] == r.n { // only the last wakes the round's waiter
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

// round publishes one message and returns the time until the last
// subscriber received it.
func (r *rawSubscribers) round(i int) (time.Duration, error) {
	msg := fmt.Appendf(nil, "%d ", i)
	msg = append(msg, bytes.Repeat([]byte("x"), max(r.size-len(msg), 0))...)
	sent := time.Now()
	if err := r.pub.Publish("bench.raw", msg); err != nil {
		return 0, err
	}
	if err := r.pub.Flush(); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(30 * time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.got[i] < r.n {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("raw round %d: %d of %d received", i, r.got[i], r.n)
		}
		waitCond(r.cond, 100*time.Millisecond)
	}
	return r.last[i].Sub(sent), nil
}

func (r *rawSubscribers) close() {
	for _, nc := range append(r.conns, r.pub) {
		if nc != nil {
			nc.Close()
		}
	}
}

// invalidationSize rotates secret once and returns the size of the
// invalidation an agent received for it: data and headers.
func invalidationSize(ctx context.Context, c *demo.Cluster, tenant, secret string) (int, error) {
	got := make(chan *nats.Msg, 16)
	sub, err := c.Daemon.Bus().NC.ChanSubscribe(schemas.InvalidateSubject(tenant, secret), got)
	if err != nil {
		return 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	id, err := c.PublishRotate(ctx, tenant, secret)
	if err != nil {
		return 0, err
	}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m := <-got:
			var inv schemas.Invalidation
			if _, err := schemas.DecodeAs(m.Data, schemas.TypeInvalidation, &inv); err != nil || inv.RequestID != id {
				continue
			}
			size := len(m.Data)
			if len(m.Header) > 0 {
				size += len("NATS/1.0\r\n\r\n")
				for k, vs := range m.Header {
					for _, v := range vs {
						size += len(k) + len(": \r\n") + len(v)
					}
				}
			}
			return size, nil
		case <-timeout:
			return 0, fmt.Errorf("no invalidation for %s/%s rotated by %s", tenant, secret, id)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// sampleGap pauses between two samples (sampleSpacing). When collect is
// set it also runs a garbage collection there once the heap has grown half
// way from the live heap of the last collection to the goal of the next:
// the runtime starts its own collection before the goal, inside a sample.
// Collecting only then, and not after every sample, leaves the goroutines'
// stacks alone: each collection shrinks them, and they grow again in the
// next sample.
type sampleGap struct {
	collect bool
	m       []metrics.Sample // heap objects, live heap, heap goal
}

func newSampleGap(collect bool) *sampleGap {
	return &sampleGap{collect: collect, m: []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/goal:bytes"},
	}}
}

func (g *sampleGap) pause() {
	if g.collect {
		metrics.Read(g.m)
		heap, live, goal := g.m[0].Value.Uint64(), g.m[1].Value.Uint64(), g.m[2].Value.Uint64()
		if heap >= live+(goal-min(live, goal))/2 {
			runtime.GC()
		}
	}
	time.Sleep(sampleSpacing)
}

// sampleSpacing is the pause before every sample, raw round and rotation
// alike. A rotation cannot start before the previous one's acks came
// (about 130 ms at 1,000 agents), and raw rounds sent back to back, 5 ms
// apart, ran on warm caches and a busy CPU: their median was up to 20%
// lower than that of the same rounds 60 ms apart, while the rotations'
// did not move. With the same pause both start from a quiet process.
const sampleSpacing = 50 * time.Millisecond

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
			fmt.Fprintln(w, "garbage collected between samples once the heap is half way to the next collection (--gc-between-samples=false to leave the collector alone)")
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
			{fmt.Sprintf("raw NATS publish (%d B) -> last subscriber", r.MessageBytes), r.RawBaseline},
			{"invalidation published -> last agent dropped", r.PublishToLastDrop},
			{"rotation finished -> last agent dropped", r.FinishToLastDrop},
			{"invalidation published -> last ack at rekeyd", r.PublishToLastAck},
		} {
			s := SortDurations(append([]time.Duration(nil), row.d...))
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t\n", r.Agents, row.name, len(s), demo.Millis(Percentile(s, 50)), demo.Millis(Percentile(s, 99)), demo.Millis(Percentile(s, 100)))
		}
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents\tp50 fanout / p50 raw\tp99 fanout / p99 raw\theap per agent connection\tconnect+start all agents\tallocated per agent per rotation\tGCs during / between rotations\t")
	for _, r := range results {
		raw := SortDurations(append([]time.Duration(nil), r.RawBaseline...))
		fin := SortDurations(append([]time.Duration(nil), r.PublishToLastDrop...))
		ratio := func(p float64) float64 { return float64(Percentile(fin, p)) / float64(max(Percentile(raw, p), 1)) }
		fmt.Fprintf(tw, "%d\t%.2fx\t%.2fx\t%.1f KiB\t%s\t%.1f KiB\t%d / %d\t\n", r.Agents, ratio(50), ratio(99), r.HeapPerAgent/1024, r.ConnectTime.Round(time.Millisecond),
			r.AllocPerAgentRotation/1024, r.GCs, r.GCsBetween)
	}
	tw.Flush()
}
