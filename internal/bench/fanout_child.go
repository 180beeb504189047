package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/orchestrator"
)

// The child processes of `rekeyctl bench fanout` are the bench's own
// binary (rekeyctl, or the test binary) started again with childEnv set:
// "rekeyd" runs rekeyd with the embedded NATS server on the data dir
// dirEnv names; "agents" holds connections to it (raw subscribers or
// agents). Each reads commands from stdin, one a line, answers each with
// one line on stdout, and reports receipts on stdout as they complete
// (see fanoutChild.read). Stdin closed: the child closes everything and
// exits.
const (
	childEnv = "REKEY_BENCH_FANOUT_CHILD"
	dirEnv   = "REKEY_BENCH_FANOUT_DIR"
	natsEnv  = "REKEY_BENCH_FANOUT_NATS"
)

// RunFanoutChild runs the child process of `rekeyctl bench fanout` when
// this process was started as one, and then exits; otherwise it returns at
// once. rekeyctl's main and the bench's TestMain call it first.
func RunFanoutChild() {
	role := os.Getenv(childEnv)
	if role == "" {
		return
	}
	out := &lineWriter{w: bufio.NewWriter(os.Stdout)}
	var err error
	switch role {
	case "rekeyd":
		err = runRekeydChild(os.Getenv(dirEnv), os.Stdin, out)
	case "agents":
		err = runAgentsChild(os.Getenv(natsEnv), os.Getenv(dirEnv), os.Stdin, out)
	case "sidecar-clients":
		err = runSidecarClients(out)
	default:
		err = fmt.Errorf("%s: unknown role %q", childEnv, role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench fanout %s child: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// lineWriter writes whole lines from many goroutines.
type lineWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (l *lineWriter) line(fields ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.w, fields...)
	_ = l.w.Flush()
}

// raiseFileLimit raises the soft limit of open files to the hard one when
// it is below need (Go does so at start since 1.19; this also says when
// the hard limit is too low).
func raiseFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("open files limit: %w", err)
	}
	if lim.Cur >= need {
		return nil
	}
	if lim.Max < need {
		return fmt.Errorf("open files limit: %d connections need %d files, the hard limit is %d (ulimit -Hn)", need, need, lim.Max)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("open files limit: raise to %d: %w", lim.Max, err)
	}
	return nil
}

// commands calls do for each line read from in, answering on out with
// what it returns ("err <message>" for an error), until in ends.
func commands(in io.Reader, out *lineWriter, do func(cmd string, args []string) (string, error)) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		reply, err := do(f[0], f[1:])
		if err != nil {
			out.line("err", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		out.line(reply)
	}
}

// runRekeydChild runs rekeyd (embedded NATS, the example configuration,
// rotation.min_interval 0) on dir until in ends. It prints "ready
// <nats url> <files limit>", then answers:
//
//	profile <path>  start a CPU profile into path
//	unprofile       stop it
//	stats [gc]      "stats <heap bytes> <GCs> <bytes allocated> <CPU ns>" (gc: after a collection)
func runRekeydChild(dir string, in io.Reader, out *lineWriter) error {
	if dir == "" {
		return fmt.Errorf("%s is not set", dirEnv)
	}
	if err := raiseFileLimit(maxFanoutAgents + 1024); err != nil {
		return err
	}
	ctx := context.Background()
	daemon.SetGCPercent() // as cmd/rekeyd does
	log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
	c, err := demo.StartCluster(ctx, log, func(cfg *orchestrator.Config) {
		cfg.DataDir = dir
		cfg.Rotation.MinInterval = 0
		cfg.Log.Level = "error"
	})
	if err != nil {
		return err
	}
	defer c.Close()
	out.line("ready", c.Daemon.NATSURL())
	var prof profiler
	defer prof.stop()
	commands(in, out, func(cmd string, args []string) (string, error) {
		if reply, ok, err := prof.command(cmd, args); ok {
			return reply, err
		}
		switch {
		case cmd == "stats":
			return memStats(len(args) == 1 && args[0] == "gc"), nil
		}
		return "", fmt.Errorf("unknown command %q %q", cmd, args)
	})
	return nil
}

// profiler answers the children's "profile <path>" (start a CPU profile
// of the process into path) and "unprofile" (stop it).
type profiler struct{ f *os.File }

// command handles cmd if it is one of the profiler's (ok).
func (p *profiler) command(cmd string, args []string) (reply string, ok bool, err error) {
	switch {
	case cmd == "profile" && len(args) == 1 && p.f == nil:
		f, err := os.Create(args[0])
		if err != nil {
			return "", true, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return "", true, err
		}
		p.f = f
		return "ok", true, nil
	case cmd == "unprofile" && p.f != nil:
		return "ok", true, p.stop()
	}
	return "", false, nil
}

func (p *profiler) stop() error {
	if p.f == nil {
		return nil
	}
	pprof.StopCPUProfile()
	err := p.f.Close()
	p.f = nil
	return err
}

// memStats is the answer to "stats": heap in use, collections so far,
// bytes allocated so far (after a collection if gc) and the CPU time the
// process used so far (ns, user and system).
func memStats(gc bool) string {
	if gc {
		runtime.GC()
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return fmt.Sprintf("stats %d %d %d %d", m.HeapAlloc, m.NumGC, m.TotalAlloc, ru.Utime.Nano()+ru.Stime.Nano())
}

// maxFanoutAgents bounds --agents: the files the rekeyd child needs.
const maxFanoutAgents = 16000

// agentsChild holds one child's connections: raw subscribers or agents.
type agentsChild struct {
	url  string
	auth *orchestrator.NATSAuth
	out  *lineWriter

	mu      sync.Mutex
	conns   []*nats.Conn
	n       int              // raw subscribers or agents held
	rawGot  map[int]int      // raw round -> subscribers that received it
	rawLast map[int]int64    // raw round -> last receipt (Unix ns)
	drops   map[string]*drop // request id -> drops so far
	fleet   *fleetChild      // bench sidecar-fleet's agents and sidecars, if started
}

type drop struct {
	n         int
	last, pub int64 // Unix ns: the last drop, the invalidation's publication
}

// runAgentsChild holds connections to url (credentials from rekeyd's data
// dir) until in ends, answering:
//
//	raw <n> <first>     connect n plain subscribers of bench.raw, "ready"
//	agents <n> <first>  connect n agents of acme, each Get openai-key once, "ready"
//	fleet <n> <first>   start n agents and n sidecars with their clients (bench sidecar-fleet), "ready"
//	close               close every connection, "ok"
//	stats [gc]          as the rekeyd child
//
// and reporting, once all its subscribers got raw round r, "raw <r> <last
// receipt>", and once all its agents dropped for request id, "drop <id>
// <last drop> <published>" (Unix ns; one host clock).
func runAgentsChild(url, dir string, in io.Reader, out *lineWriter) error {
	auth, err := orchestrator.LoadNATSAuth(dir)
	if err != nil {
		return err
	}
	c := &agentsChild{url: url, auth: auth, out: out, rawGot: map[int]int{}, rawLast: map[int]int64{}, drops: map[string]*drop{}}
	defer c.close()
	ctx := context.Background()
	var prof profiler
	defer prof.stop()
	commands(in, out, func(cmd string, args []string) (string, error) {
		if reply, ok, err := prof.command(cmd, args); ok {
			return reply, err
		}
		switch cmd {
		case "raw", "agents":
			if len(args) != 2 {
				return "", fmt.Errorf("%s: want <n> <first>", cmd)
			}
			n, err1 := strconv.Atoi(args[0])
			first, err2 := strconv.Atoi(args[1])
			if err := errors.Join(err1, err2); err != nil || n <= 0 {
				return "", fmt.Errorf("%s: bad count %q", cmd, args)
			}
			if err := raiseFileLimit(uint64(n) + 256); err != nil {
				return "", err
			}
			if err := c.connect(ctx, cmd == "raw", n, first); err != nil {
				return "", err
			}
			return "ready", nil
		case "fleet":
			var n, first int
			if _, err := fmt.Sscan(strings.Join(args, " "), &n, &first); err != nil || n <= 0 || len(args) != 2 {
				return "", fmt.Errorf("fleet: want <n> <first>, got %q", args)
			}
			if err := raiseFileLimit(6*uint64(n) + 256); err != nil {
				return "", err
			}
			if err := c.startFleet(ctx, n, first); err != nil {
				return "", err
			}
			return "ready", nil
		case "close":
			c.close()
			return "ok", nil
		case "stats":
			return memStats(len(args) == 1 && args[0] == "gc"), nil
		}
		return "", fmt.Errorf("unknown command %q", cmd)
	})
	return nil
}

func (c *agentsChild) connect(ctx context.Context, raw bool, n, first int) error {
	c.mu.Lock()
	c.n = n
	c.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error {
			if raw {
				return c.connectRaw(first + i)
			}
			return c.connectAgent(gctx, first+i)
		})
	}
	return g.Wait()
}

func (c *agentsChild) keep(nc *nats.Conn) {
	if nc != nil {
		c.mu.Lock()
		c.conns = append(c.conns, nc)
		c.mu.Unlock()
	}
}

func (c *agentsChild) connectRaw(i int) error {
	nc, err := nats.Connect(c.url, append(daemon.AdminNATSOptions(c.auth), nats.Name(fmt.Sprintf("raw-%05d", i)))...)
	if err != nil {
		return err
	}
	c.keep(nc)
	if _, err := nc.Subscribe(rawSubject, c.receiveRaw); err != nil {
		return err
	}
	return nc.Flush()
}

func (c *agentsChild) receiveRaw(m *nats.Msg) {
	now := time.Now().UnixNano()
	sp := strings.IndexByte(string(m.Data), ' ')
	round, err := strconv.Atoi(string(m.Data[:max(sp, 0)]))
	if err != nil {
		return
	}
	c.mu.Lock()
	c.rawGot[round]++
	c.rawLast[round] = max(c.rawLast[round], now)
	done, last := c.rawGot[round] == c.n, c.rawLast[round]
	if done {
		delete(c.rawGot, round)
		delete(c.rawLast, round)
	}
	c.mu.Unlock()
	if done {
		c.out.line("raw", round, last)
	}
}

func (c *agentsChild) connectAgent(ctx context.Context, i int) error {
	instance := fmt.Sprintf("fanout-%05d", i)
	a, nc, err := demo.ConnectAgent(ctx, c.url, daemon.AgentNATSOptions(c.auth, fanoutTenant), fanoutTenant, instance, c.dropped)
	c.keep(nc)
	if err != nil {
		return err
	}
	// The first Get fills the cache. 10,000 of them at once on a busy
	// machine can outlast the fetch timeout: try again (the agent is the
	// same; only its start is slower).
	for attempt := 1; ; attempt++ {
		if _, err = a.Get(ctx, fanoutSecret); err == nil || attempt == 5 {
			return err
		}
	}
}

func (c *agentsChild) dropped(ev agent.Invalidated) {
	id := ev.Invalidation.RequestID
	c.mu.Lock()
	d := c.drops[id]
	if d == nil {
		d = &drop{pub: ev.EventTime.UnixNano()}
		c.drops[id] = d
	}
	d.n++
	d.last = max(d.last, ev.DroppedAt.UnixNano())
	done := d.n == c.n
	if done {
		delete(c.drops, id)
	}
	c.mu.Unlock()
	if done {
		c.out.line("drop", id, d.last, d.pub)
	}
}

func (c *agentsChild) close() {
	if c.fleet != nil {
		c.fleet.stop()
		c.fleet = nil
	}
	c.mu.Lock()
	conns := c.conns
	c.conns, c.n = nil, 0
	clear(c.rawGot)
	clear(c.rawLast)
	clear(c.drops)
	c.mu.Unlock()
	for _, nc := range conns {
		nc.Close()
	}
}
