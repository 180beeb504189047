// Package natsrun runs nats-server clusters in this process on 127.0.0.1,
// for the demo and the benchmarks that rekeyd and rekeyctl carry. It does
// not import testing, so linking it does not link the test framework into
// the binaries; internal/testutil wraps it for tests.
package natsrun

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster is a JetStream cluster of nats-servers running in this
// process on 127.0.0.1, routed to each other, each with its own store
// directory. Client and route ports are fixed at start, so a node that was
// stopped comes back on the same ports and data.
type Cluster struct {
	mu      sync.Mutex
	opts    []*server.Options
	servers []*server.Server // nil while a node is down
}

// StartCluster starts n nodes storing under dir and waits until the
// cluster has a JetStream meta leader and every node is current.
func StartCluster(n int, dir string) (*Cluster, error) {
	ports, err := FreePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+i]))
	}
	c := &Cluster{servers: make([]*server.Server, n)}
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: ports[i],
			JetStream: true, StoreDir: filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			NoSigs: true, NoLog: true, MaxPayload: 1 << 20,
			Cluster: server.ClusterOpts{Name: "rekey", Host: "127.0.0.1", Port: ports[n+i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		}
		c.opts = append(c.opts, opts)
	}
	for i := range n {
		if err := c.start(i); err != nil {
			c.Shutdown()
			return nil, err
		}
	}
	if err := c.WaitReady(30 * time.Second); err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(i int) error {
	opts := *c.opts[i]
	s, err := server.NewServer(&opts)
	if err != nil {
		return fmt.Errorf("nats node %d: %w", i+1, err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("nats node %d on 127.0.0.1:%d not ready after 15s", i+1, opts.Port)
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
	return nil
}

// WaitReady waits until a JetStream meta leader is elected and every
// running node is current with it.
func (c *Cluster) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		leader, current := false, true
		for _, s := range c.running() {
			leader = leader || s.JetStreamIsLeader()
			current = current && s.JetStreamIsCurrent()
		}
		if leader && current {
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return errors.New("nats cluster: no JetStream meta leader, or nodes not current")
}

func (c *Cluster) running() []*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*server.Server
	for _, s := range c.servers {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// Size is the number of nodes, up or down.
func (c *Cluster) Size() int { return len(c.opts) }

// ClientURL is node i's nats:// URL (0-based), whether it is up or not.
func (c *Cluster) ClientURL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.opts[i].Port)
}

// URLs is every node's client URL, comma-separated, as nats.Connect and
// rekey.yaml's nats.url take them.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.opts))
	for i := range c.opts {
		urls[i] = c.ClientURL(i)
	}
	return strings.Join(urls, ",")
}

// Server returns node i, nil while it is down.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// Stop stops node i (its clients are disconnected, its routes dropped).
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Restart starts node i again on its ports and store directory.
func (c *Cluster) Restart(i int) error {
	if c.Server(i) != nil {
		return fmt.Errorf("nats node %d is running", i+1)
	}
	return c.start(i)
}

// Shutdown stops every node.
func (c *Cluster) Shutdown() {
	for i := range c.opts {
		c.Stop(i)
	}
}

// FreePorts returns n distinct TCP ports free on 127.0.0.1 now (all n
// are held open until they are picked, so none repeats).
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
