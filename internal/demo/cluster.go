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
	nc, err := nats.Connect(c.Daemon.NATSURL(), append(c.Daemon.AgentNATSOptions(tenant), nats.Name(instance))...)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.conns = append(c.conns, nc)
	c.agents++
	c.mu.Unlock()
	a, err := agent.New(nc, agent.NewNATSFetcher(nc, instance), agent.Config{
		Tenant: tenant, Instance: instance, UsageInterval: AgentUsageInterval,
		OnInvalidate: func(ev agent.Invalidated) {
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
		},
	})
	if err != nil {
		return nil, err
	}
	if err := a.Start(ctx); err != nil {
		return nil, err
	}
	return a, nil
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
	ev, err := schemas.NewEvent("sim", schemas.TypeRotationRequested, tenant, tenant+"/"+secret, schemas.RotationRequested{
		Tenant: tenant, Secret: secret, Reason: "bench", RequestedAt: time.Now().UTC(),
		Trigger: schemas.Trigger{Kind: schemas.TriggerInternal, Source: "bench"},
	})
	if err != nil {
		return "", err
	}
	if _, err := c.Daemon.Bus().Publish(ctx, schemas.RotateSubject(tenant, secret), ev); err != nil {
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
	ch := make(chan schemas.Event, 64)
	sub, err := c.Daemon.Bus().NC.Subscribe(schemas.EventsSubject(tenant, kind), func(m *nats.Msg) {
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
	cons, err := c.Daemon.Bus().JS.Consumer(ctx, stream, durable)
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
