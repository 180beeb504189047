package adversarial_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/deployments/examples"
	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

const adminToken = "adversarial-admin-token-0123456789"

// tenantTokens are the self-service tokens of the rig's tenants.
var tenantTokens = map[string]string{
	"acme":   "acme-tenant-token-0123456789abcdef",
	"globex": "globex-tenant-token-0123456789abcdef",
}

// rig is a running rekeyd on the example configuration (tenants acme and
// globex, local backend) with self-service tokens, seen by the attacker
// from outside and by the test through the admin NATS user.
type rig struct {
	t     *testing.T
	d     *daemon.Daemon
	admin *nats.Conn
	js    jetstream.JetStream
	logs  *testutil.SyncBuffer
	http  string

	mu   sync.Mutex
	seen []string // every secret value an attacker got
}

func newRig(t *testing.T) *rig {
	t.Helper()
	cfg, err := orchestrator.Parse(examples.RekeyYAML)
	require.NoError(t, err)
	cfg.DataDir = t.TempDir()
	cfg.NATS.Embedded.Addr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rotation.LockTTL = 3 * time.Second
	cfg.Rotation.BackoffInitial = 50 * time.Millisecond
	cfg.Rotation.BackoffMax = 200 * time.Millisecond
	cfg.Rotation.MinInterval = 0
	var tokens strings.Builder
	tokens.WriteString("min_interval: 0s\ntokens:\n")
	for _, tenant := range []string{"acme", "globex"} {
		sum := sha256.Sum256([]byte(tenantTokens[tenant]))
		fmt.Fprintf(&tokens, "  - {id: %s-1, tenant: %s, sha256: %s}\n", tenant, tenant, hex.EncodeToString(sum[:]))
	}
	if cfg.Triggers == nil {
		cfg.Triggers = map[string]yaml.RawMessage{}
	}
	cfg.Triggers["selfservice"] = yaml.RawMessage(tokens.String())

	logs := &testutil.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, daemon.Options{
		Config: cfg, AdminToken: adminToken,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Worker: handlers.WorkerConfig{AckWait: 3 * time.Second, ShutdownTimeout: 5 * time.Second},
	})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("rekeyd logs (last lines):\n%s", testutil.LastLines(logs.String(), 40))
		}
	})
	// rekeyd's own roles must never have been refused anything: an
	// attack must not make rekeyd try what its permissions forbid either
	// (registered last, so it runs before the stop).
	t.Cleanup(func() {
		for _, role := range orchestrator.Roles {
			if n := d.RoleBus(role).PermissionViolations(); n > 0 {
				t.Errorf("rekeyd's role %s was refused %d operations by its own NATS permissions", role, n)
			}
		}
	})
	r := &rig{t: t, d: d, logs: logs, http: "http://" + d.HTTPAddr()}
	r.admin, err = nats.Connect(d.NATSURL(), d.AdminNATSOptions()...)
	require.NoError(t, err)
	t.Cleanup(r.admin.Close)
	r.js, err = jetstream.New(r.admin)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		resp, err := http.Get(r.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 15*time.Second, 20*time.Millisecond)
	return r
}

// attacker is one tenant's agent credentials on the bus, with the errors
// the server sent it (permission violations arrive asynchronously).
type attacker struct {
	*nats.Conn
	tenant string
	mu     sync.Mutex
	errs   []error
}

func (r *rig) agentConn(tenant string, extra ...nats.Option) *attacker {
	r.t.Helper()
	a := &attacker{tenant: tenant}
	opts := append(r.d.AgentNATSOptions(tenant), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		a.mu.Lock()
		a.errs = append(a.errs, err)
		a.mu.Unlock()
	}))
	nc, err := nats.Connect(r.d.NATSURL(), append(opts, extra...)...)
	require.NoError(r.t, err)
	r.t.Cleanup(nc.Close)
	a.Conn = nc
	return a
}

// violations returns the permission violations the server reported.
func (a *attacker) violations() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, err := range a.errs {
		if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			out = append(out, err.Error())
		}
	}
	return out
}

// fetch reads a secret's current value as the tenant's agent would and
// records it as seen by the attacker.
func (r *rig) fetch(a *attacker, secret string) agent.Secret {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := agent.NewNATSFetcher(a.Conn, "attacker-1").Fetch(ctx, a.tenant, secret)
	require.NoError(r.t, err)
	r.mu.Lock()
	r.seen = append(r.seen, string(s.Value))
	r.mu.Unlock()
	return s
}

// rotate asks for a rotation as the admin and waits until the fetch
// server serves a new version.
func (r *rig) rotate(tenant, secret string) {
	r.t.Helper()
	before := r.currentVersion(tenant, secret)
	status, body := r.call("POST", "/v1/tenants/"+tenant+"/secrets/"+secret+"/rotate", adminToken, `{"reason":"adversarial rig"}`)
	require.Equal(r.t, http.StatusAccepted, status, body)
	require.Eventually(r.t, func() bool {
		v := r.currentVersion(tenant, secret)
		return v != "" && v != before
	}, 15*time.Second, 20*time.Millisecond, "rotation of %s/%s not done", tenant, secret)
}

// currentVersion is the version the fetch server serves ("" if none),
// read through the local backend, never as an attacker.
func (r *rig) currentVersion(tenant, secret string) string {
	ref, b, err := r.d.Lookup(tenant, secret)
	require.NoError(r.t, err)
	v, err := b.Current(context.Background(), ref)
	if err != nil {
		return ""
	}
	return v.ID
}

func (r *rig) call(method, path, token, body string) (int, string) {
	r.t.Helper()
	req, err := http.NewRequest(method, r.http+path, strings.NewReader(body))
	require.NoError(r.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(r.t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// snapshot is the last sequence and message count of every stream (KV
// buckets included), by stream name.
type snapshot map[string][2]uint64

// volatile streams change without any request: lease renewals.
var volatile = []string{"KV_" + orchestrator.BucketLeases}

// expiring streams lose entries by age (lock TTL) without any request.
var expiring = []string{"KV_" + orchestrator.BucketLocks}

func (r *rig) snapshot() snapshot {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := snapshot{}
	names := r.js.StreamNames(ctx)
	for name := range names.Name() {
		if slices.Contains(volatile, name) {
			continue
		}
		st, err := r.js.Stream(ctx, name)
		require.NoError(r.t, err)
		info, err := st.Info(ctx)
		require.NoError(r.t, err)
		s[name] = [2]uint64{info.State.LastSeq, info.State.Msgs}
	}
	require.NoError(r.t, names.Err())
	return s
}

// quiet waits until no stream changes for half a second (the rig's own
// rotations have finished writing their events, audit and confirmations)
// and returns that snapshot.
func (r *rig) quiet() snapshot {
	r.t.Helper()
	last := r.snapshot()
	stableSince := time.Now()
	deadline := time.Now().Add(20 * time.Second)
	for time.Since(stableSince) < 500*time.Millisecond {
		require.True(r.t, time.Now().Before(deadline), "rekeyd never went quiet")
		time.Sleep(50 * time.Millisecond)
		if s := r.snapshot(); !maps.Equal(s, last) {
			last, stableSince = s, time.Now()
		}
	}
	return last
}

// changed lists what differs between two snapshots, except the streams
// allowed to grow (and then only with messages allowed by ok).
func (r *rig) changed(before, after snapshot, ok map[string]func(jetstream.RawStreamMsg) bool) []string {
	r.t.Helper()
	var out []string
	for name, b := range before {
		a, present := after[name]
		if !present {
			out = append(out, name+": deleted")
			continue
		}
		if a == b || (a[0] == b[0] && a[1] < b[1] && slices.Contains(expiring, name)) {
			continue
		}
		allow := ok[name]
		if allow == nil || a[0] < b[0] {
			out = append(out, fmt.Sprintf("%s: last seq %d -> %d, msgs %d -> %d", name, b[0], a[0], b[1], a[1]))
			continue
		}
		st, err := r.js.Stream(context.Background(), name)
		require.NoError(r.t, err)
		for seq := b[0] + 1; seq <= a[0]; seq++ {
			m, err := st.GetMsg(context.Background(), seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			require.NoError(r.t, err)
			if !allow(*m) {
				out = append(out, fmt.Sprintf("%s: new message %d on %s: %.200s", name, seq, m.Subject, m.Data))
			}
		}
	}
	for name := range after {
		if _, present := before[name]; !present {
			out = append(out, name+": created")
		}
	}
	slices.Sort(out)
	return out
}

// auditBy accepts, in REKEY_AUDIT, only audit records rekeyd wrote about
// tenant (refusals are audited; anything else there is an injection).
func auditBy(tenant string) func(jetstream.RawStreamMsg) bool {
	return func(m jetstream.RawStreamMsg) bool {
		var rec schemas.AuditRecord
		_, err := schemas.DecodeAs(m.Data, schemas.TypeAuditRecord, &rec)
		return err == nil && m.Subject == schemas.AuditSubject(tenant)
	}
}

// scan reads every message of every stream (KV history included) and
// returns where any value the attacker saw appears, in data or headers.
func (r *rig) scan() []string {
	r.t.Helper()
	r.mu.Lock()
	seen := slices.Clone(r.seen)
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var found []string
	names := r.js.StreamNames(ctx)
	scanned := 0
	for name := range names.Name() {
		st, err := r.js.Stream(ctx, name)
		require.NoError(r.t, err)
		info, err := st.Info(ctx)
		require.NoError(r.t, err)
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := st.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			require.NoError(r.t, err)
			scanned++
			hdr, _ := json.Marshal(m.Header)
			for _, v := range seen {
				if v != "" && (bytes.Contains(m.Data, []byte(v)) || bytes.Contains(hdr, []byte(v))) {
					found = append(found, fmt.Sprintf("%s seq %d (%s)", name, seq, m.Subject))
				}
			}
		}
	}
	require.NoError(r.t, names.Err())
	require.NotZero(r.t, scanned, "the scan read nothing")
	r.t.Logf("scan: %d stored messages read, %d values looked for", scanned, len(seen))
	return found
}

// settle waits until whatever the server and rekeyd do with what was just
// sent is done: a round trip on the attacker's connection, then a pause
// for rekeyd's consumers.
func settle(t *testing.T, nc *nats.Conn) {
	t.Helper()
	_ = nc.FlushTimeout(5 * time.Second)
	time.Sleep(400 * time.Millisecond)
}

// revoked reads a tenant's revocation state from the admin API.
func (r *rig) revoked(tenant string) bool {
	r.t.Helper()
	status, body := r.call("GET", "/v1/tenants/"+tenant, adminToken, "")
	require.Equal(r.t, http.StatusOK, status, body)
	var st struct {
		Revoked *bool `json:"revoked"`
	}
	require.NoError(r.t, json.Unmarshal([]byte(body), &st))
	require.NotNil(r.t, st.Revoked, body)
	return *st.Revoked
}
