package daemon_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// getRecord is one Get observed by a reader goroutine.
type getRecord struct {
	started time.Time
	version string
	err     error
}

// TestEndToEndRotation: an agent caches a secret; a rotation goes in
// through the HTTP API; the agent's next Get returns the new value, and no
// Get that started after the invalidation arrived returns the old value.
func TestEndToEndRotation(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	var dropped atomic.Int64 // unix nanos of the drop of version "1"
	a := newAgent(t, d, "acme", "e2e-agent", func(ev agent.Invalidated) {
		if ev.Invalidation.Secret == "openai-key" {
			dropped.CompareAndSwap(0, ev.DroppedAt.UnixNano())
		}
	})
	ctx := context.Background()
	before, err := a.Get(ctx, "openai-key")
	require.NoError(t, err)
	require.Equal(t, "1", before.Version)
	require.True(t, strings.HasPrefix(string(before.Value), "sk-acme-"), "api-key style with the configured prefix")

	// Readers hammer Get while the rotation happens.
	stop := make(chan struct{})
	var mu sync.Mutex
	var gets []getRecord
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				started := time.Now()
				s, err := a.Get(ctx, "openai-key")
				mu.Lock()
				gets = append(gets, getRecord{started: started, version: s.Version, err: err})
				mu.Unlock()
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	reqID := rotate(t, d, "acme", "openai-key")
	require.Eventually(t, func() bool { return dropped.Load() != 0 }, 10*time.Second, time.Millisecond, "agent never got the invalidation")
	after, err := a.Get(ctx, "openai-key")
	require.NoError(t, err)
	require.Equal(t, "2", after.Version)
	require.NotEqual(t, before.Value, after.Value)
	// Let the Get loops run past the drop (on a loaded machine they may
	// not have been scheduled since).
	droppedAt := time.Unix(0, dropped.Load())
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, g := range gets {
			if g.started.After(droppedAt) {
				n++
			}
		}
		return n >= 4
	}, 10*time.Second, time.Millisecond)
	close(stop)
	wg.Wait()

	var afterDrop int
	for _, g := range gets {
		require.NoError(t, g.err)
		if g.started.After(droppedAt) {
			afterDrop++
			require.Equal(t, "2", g.version, "a Get that started after the invalidation returned the old version")
		}
	}
	require.Positive(t, afterDrop, "no Get ran after the invalidation; the check above proved nothing")

	// The status shows the new version and what caused it, never a value.
	code, st := api(t, d.HTTPAddr(), http.MethodGet, "/v1/tenants/acme/secrets/openai-key", testToken, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "2", st["version"])
	require.Equal(t, "1", st["previous_version"])
	last := st["last_rotation"].(map[string]any)
	require.Equal(t, reqID, last["request_id"])
	require.Equal(t, "api", last["trigger"].(map[string]any)["kind"])

	// The other tenant's secret of the same name did not move.
	code, st = api(t, d.HTTPAddr(), http.MethodGet, "/v1/tenants/globex/secrets/openai-key", testToken, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "1", st["version"])
}

// TestRevocationFailsClosedOnlyTheTenant: a revocation makes every agent
// of that tenant fail closed, and no agent of the other tenant.
func TestRevocationFailsClosedOnlyTheTenant(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	ctx := context.Background()
	var globex, acme []*agent.Agent
	for i := 0; i < 3; i++ {
		globex = append(globex, newAgent(t, d, "globex", fmt.Sprintf("globex-%d", i), nil))
		acme = append(acme, newAgent(t, d, "acme", fmt.Sprintf("acme-%d", i), nil))
	}
	for _, a := range append(append([]*agent.Agent{}, globex...), acme...) {
		_, err := a.Get(ctx, "openai-key")
		require.NoError(t, err)
	}
	code, body := api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/globex/revoke", testToken, `{"reason":"compromised agent"}`)
	require.Equal(t, http.StatusAccepted, code, "%v", body)

	for _, a := range globex {
		require.Eventually(t, func() bool {
			_, err := a.Get(ctx, "openai-key")
			return errors.Is(err, agent.ErrRevoked)
		}, 10*time.Second, time.Millisecond)
		_, err := a.Get(ctx, "billing-db")
		require.ErrorIs(t, err, agent.ErrRevoked)
	}
	for _, a := range acme {
		s, err := a.Get(ctx, "openai-key")
		require.NoError(t, err)
		require.Equal(t, "1", s.Version)
	}

	// The revocation rotated every globex secret, and a new globex agent
	// starts closed (it learns the revocation from the INVALIDATE stream).
	require.Eventually(t, func() bool {
		_, st := api(t, d.HTTPAddr(), http.MethodGet, "/v1/tenants/globex", testToken, "")
		if st == nil || st["revoked"] != true {
			return false
		}
		for _, s := range st["secrets"].([]any) {
			if s.(map[string]any)["version"] != "2" {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond)
	// The kill switch cut globex's agents off the bus: a new one cannot
	// log in at all, and the running ones were disconnected.
	require.Eventually(t, func() bool {
		nc, err := nats.Connect(d.NATSURL(), d.AgentNATSOptions("globex")...)
		if err == nil {
			nc.Close()
			return false
		}
		return strings.Contains(err.Error(), "Authorization Violation")
	}, 10*time.Second, 20*time.Millisecond, "a revoked tenant's agent can still log in")
	nc, err := nats.Connect(d.NATSURL(), d.AgentNATSOptions("acme")...)
	require.NoError(t, err, "another tenant's agents still log in")
	nc.Close()

	// Fetching through rekey fails closed too, whatever the caller does
	// (here with rekeyd's admin credentials and globex's inbox).
	rogue, err := nats.Connect(d.NATSURL(), append(d.AdminNATSOptions(), nats.CustomInboxPrefix(schemas.AgentInboxPrefix("globex")))...)
	require.NoError(t, err)
	defer rogue.Close()
	_, err = agent.NewNATSFetcher(rogue, "rogue").Fetch(ctx, "globex", "openai-key")
	require.ErrorIs(t, err, agent.ErrRevoked)

	// Restore lifts it: the cut-off agents reconnect and resync, and a new
	// one logs in.
	code, _ = api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/globex/restore", testToken, "")
	require.Equal(t, http.StatusAccepted, code)
	var late *agent.Agent
	require.Eventually(t, func() bool {
		nc, err := nats.Connect(d.NATSURL(), d.AgentNATSOptions("globex")...)
		if err != nil {
			return false
		}
		nc.Close()
		return true
	}, 10*time.Second, 20*time.Millisecond, "a restored tenant's agents cannot log in")
	late = newAgent(t, d, "globex", "globex-late", nil)
	for _, a := range append(globex, late) {
		require.Eventually(t, func() bool {
			s, err := a.Get(ctx, "openai-key")
			return err == nil && s.Version == "2"
		}, 10*time.Second, 5*time.Millisecond)
	}
}

// TestCrashBetweenCreateAndFinish: a real rekeyd child process is killed
// (SIGKILL) after the create step of a rotation; after a restart on the
// same data dir the secret ends with exactly one promoted new version and
// no staged leftover.
func TestCrashBetweenCreateAndFinish(t *testing.T) {
	dir := t.TempDir()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "REKEY_TEST_CHILD=crash-after-create", "REKEY_TEST_DATA_DIR="+dir)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = testWriter{t}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	addr := readyLine(t, stdout)
	waitHTTP(t, "http://"+addr+"/readyz")

	code, body := api(t, addr, http.MethodPost, "/v1/tenants/acme/secrets/billing-db/rotate", testToken, "")
	require.Equal(t, http.StatusAccepted, code, "%v", body)
	reqID := body["request_id"].(string)
	err = cmd.Wait()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "child should die by SIGKILL")
	require.Contains(t, exitErr.Error(), "killed")

	// Restart on the same data dir, without the crash hook.
	d := start(t, testConfig(t, dir), daemonOpts())
	ctx := context.Background()
	ref := handlers.SecretRef{Tenant: "acme", Secret: "billing-db", Backend: "local"}
	require.Eventually(t, func() bool {
		st, err := d.State().SecretStatus(ctx, "acme", "billing-db")
		return err == nil && st.Rotations == 1 && st.State == orchestrator.SecretIdle && st.Announced
	}, 30*time.Second, 50*time.Millisecond, "the interrupted request was not completed after restart")

	cur, err := d.Local().Current(ctx, ref)
	require.NoError(t, err)
	staged, err := d.Local().Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, staged, "a staged version was left behind")
	st, err := d.State().SecretStatus(ctx, "acme", "billing-db")
	require.NoError(t, err)
	require.Equal(t, cur.ID, st.Version)
	require.Equal(t, "1", st.PreviousVersion, "exactly one promotion after the original version")
	require.Equal(t, reqID, st.LastRequestID)
	require.NotEqual(t, "1", cur.ID)

	// The audit trail shows the leftover being rolled back.
	recs := auditRecords(t, d, "acme")
	var rolledBack bool
	for _, r := range recs {
		if r.Action == "rotation.rollback_leftover" && r.RequestID == reqID {
			rolledBack = true
		}
	}
	require.True(t, rolledBack, "no audit record of the leftover rollback")
}

// TestCoalescing: 1,000 concurrent requests for one secret give at most 2
// rotations (plus one per min_interval the requests took to publish, on a
// loaded machine), and every request is accounted for.
func TestCoalescing(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Rotation.MinInterval = orchestrator.Defaults().Rotation.MinInterval
	d := start(t, cfg, daemonOpts())
	const n = 1000
	began := time.Now()
	ids := make(chan string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ids <- rotate(t, d, "acme", "openai-key")
		}()
	}
	wg.Wait()
	close(ids)
	require.Len(t, ids, n)
	took := time.Since(began)
	t.Logf("%d requests published through the HTTP API in %s", n, took)
	maxRotations := 2 + int64(took/cfg.Rotation.MinInterval)

	ctx := context.Background()
	waitRotateDrained(t, d, 60*time.Second)
	st, err := d.State().SecretStatus(ctx, "acme", "openai-key")
	require.NoError(t, err)
	require.GreaterOrEqual(t, st.Rotations, int64(1))
	require.LessOrEqual(t, st.Rotations, maxRotations, "1,000 requests published in %s caused %d rotations", took, st.Rotations)

	// Every request is either the one that rotated or coalesced into one.
	handled := handledRequests(t, d, "acme")
	for id := range ids {
		require.Contains(t, handled, id, "request %s neither rotated nor coalesced", id)
	}
}

// handledRequests maps each rotation request of the tenants that was
// rotated (its completion audited) or coalesced to "rotated" or
// "coalesced", per the audit trail.
func handledRequests(t testing.TB, d rekeyView, tenants ...string) map[string]string {
	t.Helper()
	handled := map[string]string{}
	for _, tenant := range tenants {
		for _, r := range auditRecords(t, d, tenant) {
			switch {
			case r.Action == "rotation.request" && r.Outcome == schemas.OutcomeCoalesced:
				handled[r.RequestID] = "coalesced"
			case r.Action == "rotation.complete":
				handled[r.RequestID] = "rotated"
			}
		}
	}
	return handled
}

// requireNoValueIn scans rekeyd's logs, every stream, the state buckets
// and /metrics for each value, raw and base64.
func requireNoValueIn(t testing.TB, d *running, values []string) {
	t.Helper()
	haystacks := map[string]string{"logs": d.logs.String()}
	for _, stream := range []string{schemas.StreamRotate, schemas.StreamRevoke, schemas.UsageStream("acme"), schemas.UsageStream("globex"),
		schemas.StreamInvalidate, schemas.StreamEvents, schemas.StreamAudit,
		"KV_" + orchestrator.BucketStatus, "KV_" + orchestrator.BucketTenants} {
		haystacks[stream] = streamText(t, d, stream)
	}
	resp, err := http.Get("http://" + d.HTTPAddr() + "/metrics")
	require.NoError(t, err)
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	haystacks["/metrics"] = string(m)
	for _, v := range values {
		require.NotEmpty(t, v)
		for _, enc := range []string{v, base64.StdEncoding.EncodeToString([]byte(v))} {
			for name, h := range haystacks {
				require.NotContains(t, h, enc, "a secret value leaked into %s", name)
			}
		}
	}
}

// TestBadInput: the API's 400/401/404 cases, each with a reason.
func TestBadInput(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	rot := "/v1/tenants/acme/secrets/openai-key/rotate"
	for _, tc := range []struct {
		name, method, path, token, body string
		code                            int
		contains                        string
	}{
		{"no token", "POST", rot, "", "", 401, "missing Authorization"},
		{"wrong token", "POST", rot, "wrong-token-wrong-token", "", 401, "invalid admin token"},
		{"unknown tenant", "POST", "/v1/tenants/initech/secrets/openai-key/rotate", testToken, "", 404, `tenant "initech" is not configured`},
		{"unknown secret", "POST", "/v1/tenants/acme/secrets/stripe-key/rotate", testToken, "", 404, `secret "stripe-key"`},
		{"unknown secret status", "GET", "/v1/tenants/acme/secrets/stripe-key", testToken, "", 404, "not configured"},
		{"unknown tenant revoke", "POST", "/v1/tenants/initech/revoke", testToken, "", 404, "not configured"},
		{"upper case tenant", "POST", "/v1/tenants/ACME/secrets/openai-key/rotate", testToken, "", 400, "tenant id"},
		{"dot in secret", "POST", "/v1/tenants/acme/secrets/openai.key/rotate", testToken, "", 400, "secret id"},
		{"wildcard tenant", "POST", "/v1/tenants/*/revoke", testToken, "", 400, "tenant id"},
		{"gt wildcard", "POST", "/v1/tenants/acme/secrets/%3E/rotate", testToken, "", 400, "secret id"},
		{"bad json", "POST", rot, testToken, "{not json", 400, "invalid JSON body"},
		{"unknown field", "POST", rot, testToken, `{"value":"x"}`, 400, "unknown field"},
		{"no token beats bad id", "POST", "/v1/tenants/ACME/revoke", "", "", 401, "missing Authorization"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := api(t, d.HTTPAddr(), tc.method, tc.path, tc.token, tc.body)
			require.Equal(t, tc.code, code, "%v", body)
			require.Contains(t, body["error"], tc.contains)
		})
	}
	// Over the body limit: 413.
	big := `{"reason":"` + strings.Repeat("x", 2<<20) + `"}`
	code, body := api(t, d.HTTPAddr(), "POST", rot, testToken, big)
	require.Equal(t, http.StatusRequestEntityTooLarge, code, "%v", body)
	// Nothing bad reached the stream.
	ctx := context.Background()
	s, err := d.Bus().JS.Stream(ctx, schemas.StreamRotate)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, info.State.LastSeq, "a refused request was published")
}

// TestIdempotencyKey: the same Idempotency-Key twice queues one request.
func TestIdempotencyKey(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	post := func() map[string]any {
		req, _ := http.NewRequest("POST", "http://"+d.HTTPAddr()+"/v1/tenants/acme/secrets/openai-key/rotate", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set("Idempotency-Key", "ticket-4711")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
		var out map[string]any
		b, _ := io.ReadAll(resp.Body)
		require.NoError(t, jsonUnmarshal(b, &out))
		return out
	}
	first, second := post(), post()
	require.Equal(t, first["request_id"], second["request_id"])
	require.Nil(t, first["duplicate"])
	require.Equal(t, true, second["duplicate"])
}

// TestNoSecretEscapes rotates and revokes, then scans logs, every stream,
// the state buckets and /metrics for the values that were rotated.
func TestNoSecretEscapes(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	ctx := context.Background()
	values := map[string]bool{}
	a := newAgent(t, d, "acme", "scan-agent", nil)
	g := newAgent(t, d, "globex", "scan-agent-g", nil)
	collect := func() {
		for _, s := range []string{"openai-key", "billing-db"} {
			require.Eventually(t, func() bool {
				v, err := a.Get(ctx, s)
				if err != nil {
					return false
				}
				values[string(v.Value)] = true
				return true
			}, 5*time.Second, 5*time.Millisecond)
		}
	}
	collect()
	for i := 0; i < 3; i++ {
		for _, s := range []string{"openai-key", "billing-db"} {
			id := rotate(t, d, "acme", s)
			require.Eventually(t, func() bool {
				st, err := d.State().SecretStatus(ctx, "acme", s)
				return err == nil && st.LastRequestID == id && st.State == orchestrator.SecretIdle && st.Announced
			}, 10*time.Second, 5*time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond)
		collect()
	}
	gv, err := g.Get(ctx, "openai-key")
	require.NoError(t, err)
	values[string(gv.Value)] = true
	code, _ := api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/globex/revoke", testToken, "")
	require.Equal(t, http.StatusAccepted, code)
	require.Eventually(t, func() bool {
		for _, r := range auditRecords(t, d, "globex") {
			if r.Action == "revocation.complete" {
				return true
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // let use reports and acks land
	require.GreaterOrEqual(t, len(values), 8, "collected too few values for a meaningful scan")

	require.NotEmpty(t, streamText(t, d, schemas.StreamAudit), "the audit stream was not read")
	requireNoValueIn(t, d, slices.Collect(maps.Keys(values)))
}

// streamMsgs reads every message of a stream.
func streamMsgs(t testing.TB, d rekeyView, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := d.Bus().JS.Stream(ctx, stream)
	require.NoError(t, err, stream)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		msg, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(t, err)
		out = append(out, msg)
	}
	return out
}

// streamText concatenates every message (subject, headers, data) of a stream.
func streamText(t testing.TB, d *running, stream string) string {
	t.Helper()
	var b strings.Builder
	for _, msg := range streamMsgs(t, d, stream) {
		b.WriteString(msg.Subject + "\n")
		for k, vs := range msg.Header {
			b.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
		}
		b.Write(msg.Data)
		b.WriteByte('\n')
	}
	return b.String()
}

// auditRecords reads a tenant's audit trail.
func auditRecords(t testing.TB, d rekeyView, tenant string) []schemas.AuditRecord {
	t.Helper()
	var out []schemas.AuditRecord
	for _, msg := range streamMsgs(t, d, schemas.StreamAudit) {
		ev, err := schemas.Decode(msg.Data)
		require.NoError(t, err)
		if ev.Tenant != tenant {
			continue
		}
		var r schemas.AuditRecord
		require.NoError(t, ev.DecodeData(schemas.TypeAuditRecord, &r))
		out = append(out, r)
	}
	return out
}

func daemonOpts() daemon.Options { return daemon.Options{} }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
