package bench

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/internal/natsrun"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// RecoveryOptions configure the recovery bench: real rekeyd processes
// interrupted in the middle of a burst of rotation requests and restarted
// on the same data directory.
type RecoveryOptions struct {
	// Rekeyd is the rekeyd binary.
	Rekeyd string
	// Runs per kind of interruption (SIGKILL, SIGTERM).
	Runs int
	// Requests per burst, sent by Clients concurrent HTTP clients over
	// Secrets secrets (half in tenant acme, half in globex).
	Requests, Clients, Secrets int
	// Restores is how many restore-after-kill-mid-revocation runs to make,
	// with RevokeSecrets secrets in the revoked tenant (enough that its
	// revocation outlasts the 30 ms before the kill).
	Restores, RevokeSecrets int
	// Cluster adds Runs per interruption with three rekeyd replicas on a
	// 3-node NATS cluster (streams with 3 replicas), one of which is
	// interrupted while the others keep going.
	Cluster bool
	// Progress, if set, gets one line per run.
	Progress io.Writer
}

func (o *RecoveryOptions) defaults() {
	if o.Runs == 0 {
		o.Runs = 20
	}
	if o.Requests == 0 {
		o.Requests = 1000
	}
	if o.Clients == 0 {
		o.Clients = 16
	}
	if o.Secrets < 2 {
		o.Secrets = 24
	}
	if o.RevokeSecrets == 0 {
		o.RevokeSecrets = 200
	}
}

// RecoveryRun is one interrupted burst.
type RecoveryRun struct {
	Signal   string
	Replicas int           // 1: restarted on its data dir; 3: the others take over
	Accepted int           // 202 answers before the process died
	Exit     time.Duration // signal -> process gone
	Ready    time.Duration // restart -> /readyz answers 200 (1 replica)
	Held     int           // requests held (delivered, not acked) at ready, or when the replica was gone
	Queued   int           // requests never delivered, at the same time
	Handled  time.Duration // ready (1 replica) or the signal (3) -> nothing left in ROTATE
	Lost     int           // accepted, but neither rotated nor coalesced
}

// RestoreRun is one restore accepted right after a restart that followed
// a kill in the middle of the tenant's revocation.
type RestoreRun struct {
	// Pending: the dead process's revocation was still unacked at ready
	// (else it had finished before the kill).
	Pending bool
	// Took is restore accepted -> tenant no longer revoked.
	Took time.Duration
	// Ordered: the revocation's report came before the restore's.
	Ordered bool
}

// RecoveryResult is what Recovery measured.
type RecoveryResult struct {
	Opts     RecoveryOptions
	Runs     []RecoveryRun
	Restores []RestoreRun
}

const benchToken = "bench-admin-token-0123456789"

// Recovery runs the recovery bench.
func Recovery(ctx context.Context, opts RecoveryOptions) (RecoveryResult, error) {
	opts.defaults()
	if _, err := os.Stat(opts.Rekeyd); err != nil {
		return RecoveryResult{}, fmt.Errorf("rekeyd binary: %w (build it with go build ./cmd/rekeyd)", err)
	}
	res := RecoveryResult{Opts: opts}
	runners := []func(context.Context, RecoveryOptions, syscall.Signal) (RecoveryRun, error){recoveryRun}
	if opts.Cluster {
		runners = append(runners, clusterRun)
	}
	for _, runner := range runners {
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			for i := range opts.Runs {
				run, err := runner(ctx, opts, sig)
				if err != nil {
					return res, fmt.Errorf("%d replica(s), %s run %d: %w", run.Replicas, sigName(sig), i+1, err)
				}
				res.Runs = append(res.Runs, run)
				if opts.Progress != nil {
					fmt.Fprintf(opts.Progress, "%d replica(s), %s run %d: accepted %d, exit %s, ready %s, held %d, queued %d, handled %s, lost %d\n",
						run.Replicas, run.Signal, i+1, run.Accepted, secs(run.Exit), secs(run.Ready), run.Held, run.Queued, secs(run.Handled), run.Lost)
				}
			}
		}
	}
	for i := range opts.Restores {
		run, err := restoreRun(ctx, opts)
		if err != nil {
			return res, fmt.Errorf("restore run %d: %w", i+1, err)
		}
		res.Restores = append(res.Restores, run)
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "restore run %d: revocation pending at restart %v, restore took effect %s after it was accepted, in order %v\n",
				i+1, run.Pending, secs(run.Took), run.Ordered)
		}
	}
	return res, nil
}

func sigName(s syscall.Signal) string {
	if s == syscall.SIGKILL {
		return "kill -9"
	}
	return "SIGTERM"
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// rekeydProc is one rekeyd process of a bench run.
type rekeydProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// benchNode is a data directory and fixed ports that successive rekeyd
// processes share.
type benchNode struct {
	dir, config, httpAddr, natsURL string
	secrets                        []schemas.Ref
	rekeyd                         string
	external                       bool // NATS without credentials (the bench's cluster)
}

// newBenchNode makes a data directory and a configuration with perTenant
// local secrets in each of tenants acme and globex.
func newBenchNode(opts RecoveryOptions, perTenant int) (*benchNode, error) {
	dir, err := os.MkdirTemp("", "rekey-recovery-")
	if err != nil {
		return nil, err
	}
	ports, err := natsrun.FreePorts(2)
	if err != nil {
		return nil, err
	}
	n := &benchNode{dir: dir, rekeyd: opts.Rekeyd, httpAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]),
		natsURL: fmt.Sprintf("nats://127.0.0.1:%d", ports[1])}
	var b strings.Builder
	fmt.Fprintf(&b, "data_dir: %q\nlog: {level: warn}\n", dir)
	fmt.Fprintf(&b, "nats:\n  embedded:\n    addr: 127.0.0.1:%d\nhttp:\n  addr: %s\n", ports[1], n.httpAddr)
	n.writeTenants(&b, perTenant)
	n.config = filepath.Join(dir, "rekey.yaml")
	if err := os.WriteFile(n.config, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	return n, nil
}

// writeTenants writes the tenants section: perTenant local secrets in
// each of acme and globex.
func (n *benchNode) writeTenants(b *strings.Builder, perTenant int) {
	b.WriteString("tenants:\n")
	for _, t := range []string{"acme", "globex"} {
		fmt.Fprintf(b, "  %s:\n    secrets:\n", t)
		for i := range perTenant {
			s := fmt.Sprintf("s-%02d", i)
			fmt.Fprintf(b, "      %s: {backend: local}\n", s)
			n.secrets = append(n.secrets, schemas.Ref{Tenant: t, Secret: s})
		}
	}
}

func (n *benchNode) remove() { _ = os.RemoveAll(n.dir) }

// start runs rekeyd and waits until it is ready; it returns how long that
// took.
func (n *benchNode) start(ctx context.Context) (*rekeydProc, time.Duration, error) {
	log, err := os.OpenFile(filepath.Join(n.dir, "rekeyd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, 0, err
	}
	defer log.Close()
	began := time.Now()
	cmd := exec.Command(n.rekeyd, "--config", n.config)
	cmd.Env = append(os.Environ(), "REKEY_ADMIN_TOKEN="+benchToken)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, 0, fmt.Errorf("start rekeyd: %w", err)
	}
	p := &rekeydProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + n.httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, time.Since(began), nil
			}
		}
		select {
		case <-p.done:
			return nil, 0, fmt.Errorf("rekeyd exited before ready (see %s)", filepath.Join(n.dir, "rekeyd.log"))
		case <-ctx.Done():
			p.stop(syscall.SIGKILL)
			return nil, 0, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Since(began) > time.Minute {
			p.stop(syscall.SIGKILL)
			return nil, 0, errors.New("rekeyd not ready after 1m")
		}
	}
}

// stop signals the process and waits until it is gone.
func (p *rekeydProc) stop(sig syscall.Signal) time.Duration {
	began := time.Now()
	_ = p.cmd.Process.Signal(sig)
	<-p.done
	return time.Since(began)
}

// admin connects to the node's embedded NATS as rekeyd's own user.
func (n *benchNode) admin() (jetstream.JetStream, *nats.Conn, error) {
	var opts []nats.Option
	if !n.external {
		auth, err := orchestrator.LoadNATSAuth(n.dir)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, nats.UserInfo(orchestrator.RekeydUser, auth.Password(orchestrator.RekeydUser)))
	}
	nc, err := nats.Connect(n.natsURL, opts...)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc, nil
}

// call sends one API request with the admin token.
func (n *benchNode) call(client *http.Client, method, path, body string) (*http.Response, error) {
	req, err := http.NewRequest(method, "http://"+n.httpAddr+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+benchToken)
	return client.Do(req)
}

// post sends one API request and returns the status and request id (0:
// no answer).
func (n *benchNode) post(client *http.Client, path, body string) (int, string) {
	resp, err := n.call(client, http.MethodPost, path, body)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	var out struct {
		RequestID string `json:"request_id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out.RequestID
}

// burst sends opts.Requests rotation requests, request i to nodes[i %
// len(nodes)], and calls interrupt once `at` were accepted. With one node
// it stops at the first request without an answer (rekeyd gone); with
// several, such a request goes to the next node, and no request starts
// after the interruption. It returns the accepted request ids.
func burst(opts RecoveryOptions, nodes []*benchNode, at int, interrupt func()) map[string]bool {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: opts.Clients}}
	defer client.CloseIdleConnections()
	secrets := nodes[0].secrets
	var mu sync.Mutex
	accepted := map[string]bool{}
	var once sync.Once
	next := make(chan int)
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	go func() {
		defer close(next)
		for i := range opts.Requests {
			select {
			case next <- i:
			case <-stop:
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range opts.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				s := secrets[i%len(secrets)]
				code, id := 0, ""
				for try := range len(nodes) {
					n := nodes[(i+try)%len(nodes)]
					if code, id = n.post(client, "/v1/tenants/"+s.Tenant+"/secrets/"+s.Secret+"/rotate", fmt.Sprintf(`{"reason":"bench %d"}`, i)); code != 0 {
						break
					}
				}
				if code == 0 {
					halt()
					return
				}
				if code != http.StatusAccepted {
					continue
				}
				mu.Lock()
				accepted[id] = true
				count := len(accepted)
				mu.Unlock()
				if count >= at {
					once.Do(func() {
						if len(nodes) > 1 {
							halt()
						}
						interrupt()
					})
				}
			}
		}()
	}
	wg.Wait()
	once.Do(interrupt) // the burst ended first
	return accepted
}

func recoveryRun(ctx context.Context, opts RecoveryOptions, sig syscall.Signal) (RecoveryRun, error) {
	run := RecoveryRun{Signal: sigName(sig), Replicas: 1}
	n, err := newBenchNode(opts, opts.Secrets/2)
	if err != nil {
		return run, err
	}
	defer n.remove()
	p, _, err := n.start(ctx)
	if err != nil {
		return run, err
	}
	// Interrupt at a random point of the burst's first 90 %.
	at := opts.Requests/10 + rand.IntN(opts.Requests*8/10)
	accepted := burst(opts, []*benchNode{n}, at, func() { run.Exit = p.stop(sig) })
	run.Accepted = len(accepted)

	p, run.Ready, err = n.start(ctx)
	if err != nil {
		return run, err
	}
	ready := time.Now()
	defer p.stop(syscall.SIGTERM)
	js, nc, err := n.admin()
	if err != nil {
		return run, err
	}
	defer nc.Close()
	if run.Handled, run.Held, run.Queued, err = drained(ctx, js, ready); err != nil {
		return run, err
	}
	run.Lost, err = lost(ctx, js, accepted)
	return run, err
}

// clusterRun starts a 3-node NATS cluster and three rekeyd replicas on it,
// sends a burst to all three, interrupts replica 0 with sig at a random
// point and stops sending; it measures from the signal until the other two
// have handled everything.
func clusterRun(ctx context.Context, opts RecoveryOptions, sig syscall.Signal) (RecoveryRun, error) {
	run := RecoveryRun{Signal: sigName(sig), Replicas: 3}
	dir, err := os.MkdirTemp("", "rekey-recovery-cluster-")
	if err != nil {
		return run, err
	}
	defer os.RemoveAll(dir)
	cl, err := natsrun.StartCluster(3, filepath.Join(dir, "nats"))
	if err != nil {
		return run, err
	}
	defer cl.Shutdown()
	key := make([]byte, 32)
	if _, err := crand.Read(key); err != nil {
		return run, err
	}
	var nodes []*benchNode
	var procs []*rekeydProc
	defer func() {
		for _, p := range procs {
			p.stop(syscall.SIGTERM)
		}
	}()
	for i := range 3 {
		n, err := newReplicaNode(opts, filepath.Join(dir, fmt.Sprintf("rekeyd-%d", i)), cl.URLs(), base64.StdEncoding.EncodeToString(key))
		if err != nil {
			return run, err
		}
		p, _, err := n.start(ctx)
		if err != nil {
			return run, err
		}
		nodes, procs = append(nodes, n), append(procs, p)
	}
	js, nc, err := nodes[0].admin()
	if err != nil {
		return run, err
	}
	defer nc.Close()
	at := opts.Requests/10 + rand.IntN(opts.Requests*8/10)
	var signalled time.Time
	accepted := burst(opts, nodes, at, func() {
		signalled = time.Now()
		run.Exit = procs[0].stop(sig)
	})
	procs = procs[1:]
	run.Accepted = len(accepted)
	run.Handled, run.Held, run.Queued, err = drained(ctx, js, signalled)
	if err != nil {
		return run, err
	}
	run.Lost, err = lost(ctx, js, accepted)
	return run, err
}

// newReplicaNode makes the data directory and configuration of one rekeyd
// replica on an external NATS (no credentials: the cluster has none).
func newReplicaNode(opts RecoveryOptions, dir, natsURLs, key string) (*benchNode, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ports, err := natsrun.FreePorts(1)
	if err != nil {
		return nil, err
	}
	n := &benchNode{dir: dir, rekeyd: opts.Rekeyd, httpAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]), natsURL: natsURLs, external: true}
	var b strings.Builder
	fmt.Fprintf(&b, "data_dir: %q\nlog: {level: warn}\n", dir)
	fmt.Fprintf(&b, "nats:\n  url: %q\n  replicas: 3\nhttp:\n  addr: %s\nbackends:\n  local:\n    key: %q\n", natsURLs, n.httpAddr, key)
	n.writeTenants(&b, opts.Secrets/2)
	n.config = filepath.Join(dir, "rekey.yaml")
	return n, os.WriteFile(n.config, []byte(b.String()), 0o600)
}

// drained waits until ROTATE has nothing pending and returns how long
// after since that was, and what was held and queued at the first look.
func drained(ctx context.Context, js jetstream.JetStream, since time.Time) (took time.Duration, held, queued int, err error) {
	first := true
	for {
		c, err := js.Consumer(ctx, schemas.StreamRotate, orchestrator.ConsumerRotation)
		var info *jetstream.ConsumerInfo
		if err == nil {
			info, err = c.Info(ctx)
		}
		if err != nil {
			return 0, held, queued, fmt.Errorf("rotation consumer: %w", err)
		}
		if first {
			held, queued, first = info.NumAckPending, int(info.NumPending), false
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			return time.Since(since), held, queued, nil
		}
		if time.Since(since) > 3*time.Minute {
			return 0, held, queued, fmt.Errorf("requests still pending after 3m: %d held, %d queued", info.NumAckPending, info.NumPending)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lost counts the accepted requests that were neither rotated nor
// coalesced.
func lost(ctx context.Context, js jetstream.JetStream, accepted map[string]bool) (int, error) {
	handled, err := handledIDs(ctx, js)
	if err != nil {
		return 0, err
	}
	n := 0
	for id := range accepted {
		if !handled[id] {
			n++
		}
	}
	return n, nil
}

// handledIDs reads the audit stream: the ids of requests rotated or
// coalesced.
func handledIDs(ctx context.Context, js jetstream.JetStream) (map[string]bool, error) {
	out := map[string]bool{}
	err := eachEvent(ctx, js, schemas.StreamAudit, func(ev schemas.Event) error {
		var r schemas.AuditRecord
		if err := ev.DecodeData(schemas.TypeAuditRecord, &r); err != nil {
			return err
		}
		if r.Action == "rotation.complete" || (r.Action == "rotation.request" && r.Outcome == schemas.OutcomeCoalesced) {
			out[r.RequestID] = true
		}
		return nil
	})
	return out, err
}

// eachEvent calls fn with every event of a stream, in order.
func eachEvent(ctx context.Context, js jetstream.JetStream, stream string, fn func(schemas.Event) error) error {
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	left := info.NumPending
	empty := 0 // empty batches in a row: an ordered consumer recreated after a node loss may deliver none for a while
	for left > 0 {
		batch, err := c.Fetch(int(min(left, 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("read %s: %w", stream, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			ev, err := schemas.Decode(m.Data())
			if err != nil {
				return fmt.Errorf("read %s: %w", stream, err)
			}
			if err := fn(ev); err != nil {
				return err
			}
		}
		if got == 0 {
			if empty++; empty < 4 {
				continue
			}
			return fmt.Errorf("read %s: %d messages not received", stream, left)
		}
		empty = 0
		left -= uint64(got)
	}
	return nil
}

// restoreRun revokes tenant acme, kills rekeyd 30 ms after the tenant is
// marked revoked (the revocation's rotations are then running), restarts
// it, and sends a restore at once.
func restoreRun(ctx context.Context, opts RecoveryOptions) (RestoreRun, error) {
	var run RestoreRun
	n, err := newBenchNode(opts, opts.RevokeSecrets)
	if err != nil {
		return run, err
	}
	defer n.remove()
	p, _, err := n.start(ctx)
	if err != nil {
		return run, err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	code, revokeID := n.post(client, "/v1/tenants/acme/revoke", `{"reason":"bench"}`)
	if code != http.StatusAccepted {
		p.stop(syscall.SIGKILL)
		return run, fmt.Errorf("revoke: HTTP %d", code)
	}
	for began := time.Now(); ; {
		if revoked, err := n.revoked(client); err == nil && revoked {
			break
		}
		if time.Since(began) > 30*time.Second {
			p.stop(syscall.SIGKILL)
			return run, errors.New("the revocation never started")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(30 * time.Millisecond)
	p.stop(syscall.SIGKILL)

	p, _, err = n.start(ctx)
	if err != nil {
		return run, err
	}
	defer p.stop(syscall.SIGTERM)
	js, nc, err := n.admin()
	if err != nil {
		return run, err
	}
	defer nc.Close()
	if c, err := js.Consumer(ctx, schemas.StreamRevoke, orchestrator.ConsumerRevocation); err == nil {
		if info, err := c.Info(ctx); err == nil {
			run.Pending = info.NumAckPending > 0 || info.NumPending > 0
		}
	}
	code, restoreID := n.post(client, "/v1/tenants/acme/restore", `{"reason":"bench"}`)
	if code != http.StatusAccepted {
		return run, fmt.Errorf("restore: HTTP %d", code)
	}
	accepted := time.Now()
	for {
		if revoked, err := n.revoked(client); err == nil && !revoked {
			run.Took = time.Since(accepted)
			break
		}
		if time.Since(accepted) > 3*time.Minute {
			return run, errors.New("the restore never took effect")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The revocation's report precedes the restore's.
	var completed, restored bool
	err = eachEvent(ctx, js, schemas.StreamEvents, func(ev schemas.Event) error {
		switch ev.Type {
		case schemas.TypeRevocationCompleted:
			var c schemas.RevocationCompleted
			if ev.DecodeData(ev.Type, &c) == nil && c.RequestID == revokeID && !restored {
				completed = true
			}
		case schemas.TypeTenantRestored:
			var r schemas.TenantRestored
			if ev.DecodeData(ev.Type, &r) == nil && r.RequestID == restoreID {
				restored = true
			}
		}
		return nil
	})
	run.Ordered = completed && restored
	return run, err
}

// revoked asks the API whether tenant acme is revoked.
func (n *benchNode) revoked(client *http.Client) (bool, error) {
	resp, err := n.call(client, http.MethodGet, "/v1/tenants/acme/secrets", "")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var out struct {
		TenantRevoked bool `json:"tenant_revoked"`
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return false, err
	}
	return out.TenantRevoked, nil
}

// Print writes the figures as tables.
func (r RecoveryResult) Print(w io.Writer) {
	o := r.Opts
	fmt.Fprintf(w, "recovery: real rekeyd, local backend, %d secrets, bursts of %d rotation requests from %d clients, interrupted at a random point\n", o.Secrets, o.Requests, o.Clients)
	fmt.Fprintln(w, "1 replica: embedded NATS, restarted on the same data dir; all handled is counted from the new process being ready")
	if o.Cluster {
		fmt.Fprintln(w, "3 replicas: 3-node NATS cluster (streams R3), one replica interrupted, the burst stops; all handled is counted from the signal")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "replicas\tinterruption\truns\tlost\theld (max)\tready after restart p50\t-> all handled p50\tp99\tmax\t")
	for _, replicas := range []int{1, 3} {
		for _, sig := range []string{sigName(syscall.SIGKILL), sigName(syscall.SIGTERM)} {
			var handled, ready []time.Duration
			lost, held := 0, 0
			for _, run := range r.Runs {
				if run.Signal != sig || run.Replicas != replicas {
					continue
				}
				lost += run.Lost
				held = max(held, run.Held+run.Queued)
				handled = append(handled, run.Handled)
				ready = append(ready, run.Ready)
			}
			if len(handled) == 0 {
				continue
			}
			SortDurations(handled)
			readyCol := "-"
			if replicas == 1 {
				readyCol = secs(Percentile(SortDurations(ready), 50))
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", replicas, sig, len(handled), lost, held,
				readyCol, secs(Percentile(handled, 50)), secs(Percentile(handled, 99)), secs(handled[len(handled)-1]))
		}
	}
	_ = tw.Flush()
	if len(r.Restores) == 0 {
		return
	}
	var took, behind []time.Duration
	pending, ordered := 0, 0
	for _, run := range r.Restores {
		took = append(took, run.Took)
		if run.Pending {
			pending++
			behind = append(behind, run.Took)
		}
		if run.Ordered {
			ordered++
		}
	}
	SortDurations(took)
	fmt.Fprintf(w, "\nrestore after kill -9 30 ms into the revocation of a tenant of %d secrets (%d runs; revocation still held by the dead process at restart in %d; revocation reported before the restore in %d):\n",
		o.RevokeSecrets, len(r.Restores), pending, ordered)
	fmt.Fprintf(w, "  restore accepted -> tenant restored: p50 %s, p99 %s, max %s\n", secs(Percentile(took, 50)), secs(Percentile(took, 99)), secs(took[len(took)-1]))
	if len(behind) > 0 {
		SortDurations(behind)
		fmt.Fprintf(w, "  of those behind the dead process's revocation:   p50 %s, max %s\n", secs(Percentile(behind, 50)), secs(behind[len(behind)-1]))
	}
}
