package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/usage"
)

// The tenant and secret the fanout bench rotates, and the subject of its
// raw baseline.
const (
	fanoutTenant = "acme"
	fanoutSecret = "openai-key"
	rawSubject   = "bench.raw"
)

// FanoutResult is one run of `rekeyctl bench fanout` at one agent count.
type FanoutResult struct {
	Agents, Rotations, Procs, Run int
	// RawBaseline: a plain NATS publish -> the last of as many plain
	// subscribers (each on its own connection, spread over the agent
	// processes) received it.
	RawBaseline []time.Duration
	// PublishToLastDrop: invalidation published -> the last agent dropped.
	PublishToLastDrop []time.Duration
	// FinishToLastDrop: rotation finished (RotationCompleted.CompletedAt)
	// -> the last agent dropped the old value, one sample per rotation.
	FinishToLastDrop []time.Duration
	// PublishToLastAck: invalidation published -> the last live agent's
	// ack reached fanout (InvalidationConfirmed.LastAckMS).
	PublishToLastAck []time.Duration
	// MessageBytes is the size of an invalidation (data and headers), and
	// of each raw baseline message.
	MessageBytes int
	// ConnectTime is how long connecting and starting all agents took.
	ConnectTime time.Duration
	// ServerHeapPerAgent is rekeyd's process heap (embedded server
	// included) per connected agent; AgentHeapPerAgent the agent
	// processes' heap per agent.
	ServerHeapPerAgent, AgentHeapPerAgent float64
	// RawGCs and FanoutGCs are the collections in rekeyd's process during
	// the raw rounds and during the rotations; AllocPerAgentRotation the
	// bytes it allocated per agent per rotation.
	RawGCs, FanoutGCs     int
	AllocPerAgentRotation float64
	// RawCPU and FanoutCPU are the CPU time per sample (raw round or
	// rotation, the pause after it included) in rekeyd's process and in
	// the agent processes.
	RawCPU, FanoutCPU phaseCPU
}

// FanoutOptions configures one Fanout measurement.
type FanoutOptions struct {
	Agents, Rotations int
	// Procs is how many agent processes hold the agents, and before them
	// the raw subscribers, Agents/Procs each (default 10).
	Procs int
	// Run numbers the run in the profiles' names.
	Run int
	// CPUProfile, if set, is the path prefix of two CPU profiles of the
	// rekeyd process: of the raw rounds (<prefix>-<agents>-run<run>-raw.pprof)
	// and of the rotations (...-fanout.pprof), warm-ups included.
	CPUProfile string
	// Executable is the binary started as the child processes; it must
	// call RunFanoutChild first (rekeyctl does). Default: this process's.
	Executable string
}

// Fanout measures invalidation fanout as production runs it: rekeyd, with
// the embedded NATS server, in its own process; opts.Agents agents, each
// on its own NATS connection with its tenant's credentials, in opts.Procs
// other processes; and, in the same run and the same processes, a raw
// NATS baseline: as many plain subscribers, one plain publisher. Nothing
// steers the garbage collector.
func Fanout(ctx context.Context, opts FanoutOptions, log *slog.Logger) (FanoutResult, error) {
	if opts.Procs <= 0 {
		opts.Procs = 10
	}
	opts.Procs = min(opts.Procs, opts.Agents)
	n, rotations := opts.Agents, opts.Rotations
	res := FanoutResult{Agents: n, Rotations: rotations, Procs: opts.Procs, Run: opts.Run}
	if n <= 0 || n > maxFanoutAgents {
		return res, fmt.Errorf("agents: %d is not in 1..%d", n, maxFanoutAgents)
	}
	if opts.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return res, fmt.Errorf("executable: %w", err)
		}
		opts.Executable = exe
	}
	if err := raiseFileLimit(64 + 4*uint64(opts.Procs)); err != nil {
		return res, err
	}
	dir, err := os.MkdirTemp("", "rekey-fanout-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	r := &fanoutRig{reports: make(chan []string, 4096)}
	defer r.stop()
	r.rekeyd, err = r.start(ctx, opts.Executable, "rekeyd", dirEnv+"="+dir)
	if err != nil {
		return res, err
	}
	ready, err := r.rekeyd.reply(ctx, time.Minute)
	if f := strings.Fields(ready); err == nil && (len(f) != 2 || f[0] != "ready") {
		err = fmt.Errorf("rekeyd process: %q instead of ready", ready)
	}
	if err != nil {
		return res, err
	}
	url := strings.Fields(ready)[1]
	auth, err := orchestrator.LoadNATSAuth(dir)
	if err != nil {
		return res, err
	}
	bus, err := orchestrator.Connect(ctx, url, "bench-fanout", orchestrator.NATSConfig{}, log, daemon.AdminNATSOptions(auth)...)
	if err != nil {
		return res, err
	}
	defer bus.Close()
	if res.MessageBytes, err = invalidationSize(ctx, bus, fanoutTenant, fanoutSecret); err != nil {
		return res, err
	}
	for range opts.Procs {
		p, err := r.start(ctx, opts.Executable, "agents", natsEnv+"="+url, dirEnv+"="+dir)
		if err != nil {
			return res, err
		}
		r.agents = append(r.agents, p)
	}

	// The raw baseline first: n plain subscribers spread over the agent
	// processes, sent messages as large as an invalidation by a plain
	// publisher, so that the two differ only by what rekey does. They are
	// closed before the agents connect.
	share := func(cmd string) func(i int) string { return shareCommand(cmd, n, opts.Procs) }
	if err := r.each(ctx, share("raw"), 5*time.Minute); err != nil {
		return res, fmt.Errorf("raw subscribers: %w", err)
	}
	if res.RawBaseline, res.RawCPU, res.RawGCs, err = r.rawRounds(ctx, opts, url, daemon.AdminNATSOptions(auth), res.MessageBytes); err != nil {
		return res, err
	}
	if err := r.each(ctx, func(int) string { return "close" }, time.Minute); err != nil {
		return res, err
	}
	time.Sleep(time.Second) // the server lets go of closed connections in the background
	before, err := r.rekeyd.stats(ctx, true)
	if err != nil {
		return res, err
	}

	began := time.Now()
	if err := r.each(ctx, share("agents"), 10*time.Minute); err != nil {
		return res, fmt.Errorf("start agents: %w", err)
	}
	res.ConnectTime = time.Since(began)
	if err := settleUsage(ctx, func() bool {
		return demo.ConsumerDrained(ctx, bus.JS, schemas.UsageStream(fanoutTenant), usage.DurableFor(fanoutTenant))
	}, demo.AgentUsageInterval); err != nil {
		return res, err
	}
	after, err := r.rekeyd.stats(ctx, true)
	if err != nil {
		return res, err
	}
	res.ServerHeapPerAgent = float64(int64(after.heap)-int64(before.heap)) / float64(n)
	for _, p := range r.agents {
		s, err := p.stats(ctx, true)
		if err != nil {
			return res, err
		}
		res.AgentHeapPerAgent += float64(s.heap) / float64(n)
	}

	completed, unsubCompleted, err := demo.SubscribeEvents(bus.NC, fanoutTenant, schemas.KindRotationCompleted)
	if err != nil {
		return res, err
	}
	defer unsubCompleted()
	confirmed, unsubConfirmed, err := demo.SubscribeEvents(bus.NC, fanoutTenant, schemas.KindInvalidationConfirmed)
	if err != nil {
		return res, err
	}
	defer unsubConfirmed()
	stopProfile, err := r.profile(ctx, opts, "fanout")
	if err != nil {
		return res, err
	}
	defer stopProfile()
	var s0 procStats
	var a0 time.Duration
	for i := -1; i < rotations; i++ { // -1: a warm-up rotation, not counted
		id, err := demo.PublishRotate(ctx, bus, fanoutTenant, fanoutSecret)
		if err != nil {
			return res, err
		}
		last, pub, err := r.collect(ctx, "drop", id)
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
		if i >= 0 {
			res.FinishToLastDrop = append(res.FinishToLastDrop, last.Sub(done.CompletedAt))
			res.PublishToLastDrop = append(res.PublishToLastDrop, last.Sub(pub))
			res.PublishToLastAck = append(res.PublishToLastAck, time.Duration(conf.LastAckMS*float64(time.Millisecond)))
		} else if s0, a0, err = r.cpu(ctx); err != nil {
			return res, err
		}
		// One rotation at a time, as the raw rounds are: the next starts
		// once every agent's ack of this one was counted, so that a
		// sample is one rotation's latency, not two overlapping (bench
		// capacity measures throughput).
		time.Sleep(sampleSpacing)
	}
	stopProfile()
	var s1 procStats
	if res.FanoutCPU, s1, err = r.since(ctx, s0, a0, rotations); err != nil {
		return res, err
	}
	res.FanoutGCs = int(s1.gcs - s0.gcs)
	res.AllocPerAgentRotation = float64(s1.alloc-s0.alloc) / float64(max(rotations, 1)) / float64(n)
	return res, nil
}

// rawRounds publishes opts.Rotations messages of size bytes (and a
// warm-up) to the agent processes' raw subscribers from a plain publisher
// and returns per round the time until the last received it, and the
// CPU per round and collections in rekeyd's process meanwhile.
func (r *fanoutRig) rawRounds(ctx context.Context, opts FanoutOptions, url string, natsOpts []nats.Option, size int) ([]time.Duration, phaseCPU, int, error) {
	pub, err := nats.Connect(url, append(natsOpts, nats.Name("raw-publisher"))...)
	if err != nil {
		return nil, phaseCPU{}, 0, fmt.Errorf("raw publisher: %w", err)
	}
	defer pub.Close()
	stopProfile, err := r.profile(ctx, opts, "raw")
	if err != nil {
		return nil, phaseCPU{}, 0, err
	}
	defer stopProfile()
	out := make([]time.Duration, 0, opts.Rotations)
	var s0 procStats
	var a0 time.Duration
	for i := -1; i < opts.Rotations; i++ { // -1: a warm-up round, not counted
		msg := fmt.Appendf(nil, "%d ", i)
		msg = append(msg, bytes.Repeat([]byte("x"), max(size-len(msg), 0))...)
		sent := time.Now()
		if err := pub.Publish(rawSubject, msg); err != nil {
			return nil, phaseCPU{}, 0, err
		}
		if err := pub.Flush(); err != nil {
			return nil, phaseCPU{}, 0, err
		}
		last, _, err := r.collect(ctx, "raw", strconv.Itoa(i))
		if err != nil {
			return nil, phaseCPU{}, 0, err
		}
		if i >= 0 {
			out = append(out, last.Sub(sent))
		} else if s0, a0, err = r.cpu(ctx); err != nil {
			return nil, phaseCPU{}, 0, err
		}
		time.Sleep(sampleSpacing)
	}
	stopProfile()
	cpu, s1, err := r.since(ctx, s0, a0, opts.Rotations)
	return out, cpu, int(s1.gcs - s0.gcs), err
}

// shareCommand spreads n connections over procs child processes: child i
// gets "<cmd> <count> <first index>", the first n%procs one more.
func shareCommand(cmd string, n, procs int) func(i int) string {
	return func(i int) string {
		per, extra := n/procs, n%procs
		first := i*per + min(i, extra)
		if i < extra {
			per++
		}
		return fmt.Sprintf("%s %d %d", cmd, per, first)
	}
}

// settleUsage waits until the use reports of the agents' first Gets were
// published (within interval) and counted by rekeyd (drained): 10,000 of
// them cost rekeyd's usage trigger a second or two of CPU, which would
// otherwise fall on the first samples and nowhere in the raw rounds.
func settleUsage(ctx context.Context, drained func() bool, interval time.Duration) error {
	select {
	case <-time.After(interval + interval/5): // the reports' jitter is 10%
	case <-ctx.Done():
		return ctx.Err()
	}
	for deadline := time.Now().Add(60 * time.Second); !drained(); time.Sleep(50 * time.Millisecond) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("use reports still pending or unacked after 60s")
		}
	}
	return nil
}

// fanoutRig is the child processes of one Fanout run.
type fanoutRig struct {
	rekeyd  *fanoutProc
	agents  []*fanoutProc
	reports chan []string // "raw"/"drop" lines of every agent process
}

// fanoutProc is one child process (RunFanoutChild).
type fanoutProc struct {
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	replies chan string   // its answers to commands, closed when it exited
	exited  chan struct{} // closed once it exited
}

// start runs the executable as a child of role with env.
func (r *fanoutRig) start(ctx context.Context, exe, role string, env ...string) (*fanoutProc, error) {
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), childEnv+"="+role), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s process: %w", role, err)
	}
	p := &fanoutProc{name: fmt.Sprintf("%s process %d", role, cmd.Process.Pid), cmd: cmd, stdin: stdin,
		replies: make(chan string, 16), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) > 0 && (f[0] == "raw" || f[0] == "drop" || f[0] == "served") {
				select {
				case r.reports <- f:
				case <-ctx.Done():
				}
				continue
			}
			p.replies <- sc.Text()
		}
		_ = cmd.Wait()
		close(p.replies)
		close(p.exited)
	}()
	return p, nil
}

// stop closes every child's stdin and waits for it to exit (killing it
// after 30 s).
func (r *fanoutRig) stop() {
	procs := append(slices.Clone(r.agents), r.rekeyd)
	for _, p := range procs {
		if p != nil {
			_ = p.stdin.Close()
		}
	}
	for _, p := range procs {
		if p == nil {
			continue
		}
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
}

// reply waits for the process's next answer.
func (p *fanoutProc) reply(ctx context.Context, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case line, ok := <-p.replies:
		if !ok {
			return "", fmt.Errorf("%s exited (%v)", p.name, p.cmd.ProcessState)
		}
		if msg, isErr := strings.CutPrefix(line, "err "); isErr {
			return "", fmt.Errorf("%s: %s", p.name, msg)
		}
		return line, nil
	case <-t.C:
		return "", fmt.Errorf("%s: no answer within %s", p.name, timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// send writes one command.
func (p *fanoutProc) send(cmd string) error {
	if _, err := io.WriteString(p.stdin, cmd+"\n"); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	return nil
}

// do sends one command and waits for its answer.
func (p *fanoutProc) do(ctx context.Context, cmd string, timeout time.Duration) (string, error) {
	if err := p.send(cmd); err != nil {
		return "", err
	}
	return p.reply(ctx, timeout)
}

// procStats is what a child process answers to "stats".
type procStats struct {
	heap, gcs, alloc uint64
	cpu              time.Duration
}

// stats asks the process for its heap, collections, allocated bytes
// (after a collection if gc) and CPU time.
func (p *fanoutProc) stats(ctx context.Context, gc bool) (procStats, error) {
	cmd := "stats"
	if gc {
		cmd += " gc"
	}
	line, err := p.do(ctx, cmd, time.Minute)
	if err != nil {
		return procStats{}, err
	}
	var s procStats
	if _, err := fmt.Sscanf(line, "stats %d %d %d %d", &s.heap, &s.gcs, &s.alloc, &s.cpu); err != nil {
		return procStats{}, fmt.Errorf("%s: %q: %w", p.name, line, err)
	}
	return s, nil
}

// cpu returns the CPU time used so far by the rekeyd process and by the
// agent processes together, and rekeyd's stats.
func (r *fanoutRig) cpu(ctx context.Context) (rekeyd procStats, agents time.Duration, err error) {
	if rekeyd, err = r.rekeyd.stats(ctx, false); err != nil {
		return rekeyd, 0, err
	}
	for _, p := range r.agents {
		s, err := p.stats(ctx, false)
		if err != nil {
			return rekeyd, 0, err
		}
		agents += s.cpu
	}
	return rekeyd, agents, nil
}

// phaseCPU is the CPU time per sample of one phase, in rekeyd's process
// and in the agent processes together.
type phaseCPU struct{ Rekeyd, Agents time.Duration }

// since returns the CPU per sample used since s0 and a0 (cpu's answers),
// and the collections in rekeyd's process meanwhile.
func (r *fanoutRig) since(ctx context.Context, s0 procStats, a0 time.Duration, samples int) (phaseCPU, procStats, error) {
	s1, a1, err := r.cpu(ctx)
	if err != nil {
		return phaseCPU{}, s1, err
	}
	k := time.Duration(max(samples, 1))
	return phaseCPU{Rekeyd: (s1.cpu - s0.cpu) / k, Agents: (a1 - a0) / k}, s1, nil
}

// each sends agent process i the command cmd(i), all at once, and waits
// for every answer.
func (r *fanoutRig) each(ctx context.Context, cmd func(i int) string, timeout time.Duration) error {
	for i, p := range r.agents {
		if err := p.send(cmd(i)); err != nil {
			return err
		}
	}
	for _, p := range r.agents {
		if _, err := p.reply(ctx, timeout); err != nil {
			return err
		}
	}
	return nil
}

// collect waits until every agent process reported kind ("raw" or
// "drop") for key (the round or the request id) and returns the latest
// receipt and, for a drop, when the invalidation was published. Reports
// of other keys (an earlier sample's) are skipped.
func (r *fanoutRig) collect(ctx context.Context, kind, key string) (last, pub time.Time, err error) {
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	for got := 0; got < len(r.agents); {
		select {
		case f := <-r.reports:
			if f[0] != kind || len(f) < 3 || f[1] != key {
				continue
			}
			ns, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				return last, pub, fmt.Errorf("report %q: %w", f, err)
			}
			if t := time.Unix(0, ns); t.After(last) {
				last = t
			}
			if len(f) > 3 {
				ns, _ := strconv.ParseInt(f[3], 10, 64)
				pub = time.Unix(0, ns)
			}
			got++
		case <-timeout.C:
			return last, pub, fmt.Errorf("%s %s: %d of %d agent processes reported within 60s", kind, key, got, len(r.agents))
		case <-ctx.Done():
			return last, pub, ctx.Err()
		}
	}
	return last, pub, nil
}

// profile starts a CPU profile of the rekeyd process for phase when
// opts.CPUProfile is set. The returned stop may be called more than once.
func (r *fanoutRig) profile(ctx context.Context, opts FanoutOptions, phase string) (stop func(), err error) {
	if opts.CPUProfile == "" {
		return func() {}, nil
	}
	// rekeyd's process, and the first agent process (its raw subscribers
	// in the raw phase, its agents in the other).
	procs := map[string]*fanoutProc{"": r.rekeyd}
	if len(r.agents) > 0 {
		procs["-agents0"] = r.agents[0]
	}
	for suffix, p := range procs {
		path := fmt.Sprintf("%s-%d-run%d-%s%s.pprof", opts.CPUProfile, opts.Agents, opts.Run, phase, suffix)
		if _, err := p.do(ctx, "profile "+path, time.Minute); err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
	}
	stopped := false
	return func() {
		if !stopped {
			stopped = true
			for _, p := range procs {
				_, _ = p.do(ctx, "unprofile", time.Minute)
			}
		}
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

// invalidationSize rotates secret once and returns the size of the
// invalidation an agent received for it: data and headers.
func invalidationSize(ctx context.Context, bus *orchestrator.Bus, tenant, secret string) (int, error) {
	got := make(chan *nats.Msg, 16)
	sub, err := bus.NC.ChanSubscribe(schemas.InvalidateSubject(tenant, secret), got)
	if err != nil {
		return 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	id, err := demo.PublishRotate(ctx, bus, tenant, secret)
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

// sampleSpacing is the pause before every sample, raw round and rotation
// alike. A rotation cannot start before the previous one's acks came
// (about 130 ms at 1,000 agents), and raw rounds sent back to back, 5 ms
// apart, ran on warm caches and a busy CPU: their median was up to 20%
// lower than that of the same rounds 60 ms apart, while the rotations'
// did not move. With the same pause both start from a quiet process.
const sampleSpacing = 50 * time.Millisecond

// PrintFanout writes a table of every run and one of the spread between
// the runs of each agent count.
func PrintFanout(w io.Writer, results []FanoutResult) {
	if len(results) == 0 {
		return
	}
	fmt.Fprintf(w, "invalidation fanout: rekeyd + embedded NATS in one process, agents (each on its own connection) in %d others; the raw baseline's subscribers in the same %d, one plain publisher\n", results[0].Procs, results[0].Procs)
	fmt.Fprintf(w, "%d samples per row, one at a time; published -> last agent dropped vs raw publish (%d B) -> last subscriber received\n", len(results[0].RawBaseline), results[0].MessageBytes)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents\trun\traw p50\traw p99\traw max\tfanout p50\tfanout p99\tfanout max\tp50 ratio\tp99 ratio\tfinished -> dropped p99\tpublished -> last ack p50\trekeyd GCs raw / fanout\trekeyd CPU per sample raw / fanout\tagent processes' CPU per sample raw / fanout\t")
	for _, r := range results {
		raw, fan := sorted(r.RawBaseline), sorted(r.PublishToLastDrop)
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.2fx\t%.2fx\t%s\t%s\t%d / %d\t%s / %s\t%s / %s\t\n", r.Agents, r.Run,
			demo.Millis(Percentile(raw, 50)), demo.Millis(Percentile(raw, 99)), demo.Millis(Percentile(raw, 100)),
			demo.Millis(Percentile(fan, 50)), demo.Millis(Percentile(fan, 99)), demo.Millis(Percentile(fan, 100)),
			r.Ratio(50), r.Ratio(99), demo.Millis(Percentile(sorted(r.FinishToLastDrop), 99)),
			demo.Millis(Percentile(sorted(r.PublishToLastAck), 50)), r.RawGCs, r.FanoutGCs,
			demo.Millis(r.RawCPU.Rekeyd), demo.Millis(r.FanoutCPU.Rekeyd), demo.Millis(r.RawCPU.Agents), demo.Millis(r.FanoutCPU.Agents))
	}
	tw.Flush()
	fmt.Fprintln(w, "spread between runs (min .. max):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents\truns\tp50 ratio\tp99 ratio\traw p99\tfanout p99\tconnect+start agents\trekeyd heap per agent\tagent processes' heap per agent\trekeyd alloc per agent per rotation\t")
	var sizes []int
	for _, r := range results {
		if !slices.Contains(sizes, r.Agents) {
			sizes = append(sizes, r.Agents)
		}
	}
	for _, n := range sizes {
		var p50, p99 []float64
		var rawP99, fanP99, connect []time.Duration
		var heap, agentHeap, alloc float64
		runs := 0
		for _, r := range results {
			if r.Agents != n {
				continue
			}
			runs++
			p50, p99 = append(p50, r.Ratio(50)), append(p99, r.Ratio(99))
			rawP99 = append(rawP99, Percentile(sorted(r.RawBaseline), 99))
			fanP99 = append(fanP99, Percentile(sorted(r.PublishToLastDrop), 99))
			connect = append(connect, r.ConnectTime)
			heap, agentHeap, alloc = heap+r.ServerHeapPerAgent, agentHeap+r.AgentHeapPerAgent, alloc+r.AllocPerAgentRotation
		}
		span := func(d []time.Duration) string {
			return fmt.Sprintf("%s .. %s", demo.Millis(slices.Min(d)), demo.Millis(slices.Max(d)))
		}
		fmt.Fprintf(tw, "%d\t%d\t%.2fx .. %.2fx\t%.2fx .. %.2fx\t%s\t%s\t%s .. %s\t%.1f KiB\t%.1f KiB\t%.1f KiB\t\n", n, runs,
			slices.Min(p50), slices.Max(p50), slices.Min(p99), slices.Max(p99), span(rawP99), span(fanP99),
			slices.Min(connect).Round(time.Millisecond), slices.Max(connect).Round(time.Millisecond),
			heap/float64(runs)/1024, agentHeap/float64(runs)/1024, alloc/float64(runs)/1024)
	}
	tw.Flush()
}

// Ratio is the fanout's percentile p (published -> last dropped) over the
// raw baseline's.
func (r FanoutResult) Ratio(p float64) float64 {
	return float64(Percentile(sorted(r.PublishToLastDrop), p)) / float64(max(Percentile(sorted(r.RawBaseline), p), 1))
}

func sorted(d []time.Duration) []time.Duration { return SortDurations(slices.Clone(d)) }
