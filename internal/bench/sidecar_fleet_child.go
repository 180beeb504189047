package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/sidecar"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/internal/demo"
)

// fleetChild is the part of an agents child process that `rekeyctl bench
// sidecar-fleet` uses: n in-process agents of fleetAgentTenant and n
// sidecars of fleetSidecarTenant (each a real fanout/sidecar server with
// its own agent, NATS connection and loopback listener for rekey's API,
// and an application client reading it). After a rotation it reports,
// once every one of the tenant's population has served the new version,
// "served <request id> <last> " (Unix ns).
type fleetChild struct {
	c      *agentsChild
	n      int
	token  string
	cancel context.CancelFunc
	wg     sync.WaitGroup // servers and clients

	mu     sync.Mutex
	served map[string]*drop // request id -> served so far (n) and the last (last)
}

// The two populations are of two tenants, each rotated in turn: rekeyd's
// fetch server holds a bounded number of fetches per tenant (agentreq), and
// both populations refetching one tenant's secret at once would overflow it
// where either alone does not.
const (
	fleetAgentTenant   = "acme"
	fleetSidecarTenant = "globex"
)

// record notes that one agent or sidecar client served request id's
// version at t.
func (f *fleetChild) record(id string, t time.Time) {
	f.mu.Lock()
	s := f.served[id]
	if s == nil {
		s = &drop{}
		f.served[id] = s
	}
	s.n++
	s.last = max(s.last, t.UnixNano())
	done := s.n == f.n
	if done {
		delete(f.served, id)
	}
	f.mu.Unlock()
	if done {
		f.c.out.line("served", id, s.last)
	}
}

// startFleet connects n agents and n sidecars (instances first..first+n-1
// of each) and their clients, and returns once every agent has the
// secret cached and every client's event stream is live.
func (c *agentsChild) startFleet(ctx context.Context, n, first int) error {
	if c.fleet != nil {
		return errors.New("fleet: already started")
	}
	fctx, cancel := context.WithCancel(context.Background())
	f := &fleetChild{c: c, n: n, token: rand.Text(), cancel: cancel, served: map[string]*drop{}}
	c.fleet = f
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error { return f.startAgent(gctx, first+i) })
		g.Go(func() error { return f.startSidecar(gctx, fctx, first+i) })
	}
	return g.Wait()
}

// startAgent connects an in-process agent whose application, told of an
// invalidation, calls Get until it returns the new version.
func (f *fleetChild) startAgent(ctx context.Context, i int) error {
	var a *agent.Agent
	ready := make(chan struct{})
	onInvalidate := func(ev agent.Invalidated) {
		inv := ev.Invalidation
		if inv.Secret != fanoutSecret || inv.Kind != "rotated" {
			return
		}
		go func() {
			<-ready
			for attempt := 0; attempt < 1000; attempt++ {
				sec, err := a.Get(context.Background(), fanoutSecret)
				if err == nil && (inv.Version == "" || sec.Version == inv.Version) {
					f.record(inv.RequestID, time.Now())
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	a, nc, err := demo.ConnectAgent(ctx, f.c.url, daemon.AgentNATSOptions(f.c.auth, fleetAgentTenant), fleetAgentTenant, fmt.Sprintf("fleet-agent-%05d", i), onInvalidate)
	f.c.keep(nc)
	if err != nil {
		return err
	}
	close(ready)
	return getRetry(ctx, a)
}

// getRetry fills the cache; on a busy machine the first fetches of many
// agents at once can outlast the fetch timeout, so it tries again.
func getRetry(ctx context.Context, a *agent.Agent) error {
	for attempt := 1; ; attempt++ {
		if _, err := a.Get(ctx, fanoutSecret); err == nil || attempt == 5 {
			return err
		}
	}
}

// startSidecar runs a sidecar (its own agent and listener) and an
// application client of it: the client holds GET /v1/events and, at a
// rotated event, reads GET /v1/secrets/{secret} until it returns the new
// version.
func (f *fleetChild) startSidecar(ctx, runCtx context.Context, i int) error {
	srv, err := sidecar.New(sidecar.Config{Tenant: fleetSidecarTenant, Listen: "127.0.0.1:0", Token: f.token}, nil)
	if err != nil {
		return err
	}
	a, nc, err := demo.ConnectAgent(ctx, f.c.url, daemon.AgentNATSOptions(f.c.auth, fleetSidecarTenant), fleetSidecarTenant, fmt.Sprintf("fleet-sidecar-%05d", i), srv.OnInvalidate)
	f.c.keep(nc)
	if err != nil {
		return err
	}
	srv.SetSource(a)
	done := make(chan error, 1)
	f.wg.Go(func() { done <- srv.Run(runCtx) })
	for srv.Addr(sidecar.APIRekey) == "" {
		select {
		case err := <-done:
			return fmt.Errorf("sidecar %d: %w", i, err)
		case <-time.After(2 * time.Millisecond):
		}
	}
	if err := getRetry(ctx, a); err != nil {
		return err
	}
	base := "http://" + srv.Addr(sidecar.APIRekey)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
	req, err := http.NewRequestWithContext(runCtx, http.MethodGet, base+"/v1/events", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+f.token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return fmt.Errorf("sidecar %d: GET /v1/events: %s", i, resp.Status)
	}
	lines := bufio.NewScanner(resp.Body)
	if !lines.Scan() || lines.Text() != "event: ready" {
		resp.Body.Close()
		return fmt.Errorf("sidecar %d: the event stream did not begin with ready: %q %v", i, lines.Text(), lines.Err())
	}
	f.wg.Go(func() {
		defer resp.Body.Close()
		f.follow(runCtx, client, base, lines)
	})
	return nil
}

// follow reads the event stream; at each rotated event of the secret it
// reads the secret until the sidecar serves the event's version.
func (f *fleetChild) follow(ctx context.Context, client *http.Client, base string, lines *bufio.Scanner) {
	var event string
	for lines.Scan() {
		line := lines.Text()
		if e, ok := strings.CutPrefix(line, "event: "); ok {
			event = e
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || event != "rotated" {
			continue
		}
		var ev sidecar.Event
		if json.Unmarshal([]byte(data), &ev) != nil || ev.Secret != fanoutSecret {
			continue
		}
		for attempt := 0; attempt < 1000 && ctx.Err() == nil; attempt++ {
			v, err := readVersion(ctx, client, base, f.token)
			if err == nil && (ev.Version == "" || v == ev.Version) {
				f.record(ev.RequestID, time.Now())
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// readVersion is an application's GET /v1/secrets/{secret}.
func readVersion(ctx context.Context, client *http.Client, base, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/secrets/"+fanoutSecret, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /v1/secrets: %s", resp.Status)
	}
	var out sidecar.SecretReply
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", err
	}
	return out.Version, nil
}

// stop ends the sidecars and their clients.
func (f *fleetChild) stop() {
	f.cancel()
	f.wg.Wait()
}
