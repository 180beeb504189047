// Package demo runs rekeyd together with agents in one process (a
// Cluster) and tells the story of `rekeyd demo` on it. The benchmarks of
// internal/bench start the same Cluster.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/deployments/examples"
	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Cluster is an in-process rekeyd plus agents.
type Cluster struct {
	Daemon *daemon.Daemon
	Config orchestrator.Config
	client *http.Client
	stop   context.CancelFunc
	done   chan error
	dir    string
	conns  []*nats.Conn

	mu     sync.Mutex
	drops  map[string][]Drop // request id -> drops
	want   map[string]int    // request id -> drops WaitDrops waits for
	agents int               // started by NewAgent
	cond   *sync.Cond        // signalled when a wanted count is reached
}

// Drop is one agent dropping a value after an invalidation.
type Drop struct {
	Agent     string
	Secret    string
	Kind      string
	Version   string
	Published time.Time // when fanout published the invalidation
	Dropped   time.Time // when the agent's cache no longer held the old value
}

// StartCluster starts rekeyd on the example configuration with a
// temporary data dir, the embedded NATS and the HTTP API on free ports.
func StartCluster(ctx context.Context, log *slog.Logger, tweaks ...func(*orchestrator.Config)) (*Cluster, error) {
	cfg, err := orchestrator.Parse(examples.RekeyYAML)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "rekey-sim-")
	if err != nil {
		return nil, err
	}
	cfg.DataDir = dir
	cfg.NATS.Embedded.Addr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	for _, tweak := range tweaks {
		tweak(&cfg)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Logger: log})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	c := &Cluster{Daemon: d, Config: cfg, client: &http.Client{Timeout: 10 * time.Second}, stop: stop,
		done: make(chan error, 1), dir: dir, drops: map[string][]Drop{}, want: map[string]int{}}
	c.cond = sync.NewCond(&c.mu)
	go func() { c.done <- d.Run(runCtx) }()
	if err := daemon.WaitReady(ctx, 10*time.Second, daemon.HTTPReady(d.HTTPAddr())); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close stops agents' connections and rekeyd and removes the data dir.
func (c *Cluster) Close() error {
	for _, nc := range c.conns {
		nc.Close()
	}
	c.stop()
	err := <-c.done
	_ = os.RemoveAll(c.dir)
	return err
}

// AgentUsageInterval is the UsageInterval of the agents NewAgent starts.
const AgentUsageInterval = time.Second

// NewAgent connects a new agent of tenant, on its own NATS connection, and
// records its drops.
func (c *Cluster) NewAgent(ctx context.Context, tenant, instance string) (*agent.Agent, error) {
	a, nc, err := ConnectAgent(ctx, c.Daemon.NATSURL(), c.Daemon.AgentNATSOptions(tenant), tenant, instance, func(ev agent.Invalidated) {
		id := ev.Invalidation.RequestID
		c.mu.Lock()
		drops := c.drops[id]
		if drops == nil {
			drops = make([]Drop, 0, c.agents)
		}
		drops = append(drops, Drop{
			Agent: instance, Secret: ev.Invalidation.Secret, Kind: ev.Invalidation.Kind, Version: ev.Invalidation.Version,
			Published: ev.EventTime, Dropped: ev.DroppedAt,
		})
		c.drops[id] = drops
		// Only the drop that completes a wanted count wakes the waiter:
		// thousands of agents must not contend for it.
		if w, ok := c.want[id]; ok && len(drops) == w {
			c.cond.Broadcast()
		}
		c.mu.Unlock()
	})
	if nc != nil {
		c.mu.Lock()
		c.conns = append(c.conns, nc)
		c.agents++
		c.mu.Unlock()
	}
	return a, err
}

// ConnectAgent connects an agent of tenant to url on its own connection
// (opts: daemon.AgentNATSOptions) and starts it, the way every simulated
// agent runs: NATS fetcher, AgentUsageInterval, onInvalidate called for
// each drop. The connection is returned, to be closed by the caller, also
// with an error once it was made.
func ConnectAgent(ctx context.Context, url string, opts []nats.Option, tenant, instance string, onInvalidate func(agent.Invalidated)) (*agent.Agent, *nats.Conn, error) {
	nc, err := nats.Connect(url, append(opts, nats.Name(instance))...)
	if err != nil {
		return nil, nil, err
	}
	a, err := agent.New(nc, agent.NewNATSFetcher(nc, instance), agent.Config{
		Tenant: tenant, Instance: instance, UsageInterval: AgentUsageInterval, OnInvalidate: onInvalidate,
	})
	if err != nil {
		return nil, nc, err
	}
	if err := a.Start(ctx); err != nil {
		return nil, nc, err
	}
	return a, nc, nil
}

// Accepted is the API's reply to a queued request.
type Accepted struct {
	RequestID string `json:"request_id"`
}

// Post calls the admin API and returns the request id.
func (c *Cluster) Post(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.Daemon.HTTPAddr()+path, bytes.NewReader([]byte(`{"reason":"demo"}`)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+c.Daemon.AdminToken())
	resp, err := c.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("POST %s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	var acc Accepted
	if err := json.Unmarshal(b, &acc); err != nil {
		return "", err
	}
	return acc.RequestID, nil
}

// Rotate asks for a rotation through the HTTP API.
func (c *Cluster) Rotate(ctx context.Context, tenant, secret string) (string, error) {
	return c.Post(ctx, "/v1/tenants/"+tenant+"/secrets/"+secret+"/rotate")
}

// PublishRotate publishes a rotation request straight on NATS (the way a
// trigger does), skipping HTTP.
func (c *Cluster) PublishRotate(ctx context.Context, tenant, secret string) (string, error) {
	return PublishRotate(ctx, c.Daemon.Bus(), tenant, secret)
}

// PublishRotate publishes a rotation request of tenant's secret on bus
// and returns its request id.
func PublishRotate(ctx context.Context, bus *orchestrator.Bus, tenant, secret string) (string, error) {
	ev, err := schemas.NewEvent("sim", schemas.TypeRotationRequested, tenant, tenant+"/"+secret, schemas.RotationRequested{
		Tenant: tenant, Secret: secret, Reason: "bench", RequestedAt: time.Now().UTC(),
		Trigger: schemas.Trigger{Kind: schemas.TriggerInternal, Source: "bench"},
	})
	if err != nil {
		return "", err
	}
	if _, err := bus.Publish(ctx, schemas.RotateSubject(tenant, secret), ev); err != nil {
		return "", err
	}
	return ev.ID, nil
}

// WaitDrops waits until n agents dropped for the request id, or ctx ends.
// Revocations are keyed by the revocation's request id.
func (c *Cluster) WaitDrops(ctx context.Context, requestID string, n int) ([]Drop, error) {
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.want[requestID] = n
	defer delete(c.want, requestID)
	for len(c.drops[requestID]) < n {
		if ctx.Err() != nil {
			got := len(c.drops[requestID])
			return append([]Drop(nil), c.drops[requestID]...), fmt.Errorf("%d of %d agents dropped for %s: %w", got, n, requestID, ctx.Err())
		}
		c.cond.Wait()
	}
	out := append([]Drop(nil), c.drops[requestID]...)
	delete(c.drops, requestID)
	return out, nil
}

// ErrTimeout is returned when agents did not all drop in time.
var ErrTimeout = errors.New("timed out")

// Events subscribes to rekey.events.<tenant>.<kind> and returns a channel
// of decoded events and a function that unsubscribes.
func (c *Cluster) Events(tenant, kind string) (<-chan schemas.Event, func(), error) {
	return SubscribeEvents(c.Daemon.Bus().NC, tenant, kind)
}

// SubscribeEvents is Cluster.Events on connection nc.
func SubscribeEvents(nc *nats.Conn, tenant, kind string) (<-chan schemas.Event, func(), error) {
	ch := make(chan schemas.Event, 64)
	sub, err := nc.Subscribe(schemas.EventsSubject(tenant, kind), func(m *nats.Msg) {
		if ev, err := schemas.Decode(m.Data); err == nil {
			select {
			case ch <- ev:
			default:
			}
		}
	})
	if err != nil {
		return nil, nil, err
	}
	return ch, func() { _ = sub.Unsubscribe() }, nil
}

// WaitIdle waits until no rotation request is pending and the secret is idle.
func (c *Cluster) WaitIdle(ctx context.Context, tenant, secret string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c.ConsumerDrained(ctx, schemas.StreamRotate, orchestrator.ConsumerRotation) {
			st, err := c.Daemon.State().SecretStatus(ctx, tenant, secret)
			if err == nil && st.State != orchestrator.SecretRotating {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("rotations still pending after %s", timeout)
}

// ConsumerDrained reports whether a durable consumer has no message left to
// deliver and none delivered but unacked.
func (c *Cluster) ConsumerDrained(ctx context.Context, stream, durable string) bool {
	return ConsumerDrained(ctx, c.Daemon.Bus().JS, stream, durable)
}

// ConsumerDrained is Cluster.ConsumerDrained through js.
func ConsumerDrained(ctx context.Context, js jetstream.JetStream, stream, durable string) bool {
	cons, err := js.Consumer(ctx, stream, durable)
	if err != nil {
		return false
	}
	info, err := cons.Info(ctx)
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

// WaitVersionDropped waits until n agents dropped secret's version old
// (whatever request caused it) and returns when the last one did.
func (c *Cluster) WaitVersionDropped(ctx context.Context, secret, old string, n int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		var last time.Time
		agents := map[string]bool{}
		for id, drops := range c.drops {
			for _, d := range drops {
				if d.Kind == schemas.InvalidationRotated && d.Version != old && d.Secret == secret {
					agents[d.Agent] = true
					if d.Dropped.After(last) {
						last = d.Dropped
					}
				}
			}
			_ = id
		}
		if len(agents) >= n {
			for id, drops := range c.drops {
				if len(drops) > 0 && drops[0].Secret == secret {
					delete(c.drops, id)
				}
			}
			c.mu.Unlock()
			return last, nil
		}
		c.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("%d agents did not drop %s v%s within %s", n, secret, old, timeout)
}
