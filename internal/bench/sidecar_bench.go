package bench

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/sidecar"
	"github.com/rekey-dev/rekey/internal/demo"
)

// SidecarOptions configures Sidecar.
type SidecarOptions struct {
	// Clients read at once, each with its own keep-alive connection.
	// Default 8.
	Clients int
	// Duration of each path's run. Default 3s.
	Duration time.Duration
	// HTTPClient uses Go's http.Client in this process (as before the
	// raw client) instead of the raw client.
	HTTPClient bool
	// SameProcess runs the raw clients in this process instead of a
	// child process of their own.
	SameProcess bool
	// Executable is the binary started as the client process; it must
	// call RunFanoutChild first (rekeyctl does). Default: this process's.
	Executable string
}

// clientsApart reports whether the clients run in a process of their own.
func (o SidecarOptions) clientsApart() bool { return !o.HTTPClient && !o.SameProcess }

func (o SidecarOptions) withDefaults() SidecarOptions {
	if o.Clients <= 0 {
		o.Clients = 8
	}
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	return o
}

// SidecarRow is one read path's figures.
type SidecarRow struct {
	Path     string
	Reads    int
	Took     time.Duration
	P50, P99 time.Duration
	// CPU is this process's CPU time (user and system) during the run:
	// the sidecar's (and rekeyd's, idle) when the clients run apart.
	CPU time.Duration
	// ClientCPU is the client process's CPU time (user and system), when
	// the clients run apart.
	ClientCPU time.Duration
}

// CPUPerRead is the CPU time of this process per read.
func (r SidecarRow) CPUPerRead() time.Duration { return r.CPU / time.Duration(max(r.Reads, 1)) }

// ReadsPerSecond is the throughput of the row.
func (r SidecarRow) ReadsPerSecond() float64 { return float64(r.Reads) / max(r.Took.Seconds(), 1e-9) }

// Sidecar measures cached reads of one secret through each API of
// rekey-agent (fanout/sidecar) over loopback with keep-alive, and the
// in-process agent.Get it is built on, in the same run: clients and
// sidecar share this machine's cores.
func Sidecar(ctx context.Context, opts SidecarOptions, log *slog.Logger) ([]SidecarRow, error) {
	opts = opts.withDefaults()
	c, err := demo.StartCluster(ctx, log)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	nc, err := nats.Connect(c.Daemon.NATSURL(), c.Daemon.AgentNATSOptions("acme")...)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	tok := func() string { return rand.Text() }
	cfg := sidecar.Config{
		Tenant: "acme", Listen: "127.0.0.1:0", AWSAgentListen: "127.0.0.1:0", AWSAPIListen: "127.0.0.1:0", VaultListen: "127.0.0.1:0",
		Token: tok(), AWSAgentToken: tok(), VaultToken: tok(), AWSAccessKeyID: "AKIABENCH", AWSSecretAccessKey: tok(),
		Logger: log, Ready: nc.IsConnected,
	}
	srv, err := sidecar.New(cfg, nil)
	if err != nil {
		return nil, err
	}
	a, err := agent.New(nc, nil, agent.Config{Tenant: "acme", Instance: "bench-sidecar", OnInvalidate: srv.OnInvalidate})
	if err != nil {
		return nil, err
	}
	if err := a.Start(ctx); err != nil {
		return nil, err
	}
	defer a.Close()
	srv.SetSource(a)
	// A second server on the same agent serves rekey's API on a Unix
	// socket, as in a pod (a socket on a shared emptyDir).
	dir, err := os.MkdirTemp("", "rekey-bench-sidecar")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	sockCfg := sidecar.Config{Tenant: "acme", Listen: "unix:" + filepath.Join(dir, "rekey.sock"), Token: cfg.Token, Logger: log, Ready: nc.IsConnected}
	sock, err := sidecar.New(sockCfg, a)
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- srv.Run(runCtx) }()
	go func() { done <- sock.Run(runCtx) }()
	defer func() { stop(); <-done; <-done }()
	for srv.Addr(sidecar.APIVault) == "" || sock.Addr(sidecar.APIRekey) == "" {
		select {
		case err := <-done:
			return nil, fmt.Errorf("sidecar: %w", err)
		case <-time.After(5 * time.Millisecond):
		}
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: opts.Clients}}
	read := func(req *http.Request) error {
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s %s: %s", req.Method, req.URL.Path, resp.Status)
		}
		return nil
	}
	getWith := func(url, header, value string) func() error {
		return func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return err
			}
			req.Header.Set(header, value)
			return read(req)
		}
	}
	body := `{"SecretId":"/tenants/acme/openai-key"}`
	sum := sha256.Sum256([]byte(body))
	signer := v4.NewSigner()
	creds := aws.Credentials{AccessKeyID: cfg.AWSAccessKeyID, SecretAccessKey: cfg.AWSSecretAccessKey}
	if opts.Executable == "" && opts.clientsApart() {
		if opts.Executable, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	// The raw clients send one request prepared here, each time the same:
	// the Secrets Manager API's is signed once, with the date of now, which
	// the sidecar accepts for MaxSkew (5m), far longer than a run; it has
	// no other replay check.
	smReq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+srv.Addr(sidecar.APIAWS)+"/", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	smReq.Header.Set("Content-Type", "application/x-amz-json-1.1")
	smReq.Header.Set("X-Amz-Target", "secretsmanager.GetSecretValue")
	if err := signer.SignHTTP(ctx, creds, smReq, hex.EncodeToString(sum[:]), "secretsmanager", "us-east-1", time.Now()); err != nil {
		return nil, err
	}
	var smHeader [][2]string
	for k, vs := range smReq.Header {
		for _, v := range vs {
			smHeader = append(smHeader, [2]string{k, v})
		}
	}
	raw := map[string]rawPath{}
	rawGet := func(path, api, target, header, value string) {
		addr := srv.Addr(api)
		raw[path] = rawPath{addr, rawRequest(http.MethodGet, addr, target, [][2]string{{header, value}}, nil)}
	}
	rawGet("rekey API", sidecar.APIRekey, "/v1/secrets/openai-key", "Authorization", "Bearer "+cfg.Token)
	raw["rekey API (Unix socket)"] = rawPath{"unix:" + sock.Addr(sidecar.APIRekey), rawRequest(http.MethodGet, "localhost",
		"/v1/secrets/openai-key", [][2]string{{"Authorization", "Bearer " + cfg.Token}}, nil)}
	rawGet("AWS agent protocol", sidecar.APIAWSAgent, "/secretsmanager/get?secretId=%2Ftenants%2Facme%2Fopenai-key", "X-Aws-Parameters-Secrets-Token", cfg.AWSAgentToken)
	rawGet("Vault API", sidecar.APIVault, "/v1/secret/data/tenants/acme/openai-key", "X-Vault-Token", cfg.VaultToken)
	raw["Secrets Manager API (signed once)"] = rawPath{srv.Addr(sidecar.APIAWS), rawRequest(http.MethodPost, srv.Addr(sidecar.APIAWS), "/", smHeader, []byte(body))}

	paths := []struct {
		name string
		op   func() error
	}{
		{"agent.Get (in process)", func() error { _, err := a.Get(ctx, "openai-key"); return err }},
		{"rekey API", getWith("http://"+srv.Addr(sidecar.APIRekey)+"/v1/secrets/openai-key", "Authorization", "Bearer "+cfg.Token)},
		{"AWS agent protocol", getWith("http://"+srv.Addr(sidecar.APIAWSAgent)+"/secretsmanager/get?secretId=%2Ftenants%2Facme%2Fopenai-key",
			"X-Aws-Parameters-Secrets-Token", cfg.AWSAgentToken)},
		{"Secrets Manager API (client signs)", func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+srv.Addr(sidecar.APIAWS)+"/", strings.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/x-amz-json-1.1")
			req.Header.Set("X-Amz-Target", "secretsmanager.GetSecretValue")
			if err := signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "secretsmanager", "us-east-1", time.Now()); err != nil {
				return err
			}
			return read(req)
		}},
		{"Vault API", getWith("http://"+srv.Addr(sidecar.APIVault)+"/v1/secret/data/tenants/acme/openai-key", "X-Vault-Token", cfg.VaultToken)},
	}
	if !opts.HTTPClient {
		paths = paths[:1] // agent.Get; the raw clients below
	}
	var rows []SidecarRow
	for _, p := range paths {
		if err := p.op(); err != nil { // the first read fetches; the rest are cached
			return rows, fmt.Errorf("%s: %w", p.name, err)
		}
		cpu0 := cpuTime()
		row, err := measureLatency(opts.Clients, opts.Duration, p.op)
		row.Path, row.CPU = p.name, cpuTime()-cpu0
		rows = append(rows, row)
		if err != nil {
			return rows, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	if opts.HTTPClient {
		return rows, nil
	}
	for _, name := range []string{"rekey API", "rekey API (Unix socket)", "AWS agent protocol", "Secrets Manager API (signed once)", "Vault API"} {
		rq := raw[name]
		var row SidecarRow
		var err error
		cpu0 := cpuTime()
		if opts.clientsApart() {
			row, err = rawLoadProcess(ctx, opts.Executable, rq.addr, rq.req, opts.Clients, opts.Duration)
		} else {
			row, err = rawLoad(ctx, rq.addr, rq.req, opts.Clients, opts.Duration)
		}
		row.Path, row.CPU = name, cpuTime()-cpu0
		rows = append(rows, row)
		if err != nil {
			return rows, fmt.Errorf("%s: %w", name, err)
		}
	}
	return rows, nil
}

// rawPath is a raw client's address and request.
type rawPath struct {
	addr string
	req  []byte
}

// measureLatency calls op from clients goroutines for about d and times
// each call.
func measureLatency(clients int, d time.Duration, op func() error) (SidecarRow, error) {
	return measureEach(clients, d, func(int) func() error { return op })
}

// measureEach calls, from goroutine i of clients, the op that newOp(i)
// returns, for about d, timing each call.
func measureEach(clients int, d time.Duration, newOp func(i int) func() error) (SidecarRow, error) {
	var (
		mu   sync.Mutex
		all  []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	start := time.Now()
	for i := range clients {
		op := newOp(i)
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1<<16)
			var err error
			for t0 := time.Now(); t0.Sub(start) < d; t0 = time.Now() {
				if err = op(); err != nil {
					break
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	took := time.Since(start)
	SortDurations(all)
	row := SidecarRow{Reads: len(all), Took: took, P50: Percentile(all, 50), P99: Percentile(all, 99)}
	if len(errs) > 0 {
		return row, errs[0]
	}
	return row, nil
}

// PrintSidecar writes the rows as a table.
func PrintSidecar(w io.Writer, opts SidecarOptions, rows []SidecarRow) {
	opts = opts.withDefaults()
	clients := "raw HTTP/1.1 clients in a process of their own (CPU/read: the sidecar's process)"
	switch {
	case opts.HTTPClient:
		clients = "Go http.Client clients in this process (CPU/read: sidecar and clients)"
	case opts.SameProcess:
		clients = "raw HTTP/1.1 clients in this process (CPU/read: sidecar and clients)"
	}
	fmt.Fprintf(w, "cached read of one secret through rekey-agent, %d clients with keep-alive over loopback, %s per path, %s\n", opts.Clients, opts.Duration, clients)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\treads\treads/s\tp50\tp99\tCPU/read\tclients' CPU/read\t")
	for _, r := range rows {
		client := "-"
		if r.ClientCPU > 0 {
			client = (r.ClientCPU / time.Duration(max(r.Reads, 1))).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t\n", r.Path, r.Reads, r.ReadsPerSecond(), r.P50, r.P99, r.CPUPerRead(), client)
	}
	tw.Flush()
}
