package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/local"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Reliability tests of issue #7 section 3: a burst of 1,000 rotation
// requests across 100 secrets, interrupted by a SIGKILL of rekeyd (a real
// child process) or by a restart of the embedded NATS server. Afterwards
// every accepted request was rotated or coalesced and no secret is left
// half-promoted.

const (
	burstChildMode  = "burst"
	burstConfigEnv  = "REKEY_TEST_CONFIG"
	burstRequests   = 1000
	burstWorkers    = 32
	burstInterrupt  = 300 // accepted requests before the interruption
	burstSecretsPer = 50
)

var burstTenants = []string{"acme", "globex"}

// init lets the test binary play a rekeyd child process running the
// configuration named by REKEY_TEST_CONFIG (no crash hook: the parent
// kills it). It is a hook of its own so that TestMain needs no change.
func init() {
	if os.Getenv("REKEY_TEST_CHILD") == burstChildMode {
		os.Exit(runChild(testWorker))
	}
}

// startChild starts rekeyd as a child process on the configuration at
// path, waits until it is ready, and returns it and its HTTP address. It
// is killed when the test ends, if it still runs.
func startChild(t *testing.T, path string) (*exec.Cmd, string) {
	t.Helper()
	return startChildMode(t, burstChildMode, path)
}

// startChildMode is startChild with the child's mode and extra
// environment variables (NAME=value).
func startChildMode(t *testing.T, mode, path string, env ...string) (*exec.Cmd, string) {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "REKEY_TEST_CHILD="+mode, burstConfigEnv+"="+path), env...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = testWriter{t}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	fields := strings.Fields(readyLine(t, stdout))
	require.Len(t, fields, 2, "READY <http addr> <nats url>")
	addr := fields[0]
	waitHTTP(t, "http://"+addr+"/readyz")
	t.Logf("child rekeyd pid %d: http %s, nats %s", cmd.Process.Pid, addr, fields[1])
	return cmd, addr
}

// burstConfig writes a configuration with 100 local secrets (50 per
// tenant) and short rotation timings on dir and returns its path and the
// parsed config.
func burstConfig(t *testing.T, dir string) (string, orchestrator.Config) {
	t.Helper()
	path, cfg, _ := writeConfig(t, dir, burstSecretsPer,
		"rotation:\n  max_attempts: 3\n  backoff_initial: 50ms\n  backoff_max: 200ms\n  lock_ttl: 3s\n  min_interval: 0s\n")
	return path, cfg
}

// writeConfig writes a configuration with perTenant local secrets in each
// burst tenant, free addresses and extra (YAML sections) on dir, and
// returns its path, the parsed config and the secrets.
func writeConfig(t *testing.T, dir string, perTenant int, extra string) (string, orchestrator.Config, []burstSecret) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "data_dir: %q\n", dir)
	b.WriteString("nats:\n  embedded:\n    addr: 127.0.0.1:0\n")
	b.WriteString("http:\n  addr: 127.0.0.1:0\n")
	b.WriteString(extra)
	b.WriteString("tenants:\n")
	var secrets []burstSecret
	for _, tenant := range burstTenants {
		fmt.Fprintf(&b, "  %s:\n    secrets:\n", tenant)
		for i := range perTenant {
			s := fmt.Sprintf("s-%02d", i)
			fmt.Fprintf(&b, "      %s:\n        backend: local\n        generator: {style: password, length: 32}\n", s)
			secrets = append(secrets, burstSecret{tenant, s})
		}
	}
	path := filepath.Join(dir, "rekey.yaml")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
	cfg, err := orchestrator.Load(path)
	require.NoError(t, err)
	return path, cfg, secrets
}

type burstSecret struct{ tenant, secret string }

func burstSecrets() []burstSecret {
	var out []burstSecret
	for _, tenant := range burstTenants {
		for i := 0; i < burstSecretsPer; i++ {
			out = append(out, burstSecret{tenant, fmt.Sprintf("s-%02d", i)})
		}
	}
	return out
}

// burstResult is what the sender saw.
type burstResult struct {
	mu        sync.Mutex
	accepted  map[string]burstSecret // request id -> secret
	status    map[int]int            // non-202 answers by status
	transport atomic.Int64           // transport errors (no answer)
	retries   atomic.Int64
	slow      atomic.Int64 // requests answered after more than 2 s
	slowest   atomic.Int64 // nanoseconds
}

func newBurstResult() *burstResult {
	return &burstResult{accepted: map[string]burstSecret{}, status: map[int]int{}}
}

func (r *burstResult) nAccepted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.accepted)
}

// postRotate sends one rotation request; code 0 means no answer.
func postRotate(client *http.Client, addr string, s burstSecret, i int) (int, string) {
	body := fmt.Sprintf(`{"reason":"burst %d"}`, i)
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/tenants/"+s.tenant+"/secrets/"+s.secret+"/rotate", strings.NewReader(body))
	if err != nil {
		return 0, ""
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := client.Do(req)
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

// burstOpts shapes a burst.
type burstOpts struct {
	// retry: a request answered 503 (or not answered) is sent again until
	// it is accepted (the client contract); without, a worker stops at
	// the first transport error (rekeyd is gone).
	retry bool
	// pace, if set, is the least time between the starts of two requests.
	pace time.Duration
	// Requests from index holdFrom on wait until hold is closed.
	holdFrom int
	hold     <-chan struct{}
	// afterAccept runs (outside any lock) with the number of requests
	// accepted so far.
	afterAccept func(n int)
	// Unless set, burstRequests requests over burstSecrets() to one
	// rekeyd. With several addresses (replicas behind a load balancer),
	// requests go round-robin and a retry goes to the next one.
	requests int
	secrets  []burstSecret
	addrs    []string
}

// sendBurst sends burstRequests requests round-robin over the secrets
// with burstWorkers concurrent senders.
func sendBurst(t *testing.T, addr string, o burstOpts) *burstResult {
	t.Helper()
	retry, afterAccept := o.retry, o.afterAccept
	secrets, requests, addrs := burstSecrets(), burstRequests, []string{addr}
	if o.secrets != nil {
		secrets = o.secrets
	}
	if o.requests > 0 {
		requests = o.requests
	}
	if len(o.addrs) > 0 {
		addrs = o.addrs
	}
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConns: burstWorkers, MaxIdleConnsPerHost: burstWorkers},
	}
	defer client.CloseIdleConnections()
	res := newBurstResult()
	next := make(chan int)
	go func() {
		defer close(next)
		for i := 0; i < requests; i++ {
			if o.hold != nil && i == o.holdFrom {
				<-o.hold
			}
			if o.pace > 0 {
				time.Sleep(o.pace)
			}
			next <- i
		}
	}()
	deadline := time.Now().Add(3 * time.Minute)
	var wg sync.WaitGroup
	for w := 0; w < burstWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				s := secrets[i%len(secrets)]
				for try := 0; ; try++ {
					sent := time.Now()
					code, id := postRotate(client, addrs[(i+try)%len(addrs)], s, i)
					if took := time.Since(sent); took > 2*time.Second {
						res.slow.Add(1)
						for cur := res.slowest.Load(); int64(took) > cur && !res.slowest.CompareAndSwap(cur, int64(took)); cur = res.slowest.Load() {
						}
					}
					if code == http.StatusAccepted && id != "" {
						res.mu.Lock()
						res.accepted[id] = s
						n := len(res.accepted)
						res.mu.Unlock()
						if afterAccept != nil {
							afterAccept(n)
						}
						break
					}
					res.mu.Lock()
					res.status[code]++
					res.mu.Unlock()
					if code == 0 {
						res.transport.Add(1)
						if !retry {
							// rekeyd is gone: drain the remaining indices.
							for range next {
							}
							return
						}
					}
					if !retry || (code != 0 && code != http.StatusServiceUnavailable) || time.Now().After(deadline) {
						break
					}
					res.retries.Add(1)
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	return res
}

// waitRotateDrained waits until the ROTATE consumer has nothing pending.
func waitRotateDrained(t testing.TB, d rekeyView, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	require.Eventually(t, func() bool {
		c, err := d.Bus().JS.Consumer(ctx, schemas.StreamRotate, orchestrator.ConsumerRotation)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}, timeout, 100*time.Millisecond, "rotation requests still pending")
}

// rekeyView is what the checks read: a running daemon's bus, state and
// local backend, or the same opened on a NATS cluster that rekeyd
// processes share.
type rekeyView interface {
	Bus() *orchestrator.Bus
	State() *orchestrator.State
	Local() *local.Backend
}

// checkBurst: every accepted request was rotated or coalesced (from the
// audit), and no secret is half-promoted (from the backend).
func checkBurst(t *testing.T, d rekeyView, res *burstResult) {
	t.Helper()
	checkRequests(t, d, res, burstSecrets())
}

// checkRequests is checkBurst over the given secrets.
func checkRequests(t *testing.T, d rekeyView, res *burstResult, secrets []burstSecret) {
	t.Helper()
	ctx := context.Background()
	rotated, coalesced := map[string]bool{}, map[string]bool{}
	completes, leftovers := 0, 0
	auditedAccepted := map[string]bool{}
	listed := map[burstSecret]bool{}
	for _, s := range secrets {
		listed[s] = true
	}
	for _, tenant := range burstTenants {
		for _, r := range auditRecords(t, d, tenant) {
			switch {
			case r.Action == "rotation.complete":
				rotated[r.RequestID] = true
				if listed[burstSecret{r.Tenant, r.Secret}] {
					completes++
				}
			case r.Action == "rotation.request" && r.Outcome == schemas.OutcomeCoalesced:
				coalesced[r.RequestID] = true
			case r.Action == "rotation.rollback_leftover":
				leftovers++
			case r.Action == "rotation.request" && r.Outcome == schemas.OutcomeAccepted:
				auditedAccepted[r.RequestID] = true
			}
		}
	}
	var lost []string
	nRotated, nCoalesced := 0, 0
	for id, s := range res.accepted {
		switch {
		case rotated[id]:
			nRotated++
		case coalesced[id]:
			nCoalesced++
		default:
			lost = append(lost, fmt.Sprintf("%s (%s/%s)", id, s.tenant, s.secret))
		}
	}
	slices.Sort(lost)
	// Requests rekeyd accepted (and audited) whose reply the sender never
	// got, e.g. when it was killed: not required, but reported.
	replyLost, replyLostHandled := 0, 0
	for id := range auditedAccepted {
		if _, ok := res.accepted[id]; !ok {
			replyLost++
			if rotated[id] || coalesced[id] {
				replyLostHandled++
			}
		}
	}

	var perSecret []int
	total := int64(0)
	var halfPromoted []string
	for _, s := range secrets {
		ref := handlers.SecretRef{Tenant: s.tenant, Secret: s.secret, Backend: "local"}
		staged, err := d.Local().Staged(ctx, ref)
		require.NoError(t, err)
		cur, err := d.Local().Current(ctx, ref)
		require.NoError(t, err)
		st, err := d.State().SecretStatus(ctx, s.tenant, s.secret)
		require.NoError(t, err)
		if len(staged) > 0 || st.Version != cur.ID || st.State != orchestrator.SecretIdle {
			ids := make([]string, 0, len(staged))
			for _, v := range staged {
				ids = append(ids, v.ID)
			}
			halfPromoted = append(halfPromoted, fmt.Sprintf("%s: staged %v, status version %q state %q, backend current %q",
				ref, ids, st.Version, st.State, cur.ID))
		}
		perSecret = append(perSecret, int(st.Rotations))
		total += st.Rotations
	}
	slices.Sort(perSecret)
	t.Logf("accepted %d: rotated %d, coalesced %d, lost %d; non-202 answers %v, transport errors %d, retries %d",
		len(res.accepted), nRotated, nCoalesced, len(lost), res.status, res.transport.Load(), res.retries.Load())
	t.Logf("answers slower than 2s: %d (slowest %s)", res.slow.Load(), time.Duration(res.slowest.Load()))
	t.Logf("accepted by rekeyd (audit) but reply lost: %d, of which rotated or coalesced: %d", replyLost, replyLostHandled)
	t.Logf("rotations: %d in status over %d secrets (per secret min %d, median %d, max %d); %d rotation.complete audit records; %d leftovers rolled back",
		total, len(perSecret), perSecret[0], perSecret[len(perSecret)/2], perSecret[len(perSecret)-1], completes, leftovers)
	require.Empty(t, lost, "accepted requests neither rotated nor coalesced")
	require.Empty(t, halfPromoted, "secrets left half-promoted")
	require.EqualValues(t, total, completes, "every promotion in the status has its rotation.complete audit record (and so its completion event)")
}

// TestKill9DuringBurst: rekeyd (a real child process) is killed with
// SIGKILL after 300 of a burst of 1,000 rotation requests across 100
// secrets were accepted; after a restart on the same data dir every
// accepted request was rotated or coalesced and nothing is half-promoted.
func TestKill9DuringBurst(t *testing.T) {
	dir := t.TempDir()
	path, cfg := burstConfig(t, dir)
	cmd, addr := startChild(t, path)

	began := time.Now()
	var killed sync.Once
	var killedAt time.Duration
	res := sendBurst(t, addr, burstOpts{afterAccept: func(n int) {
		if n >= burstInterrupt {
			killed.Do(func() {
				killedAt = time.Since(began)
				if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil {
					t.Errorf("kill child: %v", err)
				}
			})
		}
	}})
	t.Logf("burst: %d accepted before the child died; SIGKILL %s into the burst, senders done after %s",
		res.nAccepted(), killedAt, time.Since(began))
	require.GreaterOrEqual(t, res.nAccepted(), burstInterrupt)
	err := cmd.Wait()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "child should die by SIGKILL")
	require.Contains(t, exitErr.Error(), "killed")

	// Restart in-process on the same data dir.
	restarted := time.Now()
	d := start(t, cfg, daemon.Options{Logger: quietLogger(t)})
	waitRotateDrained(t, d, 3*time.Minute)
	t.Logf("restart: ROTATE drained %s after the restart", time.Since(restarted))
	checkBurst(t, d, res)
}

// TestNATSRestartDuringBurst: the embedded NATS server restarts once in
// the middle of a burst of 1,000 rotation requests across 100 secrets;
// requests refused meanwhile are retried until accepted; afterwards every
// accepted request was rotated or coalesced and nothing is half-promoted.
func TestNATSRestartDuringBurst(t *testing.T) {
	_, cfg := burstConfig(t, t.TempDir())
	d := start(t, cfg, daemon.Options{Logger: quietLogger(t)})

	// The burst is paced (one request per 2 ms) and its last 100 requests
	// wait for the restart to be over, so that it surely spans the outage.
	began := time.Now()
	var once sync.Once
	restartDone := make(chan struct{})
	var restartErr error
	var restartAt, restartTook time.Duration
	var atRestart, atRestarted int
	var accepted atomic.Int64 // highest count seen so far
	res := sendBurst(t, d.HTTPAddr(), burstOpts{
		retry: true, pace: 2 * time.Millisecond, holdFrom: burstRequests - 100, hold: restartDone,
		afterAccept: func(n int) {
			for cur := accepted.Load(); int64(n) > cur && !accepted.CompareAndSwap(cur, int64(n)); cur = accepted.Load() {
			}
			if n >= burstInterrupt {
				once.Do(func() {
					restartAt, atRestart = time.Since(began), n
					go func() {
						defer close(restartDone)
						restartErr = d.Embedded().Restart(300 * time.Millisecond)
						restartTook = time.Since(began) - restartAt
						atRestarted = int(accepted.Load())
					}()
				})
			}
		},
	})
	burst := time.Since(began)
	<-restartDone
	require.NoError(t, restartErr)
	t.Logf("burst: %d accepted in %s; NATS restart began %s into the burst (%d accepted), took %s (%d accepted when NATS was back)",
		res.nAccepted(), burst, restartAt, atRestart, restartTook, atRestarted)
	require.Equal(t, burstRequests, res.nAccepted(), "every request is eventually accepted (non-202: %v)", res.status)

	drained := time.Now()
	waitRotateDrained(t, d, 3*time.Minute)
	t.Logf("ROTATE drained %s after the burst", time.Since(drained))
	checkBurst(t, d, res)
}

// quietLogger logs warnings and errors only (1,000 requests at debug
// level would drown -v output).
func quietLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewJSONHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
