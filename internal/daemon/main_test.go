package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/deployments/examples"
	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
)

// TestMain lets the test binary play a rekeyd child process that kills
// itself (SIGKILL) in the middle of a rotation; see TestCrashBetweenCreateAndFinish.
func TestMain(m *testing.M) {
	if os.Getenv("REKEY_TEST_CHILD") == "crash-after-create" {
		os.Exit(runCrashChild())
	}
	os.Exit(m.Run())
}

const testToken = "test-admin-token-0123456789"

// testConfig is the example configuration on a data dir, free ports and
// short lock and backoff timings.
func testConfig(t testing.TB, dir string) orchestrator.Config {
	t.Helper()
	cfg, err := orchestrator.Parse(examples.RekeyYAML)
	require.NoError(t, err)
	cfg.DataDir = dir
	cfg.NATS.Embedded.Addr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rotation.LockTTL = 3 * time.Second
	cfg.Rotation.BackoffInitial = 50 * time.Millisecond
	cfg.Rotation.BackoffMax = 200 * time.Millisecond
	cfg.Rotation.MaxAttempts = 3
	cfg.Rotation.MinInterval = 0 // tests that coalesce set it back
	return cfg
}

var testWorker = handlers.WorkerConfig{AckWait: 3 * time.Second, ShutdownTimeout: 5 * time.Second}

type running struct {
	*daemon.Daemon
	logs   *testutil.SyncBuffer
	cancel context.CancelFunc
	done   chan error
}

// start runs a daemon until the test ends (or stop is called).
func start(t testing.TB, cfg orchestrator.Config, opts daemon.Options) *running {
	t.Helper()
	logs := &testutil.SyncBuffer{}
	opts.Config = cfg
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if opts.AdminToken == "" {
		opts.AdminToken = testToken
	}
	if opts.Worker == (handlers.WorkerConfig{}) {
		opts.Worker = testWorker
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, opts)
	require.NoError(t, err)
	r := &running{Daemon: d, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	t.Cleanup(r.stop)
	// Each role's least-privilege user must have been enough for all its
	// components did (registered after stop, so it runs before it).
	t.Cleanup(func() {
		for _, role := range orchestrator.Roles {
			if b := d.RoleBus(role); b != nil {
				if n := b.PermissionViolations(); n > 0 {
					t.Errorf("role %s was refused %d operations by its NATS permissions; logs:\n%s", role, n, testutil.LastLines(logs.String(), 20))
				}
			}
		}
	})
	waitHTTP(t, "http://"+d.HTTPAddr()+"/readyz")
	return r
}

func (r *running) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
}

// testWriter sends logs to t.Log only when -v asks for them.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func waitHTTP(t testing.TB, url string) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 15*time.Second, 20*time.Millisecond, "rekeyd not ready at %s", url)
}

// api calls the admin API and returns the status and the decoded body.
func api(t *testing.T, addr, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	if len(bytes.TrimSpace(b)) > 0 && b[0] == '{' {
		require.NoError(t, json.Unmarshal(b, &out), "body %s", b)
	}
	return resp.StatusCode, out
}

func rotate(t *testing.T, d *running, tenant, secret string) string {
	t.Helper()
	code, body := api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/"+tenant+"/secrets/"+secret+"/rotate", testToken, `{"reason":"test"}`)
	require.Equal(t, http.StatusAccepted, code, "body %v", body)
	return body["request_id"].(string)
}

// newAgent starts an agent of tenant on its own NATS connection, reading
// values from rekeyd over NATS.
func newAgent(t *testing.T, d *running, tenant, instance string, onInv func(agent.Invalidated)) *agent.Agent {
	t.Helper()
	return newAgentWith(t, d, tenant, instance, nil, onInv)
}

// newAgentWith starts an agent of tenant on its own NATS connection that
// reads values through f (nil: from rekeyd over NATS).
func newAgentWith(t testing.TB, d *running, tenant, instance string, f agent.Fetcher, onInv func(agent.Invalidated)) *agent.Agent {
	t.Helper()
	opts := append(d.AgentNATSOptions(tenant), nats.Name(instance), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	nc, err := nats.Connect(d.NATSURL(), opts...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return startAgent(t, nc, f, agent.Config{Tenant: tenant, Instance: instance, OnInvalidate: onInv, UsageInterval: 200 * time.Millisecond})
}

// startAgent starts an agent on nc reading values through f (nil: from
// rekeyd over NATS) and closes it when the test ends.
func startAgent(t testing.TB, nc *nats.Conn, f agent.Fetcher, cfg agent.Config) *agent.Agent {
	t.Helper()
	a, err := agent.New(nc, f, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	require.NoError(t, a.Start(ctx))
	t.Cleanup(func() { _ = a.Close() })
	return a
}

// runCrashChild runs rekeyd with a step hook that SIGKILLs the process
// right after a rotation's create step: the staged version is in the
// backend, nothing is promoted, the request is not acknowledged.
func runCrashChild() int {
	dir := os.Getenv("REKEY_TEST_DATA_DIR")
	cfg, err := orchestrator.Parse(examples.RekeyYAML)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg.DataDir = dir
	cfg.NATS.Embedded.Addr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rotation.LockTTL = 3 * time.Second
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx := context.Background()
	d, err := daemon.New(ctx, daemon.Options{
		Config: cfg, Logger: log, AdminToken: testToken, Worker: testWorker,
		StepHook: func(_ context.Context, step string) error {
			if step == handlers.StepCreate {
				// The worker can get here before the HTTP handler that
				// published the request wrote its 202: let the reply go.
				time.Sleep(200 * time.Millisecond)
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
			return nil
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("READY %s\n", d.HTTPAddr())
	if err := d.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// readyLine waits for the child's READY line and returns its HTTP address.
func readyLine(t *testing.T, r io.Reader) string {
	t.Helper()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if addr, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				lines <- addr
				return
			}
		}
		close(lines)
	}()
	select {
	case addr, ok := <-lines:
		require.True(t, ok, "child exited before READY")
		return addr
	case <-time.After(30 * time.Second):
		t.Fatal("child not READY after 30s")
		return ""
	}
}
