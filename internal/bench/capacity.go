package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/internal/natsrun"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// CapacityConfig sizes `rekeyctl bench capacity`.
type CapacityConfig struct {
	// Replicas lists the numbers of rekeyd replicas to measure, each on a
	// fresh NATS cluster of Nodes nodes (streams with min(Nodes, 3) replicas).
	Replicas []int
	Nodes    int
	// Secrets per tenant (two tenants); each is rotated Rounds times.
	Secrets, Rounds int
	// Invalidations fanout publishes from synthetic completion events.
	Invalidations int
	// Agents, half per tenant, spread over the NATS nodes.
	Agents int
}

// CapacityRow is one replica count's measures.
type CapacityRow struct {
	Replicas, Nodes, Agents int
	// Rotations: full sagas on the local backend (lock, create, set, test,
	// finish, status, events, audit), requests published at once on NATS.
	Rotations Phase
	// Invalidations published by fanout from completion events published
	// at once (as workers would), without agents and with Agents agents
	// acking each one (Acks heard by the bench meanwhile).
	Invalidations, InvalidationsToAgents Phase
	Acks                                 int64
	// ConnectTime is how long connecting and starting all agents took.
	ConnectTime time.Duration
}

// Phase is a count of things done, how long they took and how much CPU
// this process (NATS servers, replicas, agents, bench) spent meanwhile.
type Phase struct {
	N        int
	Took     time.Duration
	CPU      time.Duration
	cpuStart time.Duration
	began    time.Time
}

func startPhase() Phase { return Phase{began: time.Now(), cpuStart: cpuTime()} }

// end records n things done, the last at last.
func (p *Phase) end(n int, last time.Time) {
	p.N, p.Took, p.CPU = n, last.Sub(p.began), cpuTime()-p.cpuStart
}

// PerSecond is the throughput.
func (p Phase) PerSecond() float64 { return float64(p.N) / max(p.Took.Seconds(), 1e-9) }

// CPUPer is the CPU time per thing done.
func (p Phase) CPUPer() time.Duration { return p.CPU / time.Duration(max(p.N, 1)) }

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// encoded is ev's JSON; the events the bench makes always encode.
func encoded(ev schemas.Event) []byte {
	b, _ := ev.Encode()
	return b
}

// Capacity measures rotations/s, invalidations/s and agents at each
// replica count of cfg, on NATS clusters started in this process, and
// rekeyd replicas and agents also in this process.
func Capacity(ctx context.Context, cfg CapacityConfig, log *slog.Logger) ([]CapacityRow, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rows []CapacityRow
	for _, n := range cfg.Replicas {
		row, err := capacityRun(ctx, cfg, n, log)
		if err != nil {
			return rows, fmt.Errorf("%d replicas: %w", n, err)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// replicaSet is rekeyd replicas on one NATS cluster.
type replicaSet struct {
	nats    *natsrun.Cluster
	cancel  context.CancelFunc
	done    []chan error
	daemons []*daemon.Daemon
	dir     string
	bus     *orchestrator.Bus // the bench's own connection
	conns   []*nats.Conn
	agents  []*agent.Agent
}

func (s *replicaSet) close() {
	for _, a := range s.agents {
		_ = a.Close()
	}
	for _, nc := range s.conns {
		nc.Close()
	}
	if s.bus != nil {
		s.bus.Close()
	}
	if s.cancel != nil {
		s.cancel()
	}
	for _, d := range s.done {
		<-d
	}
	if s.nats != nil {
		s.nats.Shutdown()
	}
	_ = os.RemoveAll(s.dir)
}

func capacityConfig(cfg CapacityConfig, urls string, dir string, key []byte) (orchestrator.Config, error) {
	c := orchestrator.Defaults()
	c.DataDir = dir
	c.Log.Level = "error"
	c.NATS.URL = urls
	c.NATS.Replicas = min(cfg.Nodes, 3)
	c.HTTP.Addr = "127.0.0.1:0"
	c.Rotation.MinInterval = 0
	c.Backends.Local.Key = base64.StdEncoding.EncodeToString(key)
	c.Tenants = map[string]orchestrator.TenantConfig{}
	for _, t := range []string{"acme", "globex"} {
		tc := orchestrator.TenantConfig{Secrets: map[string]orchestrator.SecretConfig{}}
		for i := range cfg.Secrets {
			tc.Secrets[fmt.Sprintf("s-%03d", i)] = orchestrator.SecretConfig{Backend: "local"}
		}
		c.Tenants[t] = tc
	}
	return c, c.Validate()
}

func startReplicas(ctx context.Context, cfg CapacityConfig, n int, log *slog.Logger) (*replicaSet, error) {
	dir, err := os.MkdirTemp("", "rekey-capacity-")
	if err != nil {
		return nil, err
	}
	s := &replicaSet{dir: dir}
	if s.nats, err = natsrun.StartCluster(cfg.Nodes, filepath.Join(dir, "nats")); err != nil {
		s.close()
		return nil, err
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	for i := range n {
		c, err := capacityConfig(cfg, s.nats.URLs(), filepath.Join(dir, fmt.Sprintf("rekeyd-%d", i)), key)
		if err != nil {
			s.close()
			return nil, err
		}
		d, err := daemon.New(ctx, daemon.Options{Config: c, Logger: log, AdminToken: "capacity-bench-token-0123456789"})
		if err != nil {
			s.close()
			return nil, err
		}
		done := make(chan error, 1)
		go func() { done <- d.Run(runCtx) }()
		s.daemons, s.done = append(s.daemons, d), append(s.done, done)
	}
	for i, d := range s.daemons {
		waitCtx, stop := context.WithCancelCause(ctx)
		go func() { // a replica whose Run returned is not waited for: say why
			select {
			case err := <-s.done[i]:
				s.done[i] <- err // for close, which waits for every Run
				stop(fmt.Errorf("replica %d stopped: %w", i, err))
			case <-waitCtx.Done():
			}
		}()
		err := daemon.WaitReady(waitCtx, 30*time.Second, daemon.HTTPReady(d.HTTPAddr()))
		if cause := context.Cause(waitCtx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause
		}
		stop(nil)
		if err != nil {
			s.close()
			return nil, err
		}
	}
	s.bus, err = orchestrator.Connect(ctx, s.nats.URLs(), "capacity-bench", orchestrator.NATSConfig{Replicas: min(cfg.Nodes, 3)}, log)
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func capacityRun(ctx context.Context, cfg CapacityConfig, n int, log *slog.Logger) (CapacityRow, error) {
	row := CapacityRow{Replicas: n, Nodes: cfg.Nodes, Agents: cfg.Agents}
	s, err := startReplicas(ctx, cfg, n, log)
	if err != nil {
		return row, err
	}
	defer s.close()

	// Rotations: one request per secret per round, all published at once;
	// done when every request's rotation completed.
	if row.Rotations, err = s.rotations(ctx, cfg); err != nil {
		return row, err
	}
	// Invalidations: completion events published at once; done when
	// fanout published every invalidation. First without agents, then
	// with every agent acking every invalidation of its tenant.
	if row.Invalidations, _, err = s.invalidations(ctx, cfg.Invalidations, "a", 0); err != nil {
		return row, err
	}
	began := time.Now()
	if err := s.startAgents(ctx, cfg); err != nil {
		return row, err
	}
	row.ConnectTime = time.Since(began)
	// Each invalidation is done once every agent of its tenant acked it.
	invs := cfg.Invalidations / 4
	perTenant := [2]int64{int64((cfg.Agents + 1) / 2), int64(cfg.Agents / 2)}
	acks := int64((invs+1)/2)*perTenant[0] + int64(invs/2)*perTenant[1]
	if row.InvalidationsToAgents, row.Acks, err = s.invalidations(ctx, invs, "b", acks); err != nil {
		return row, err
	}
	return row, nil
}

// startAgents connects cfg.Agents agents, each on its own connection,
// round-robin over the NATS nodes, half of each tenant.
func (s *replicaSet) startAgents(ctx context.Context, cfg CapacityConfig) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	var mu sync.Mutex
	for i := range cfg.Agents {
		g.Go(func() error {
			tenant, instance := []string{"acme", "globex"}[i%2], fmt.Sprintf("capacity-%05d", i)
			nc, err := nats.Connect(s.nats.ClientURL(i%cfg.Nodes), nats.Name(instance),
				nats.CustomInboxPrefix(schemas.AgentInboxPrefix(tenant)))
			if err != nil {
				return err
			}
			mu.Lock()
			s.conns = append(s.conns, nc)
			mu.Unlock()
			a, err := agent.New(nc, agent.NewNATSFetcher(nc, instance), agent.Config{Tenant: tenant, Instance: instance})
			if err != nil {
				return err
			}
			mu.Lock()
			s.agents = append(s.agents, a)
			mu.Unlock()
			return a.Start(gctx)
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("start agents: %w", err)
	}
	return nil
}

// count subscribes to subject and counts the distinct keys key returns.
type counter struct {
	mu   sync.Mutex
	seen map[string]bool
	last time.Time
	sub  *nats.Subscription
}

func (s *replicaSet) count(subject string, key func(*nats.Msg) string) (*counter, error) {
	c := &counter{seen: map[string]bool{}}
	sub, err := s.bus.NC.Subscribe(subject, func(m *nats.Msg) {
		k := key(m)
		if k == "" {
			return
		}
		c.mu.Lock()
		if !c.seen[k] {
			c.seen[k] = true
			c.last = time.Now()
		}
		c.mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	c.sub = sub
	return c, s.bus.NC.Flush()
}

// wait waits until n keys were seen; it returns when the last was.
func (c *counter) wait(ctx context.Context, n int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		got, last := len(c.seen), c.last
		c.mu.Unlock()
		if got >= n {
			return last, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Time{}, fmt.Errorf("%d of %d after %s", got, n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func requestIDOf(typ string) func(*nats.Msg) string {
	return func(m *nats.Msg) string {
		var v struct {
			RequestID string `json:"request_id"`
		}
		if _, err := schemas.DecodeAs(m.Data, typ, &v); err != nil {
			return ""
		}
		return v.RequestID
	}
}

func (s *replicaSet) rotations(ctx context.Context, cfg CapacityConfig) (Phase, error) {
	done, err := s.count(schemas.EventsSubject("*", schemas.KindRotationCompleted), requestIDOf(schemas.TypeRotationCompleted))
	if err != nil {
		return Phase{}, err
	}
	defer func() { _ = done.sub.Unsubscribe() }()
	total := 0
	var last time.Time
	p := startPhase()
	for round := range cfg.Rounds {
		// Requests for a secret made while it rotates would coalesce: to
		// count rotations, not requests, a round waits for the previous.
		var ids []string
		for _, tenant := range []string{"acme", "globex"} {
			for i := range cfg.Secrets {
				secret := fmt.Sprintf("s-%03d", i)
				ev, err := schemas.NewEvent("bench", schemas.TypeRotationRequested, tenant, tenant+"/"+secret, schemas.RotationRequested{
					Tenant: tenant, Secret: secret, Reason: fmt.Sprintf("capacity round %d", round), RequestedAt: time.Now().UTC(),
					Trigger: schemas.Trigger{Kind: schemas.TriggerInternal, Source: "bench"},
				})
				if err != nil {
					return Phase{}, err
				}
				if _, err := s.bus.JS.PublishAsync(schemas.RotateSubject(tenant, secret), encoded(ev), jetstream.WithMsgID(ev.ID)); err != nil {
					return Phase{}, err
				}
				ids = append(ids, ev.ID)
			}
		}
		select {
		case <-s.bus.JS.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			return Phase{}, fmt.Errorf("rotation requests not acknowledged")
		}
		total += len(ids)
		if last, err = done.wait(ctx, total, 2*time.Minute); err != nil {
			return Phase{}, fmt.Errorf("rotations: %w", err)
		}
	}
	p.end(total, last)
	return p, nil
}

// invalidations publishes n completion events (one subject each: events
// of one subject handled at once by several replicas publish only the
// newest, see fanout/replicas.go) and waits for their invalidations, and
// for wantAcks agent acks.
func (s *replicaSet) invalidations(ctx context.Context, n int, run string, wantAcks int64) (Phase, int64, error) {
	published, err := s.count(schemas.SubjectInvalidateAll, requestIDOf(schemas.TypeInvalidation))
	if err != nil {
		return Phase{}, 0, err
	}
	defer func() { _ = published.sub.Unsubscribe() }()
	var acks, lastAck atomic.Int64
	ackSub, err := s.bus.NC.Subscribe(schemas.SubjectAckAll, func(m *nats.Msg) {
		if !strings.Contains(m.Subject, ".bench-"+run) {
			return // an ack of another run's invalidation
		}
		acks.Add(1)
		lastAck.Store(time.Now().UnixNano())
	})
	if err != nil {
		return Phase{}, 0, err
	}
	defer func() { _ = ackSub.Unsubscribe() }()
	_ = ackSub.SetPendingLimits(-1, -1)
	now := time.Now().UTC()
	p := startPhase()
	for i := range n {
		tenant, secret := []string{"acme", "globex"}[i%2], fmt.Sprintf("bench-%s%06d", run, i)
		ev, err := schemas.NewEvent("bench", schemas.TypeRotationCompleted, tenant, tenant+"/"+secret, schemas.RotationCompleted{
			Tenant: tenant, Secret: secret, Backend: "local", Version: "2", RequestID: "bench-inv-" + secret,
			Reason: "capacity", Trigger: schemas.Trigger{Kind: schemas.TriggerInternal, Source: "bench"}, Attempts: 1,
			StartedAt: now, CompletedAt: now,
		})
		if err != nil {
			return Phase{}, 0, err
		}
		if _, err := s.bus.JS.PublishAsync(schemas.EventsSubject(tenant, schemas.KindRotationCompleted), encoded(ev), jetstream.WithMsgID(ev.ID)); err != nil {
			return Phase{}, 0, err
		}
	}
	select {
	case <-s.bus.JS.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		return Phase{}, 0, fmt.Errorf("completion events not acknowledged")
	}
	last, err := published.wait(ctx, n, 2*time.Minute)
	if err != nil {
		return Phase{}, 0, fmt.Errorf("invalidations: %w", err)
	}
	for deadline := time.Now().Add(2 * time.Minute); acks.Load() < wantAcks; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return Phase{}, 0, fmt.Errorf("%d of %d agent acks", acks.Load(), wantAcks)
		}
	}
	if wantAcks > 0 {
		last = time.Unix(0, max(lastAck.Load(), last.UnixNano()))
	}
	p.end(n, last)
	return p, acks.Load(), nil
}

// PrintCapacity writes the rows as a table.
func PrintCapacity(w io.Writer, cfg CapacityConfig, rows []CapacityRow) {
	fmt.Fprintf(w, "capacity: %d-node NATS cluster (streams R%d), rekeyd replicas, agents and the bench in one process on %d cores\n",
		cfg.Nodes, min(cfg.Nodes, 3), runtime.NumCPU())
	fmt.Fprintf(w, "rotations: %d secrets x %d rounds, local backend, full saga; invalidations: %d completion events -> fanout, then %d until all %d agents acked\n",
		2*cfg.Secrets, cfg.Rounds, cfg.Invalidations, cfg.Invalidations/4, cfg.Agents)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "replicas\trotations/s\tper replica\tCPU/rotation\tinvalidations/s\tper replica\tCPU/inv.\t"+
		"inv./s, all agents acked\tacks/s\tCPU/ack\tagents\tper NATS node\tconnected in\t")
	for _, r := range rows {
		rot, inv, invA := r.Rotations, r.Invalidations, r.InvalidationsToAgents
		acks := float64(r.Acks) / max(invA.Took.Seconds(), 1e-9)
		fmt.Fprintf(tw, "%d\t%.0f\t%.0f\t%s\t%.0f\t%.0f\t%s\t%.0f\t%.0f\t%s\t%d\t%d\t%s\t\n", r.Replicas,
			rot.PerSecond(), rot.PerSecond()/float64(r.Replicas), demo.Millis(rot.CPUPer()),
			inv.PerSecond(), inv.PerSecond()/float64(r.Replicas), demo.Millis(inv.CPUPer()),
			invA.PerSecond(), acks, demo.Millis(invA.CPU/time.Duration(max(r.Acks, 1))),
			r.Agents, (r.Agents+r.Nodes-1)/r.Nodes, r.ConnectTime.Round(time.Millisecond))
	}
	tw.Flush()
	fmt.Fprintln(w, strings.TrimSpace(`
CPU is this whole process (NATS nodes, replicas, agents, bench) per thing done.
Rotations and invalidations are shared through durable consumers; every replica
hears every agent's acks and heartbeats (core NATS) to keep the same view.`))
}
