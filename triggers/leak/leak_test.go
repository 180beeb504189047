package leak_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/agentauth"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/leak"
)

const testConfig = `
tenants:
  acme:
    secrets:
      openai-key: {backend: local}
      db: {backend: local, policy: {on_leak: revoke}}
      decoy: {backend: local, policy: {canary: true}}
      decoy-soft: {backend: local, policy: {canary: true, on_canary: rotate_tenant}}
  globex:
    secrets:
      openai-key: {backend: local}
`

// env is a nats-server whose users have rekey's permissions: the admin
// (rekeyd, creating streams and running the trigger), each tenant's
// agents (orchestrator.AgentPermissions) and one agent instance with its
// own identity (agentauth.InstancePermissions).
type env struct {
	srv   *server.Server
	rekey *orchestrator.Config
	bus   *orchestrator.Bus
	state *orchestrator.State
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvAt(t, -1, t.TempDir())
}

func newEnvAt(t *testing.T, port int, dir string) *env {
	t.Helper()
	users := []*server.User{
		{Username: "admin", Password: "admin"},
		{Username: "agent-acme", Password: "acme", Permissions: orchestrator.AgentPermissions("acme")},
		{Username: "agent-globex", Password: "globex", Permissions: orchestrator.AgentPermissions("globex")},
		{Username: "agent-acme.i1", Password: "i1", Permissions: agentauth.InstancePermissions("acme", "i1")},
	}
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir,
		NoSigs: true, NoLog: true, Users: users})
	require.NoError(t, err)
	go srv.Start()
	require.True(t, srv.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })

	cfg, err := orchestrator.Parse([]byte(testConfig))
	require.NoError(t, err)
	e := &env{srv: srv, rekey: &cfg}
	e.bus = e.connect(t)
	ctx := context.Background()
	require.NoError(t, e.bus.EnsureStreams(ctx))
	require.NoError(t, e.bus.EnsureLeakStreams(ctx, cfg.TenantNames()))
	e.state, err = orchestrator.NewState(ctx, e.bus, time.Minute)
	require.NoError(t, err)
	for _, tn := range cfg.TenantNames() {
		for _, s := range cfg.TenantSecrets(tn) {
			_, err := e.state.UpdateSecretStatus(ctx, tn, s, func(st *orchestrator.SecretStatus) error {
				st.State, st.Version, st.PreviousVersion = orchestrator.SecretIdle, "2", "1"
				return nil
			})
			require.NoError(t, err)
		}
	}
	return e
}

func (e *env) connect(t *testing.T) *orchestrator.Bus {
	t.Helper()
	bus, err := orchestrator.Connect(context.Background(), e.srv.ClientURL(), "leak-test", orchestrator.NATSConfig{},
		slog.New(slog.DiscardHandler), nats.UserInfo("admin", "admin"))
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	return bus
}

func (e *env) trigger(t *testing.T) *leak.Trigger {
	t.Helper()
	cfg := leak.Defaults()
	cfg.AckWait = 2 * time.Second
	log := slog.New(slog.DiscardHandler)
	tr, err := leak.New(cfg, orchestrator.Deps{Rekey: e.rekey, Bus: e.bus, Audit: orchestrator.NewAuditor(e.bus, "test", log), Metrics: orchestrator.NewMetrics(), Log: log})
	require.NoError(t, err)
	return tr
}

// agentConn connects as user; errs receives the server's asynchronous
// errors (permission violations).
func (e *env) agentConn(t *testing.T, user, pass string) (*nats.Conn, <-chan error) {
	t.Helper()
	errs := make(chan error, 16)
	nc, err := nats.Connect(e.srv.ClientURL(), nats.UserInfo(user, pass),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc, errs
}

func report(tenant, secret, version, agentID string) schemas.LeakReport {
	return schemas.LeakReport{Tenant: tenant, Secret: secret, Version: version, Agent: agentID, Tool: "search",
		Run: "run-1", Where: "scan", Encoding: schemas.EncodingBase64, Count: 1, FoundAt: time.Now().UTC()}
}

// publish sends r on subject as an agent does (core NATS, no ack) and
// flushes.
func publish(t *testing.T, nc *nats.Conn, subject string, r schemas.LeakReport, evTenant string) {
	t.Helper()
	ev, err := schemas.NewEvent("rekey-agent/x", schemas.TypeLeakReport, evTenant, evTenant+"/"+r.Secret, r)
	require.NoError(t, err)
	b, err := ev.Encode()
	require.NoError(t, err)
	require.NoError(t, nc.Publish(subject, b))
	require.NoError(t, nc.Flush())
}

// snapshot is every stream's (KV buckets included) last sequence and
// message count, to show that nothing of any tenant changed.
func (e *env) snapshot(t *testing.T) map[string][2]uint64 {
	t.Helper()
	out := map[string][2]uint64{}
	names := e.bus.JS.StreamNames(context.Background())
	for n := range names.Name() {
		st, err := e.bus.JS.Stream(context.Background(), n)
		require.NoError(t, err)
		info, err := st.Info(context.Background())
		require.NoError(t, err)
		out[n] = [2]uint64{info.State.LastSeq, info.State.Msgs}
	}
	require.NoError(t, names.Err())
	return out
}

// requests returns the rotation and revocation requests stored.
func (e *env) requests(t *testing.T) (rotations, revocations []schemas.Event) {
	t.Helper()
	for _, m := range testutil.StreamMessages(t, e.bus.JS, schemas.StreamRotate) {
		ev, err := schemas.Decode(m.Data)
		require.NoError(t, err)
		rotations = append(rotations, ev)
	}
	for _, m := range testutil.StreamMessages(t, e.bus.JS, schemas.StreamRevoke) {
		ev, err := schemas.Decode(m.Data)
		require.NoError(t, err)
		revocations = append(revocations, ev)
	}
	return rotations, revocations
}

// waitDrained waits until the trigger has acked every report of tenant.
func (e *env) waitDrained(t *testing.T, tenant string) {
	t.Helper()
	require.Eventually(t, func() bool {
		cons, err := e.bus.JS.Consumer(context.Background(), schemas.LeakStream(tenant), leak.DurableFor(tenant))
		if err != nil {
			return false
		}
		info, err := cons.Info(context.Background())
		if err != nil {
			return false
		}
		st, err := e.bus.JS.Stream(context.Background(), schemas.LeakStream(tenant))
		if err != nil {
			return false
		}
		si, err := st.Info(context.Background())
		return err == nil && info.AckFloor.Stream == si.State.LastSeq && info.NumPending == 0 && info.NumAckPending == 0
	}, 10*time.Second, 20*time.Millisecond)
}

func (e *env) audits(t *testing.T, tenant string) []schemas.AuditRecord {
	t.Helper()
	var out []schemas.AuditRecord
	for _, m := range testutil.StreamMessages(t, e.bus.JS, schemas.StreamAudit) {
		ev, err := schemas.Decode(m.Data)
		require.NoError(t, err)
		var r schemas.AuditRecord
		require.NoError(t, ev.DecodeData(schemas.TypeAuditRecord, &r))
		if r.Tenant == tenant {
			out = append(out, r)
		}
	}
	return out
}

// TestAttackLeakReportForAnotherTenant: acme's agents (the tenant-wide
// user and an instance with its own identity) publishing a leak report on
// globex's subject are refused by the server; nothing of any tenant
// changes, and the trigger acts on nothing.
func TestAttackLeakReportForAnotherTenant(t *testing.T) {
	e := newEnv(t)
	stop := testutil.Run(t, e.trigger(t))
	time.Sleep(200 * time.Millisecond) // consumers created
	before := e.snapshot(t)
	for _, u := range [][2]string{{"agent-acme", "acme"}, {"agent-acme.i1", "i1"}} {
		nc, errs := e.agentConn(t, u[0], u[1])
		for _, subj := range []string{schemas.LeakSubject("globex", "openai-key"), "rekey.leak.globex.openai-key.x", "rekey.leak.*.*"} {
			publish(t, nc, subj, report("globex", "openai-key", "2", "evil"), "globex")
			select {
			case err := <-errs:
				require.ErrorIs(t, err, nats.ErrPermissionViolation, "%s on %s", u[0], subj)
			case <-time.After(5 * time.Second):
				t.Fatalf("%s publishing on %s was not refused", u[0], subj)
			}
		}
	}
	time.Sleep(300 * time.Millisecond)
	stop()
	require.Equal(t, before, e.snapshot(t), "no stream or bucket changed")
}

// TestAttackLeakReportNamingAnotherTenant: a report on acme's own subject
// whose body names globex (or another acme secret, or whose envelope
// names globex) is dropped by the trigger: no request, no decision, only
// a leak.refused audit record of acme.
func TestAttackLeakReportNamingAnotherTenant(t *testing.T) {
	e := newEnv(t)
	nc, _ := e.agentConn(t, "agent-acme", "acme")
	stop := testutil.Run(t, e.trigger(t))
	before := e.snapshot(t)
	subj := schemas.LeakSubject("acme", "openai-key")
	publish(t, nc, subj, report("globex", "openai-key", "2", "evil"), "acme")   // body: globex
	publish(t, nc, subj, report("acme", "db", "2", "evil"), "acme")             // body: another secret
	publish(t, nc, subj, report("acme", "openai-key", "2", "evil"), "globex")   // envelope: globex
	publish(t, nc, subj, report("globex", "openai-key", "2", "evil"), "globex") // both
	e.waitDrained(t, "acme")
	stop()
	rot, rev := e.requests(t)
	require.Empty(t, rot)
	require.Empty(t, rev)
	for _, tn := range []string{"acme", "globex"} {
		for _, s := range []string{"openai-key", "db"} {
			_, found, err := leak.ReadDecision(context.Background(), e.bus, tn, s, "2")
			require.NoError(t, err)
			require.False(t, found, "%s/%s", tn, s)
		}
	}
	after := e.snapshot(t)
	for name, v := range before {
		switch name {
		case schemas.LeakStream("acme"), schemas.StreamAudit:
			continue // the reports themselves, and the refusal's audit record
		}
		require.Equal(t, v, after[name], name)
	}
	require.Empty(t, e.audits(t, "globex"))
	var refused int
	for _, a := range e.audits(t, "acme") {
		require.Equal(t, "leak.refused", a.Action)
		refused++
	}
	require.Positive(t, refused)
}

// TestAttackStaleOrMadeUpVersion: reports of versions that are neither
// current nor previous force no rotation (a canary excepted: below).
func TestAttackStaleOrMadeUpVersion(t *testing.T) {
	e := newEnv(t)
	nc, _ := e.agentConn(t, "agent-acme", "acme")
	stop := testutil.Run(t, e.trigger(t))
	for i := range 20 {
		publish(t, nc, schemas.LeakSubject("acme", "openai-key"), report("acme", "openai-key", fmt.Sprint(100+i), "evil"), "acme")
	}
	e.waitDrained(t, "acme")
	stop()
	rot, rev := e.requests(t)
	require.Empty(t, rot)
	require.Empty(t, rev)
}

// TestLeakRotatesOnce: many agents reporting the same version, some
// twice, make one rotation request, whose id is the version's RequestID;
// the audit record carries the same id and names the agent, never a value.
func TestLeakRotatesOnce(t *testing.T) {
	e := newEnv(t)
	nc, _ := e.agentConn(t, "agent-acme", "acme")
	stop := testutil.Run(t, e.trigger(t))
	for i := range 10 {
		for range 2 {
			publish(t, nc, schemas.LeakSubject("acme", "openai-key"), report("acme", "openai-key", "2", fmt.Sprintf("agent-%d", i)), "acme")
		}
	}
	// The previous version counts too, once.
	publish(t, nc, schemas.LeakSubject("acme", "openai-key"), report("acme", "openai-key", "1", "agent-0"), "acme")
	e.waitDrained(t, "acme")
	// A second trigger (a replica, or rekeyd restarted) does not act again.
	stop()
	nc2, _ := e.agentConn(t, "agent-acme", "acme")
	publish(t, nc2, schemas.LeakSubject("acme", "openai-key"), report("acme", "openai-key", "2", "late"), "acme")
	stop = testutil.Run(t, e.trigger(t))
	e.waitDrained(t, "acme")
	stop()

	rot, rev := e.requests(t)
	require.Empty(t, rev)
	ids := []string{}
	for _, ev := range rot {
		ids = append(ids, ev.ID)
		var r schemas.RotationRequested
		require.NoError(t, ev.DecodeData(schemas.TypeRotationRequested, &r))
		require.Equal(t, schemas.TriggerLeak, r.Trigger.Kind)
		require.Equal(t, "openai-key", r.Secret)
	}
	slices.Sort(ids)
	require.Equal(t, []string{leak.RequestID("acme", "openai-key", "1"), leak.RequestID("acme", "openai-key", "2")}, ids)
	d, found, err := leak.ReadDecision(context.Background(), e.bus, "acme", "openai-key", "2")
	require.NoError(t, err)
	require.True(t, found)
	require.True(t, d.Published)
	require.Equal(t, orchestrator.LeakRotate, d.Action)
	var detected []schemas.AuditRecord
	for _, a := range e.audits(t, "acme") {
		if a.Action == "leak.detected" {
			detected = append(detected, a)
		}
	}
	require.Len(t, detected, 2)
	for _, a := range detected {
		require.Contains(t, ids, a.RequestID)
		require.Equal(t, "search", a.Detail["tool"])
		require.Equal(t, "run-1", a.Detail["run"])
	}
}

// TestLeakPolicies: on_leak revoke revokes the tenant; a canary revokes
// the tenant even for a version no longer live; on_canary rotate_tenant
// rotates every secret of the tenant; globex is untouched.
func TestLeakPolicies(t *testing.T) {
	e := newEnv(t)
	nc, _ := e.agentConn(t, "agent-acme", "acme")
	stop := testutil.Run(t, e.trigger(t))
	publish(t, nc, schemas.LeakSubject("acme", "db"), report("acme", "db", "2", "a1"), "acme")
	publish(t, nc, schemas.LeakSubject("acme", "decoy"), report("acme", "decoy", "old-7", "a1"), "acme")
	publish(t, nc, schemas.LeakSubject("acme", "decoy-soft"), report("acme", "decoy-soft", "2", "a1"), "acme")
	e.waitDrained(t, "acme")
	stop()
	rot, rev := e.requests(t)
	var revIDs []string
	for _, ev := range rev {
		var r schemas.RevocationRequested
		require.NoError(t, ev.DecodeData(schemas.TypeRevocationRequested, &r))
		require.Equal(t, "acme", r.Tenant)
		require.Equal(t, schemas.ActionRevoke, r.Action)
		revIDs = append(revIDs, ev.ID)
	}
	slices.Sort(revIDs)
	require.Equal(t, []string{leak.RequestID("acme", "db", "2"), leak.RequestID("acme", "decoy", "old-7")}, revIDs)
	var rotated []string
	for _, ev := range rot {
		require.Equal(t, "acme", ev.Tenant)
		var r schemas.RotationRequested
		require.NoError(t, ev.DecodeData(schemas.TypeRotationRequested, &r))
		rotated = append(rotated, r.Secret)
	}
	slices.Sort(rotated)
	require.Equal(t, e.rekey.TenantSecrets("acme"), rotated)
}

// TestLeakReportsWaitForTheTrigger: reports published while no trigger
// runs (rekeyd restarting) are acted on when it starts, also after the
// NATS server itself restarted.
func TestLeakReportsWaitForTheTrigger(t *testing.T) {
	dir := t.TempDir()
	port, err := testutil.FreePort()
	require.NoError(t, err)
	e := newEnvAt(t, port, dir)
	stop := testutil.Run(t, e.trigger(t))
	stop() // the consumer exists; the trigger is gone
	nc, _ := e.agentConn(t, "agent-acme", "acme")
	publish(t, nc, schemas.LeakSubject("acme", "openai-key"), report("acme", "openai-key", "2", "a1"), "acme")
	e.bus.Close()
	nc.Close()
	e.srv.Shutdown()
	e.srv.WaitForShutdown()

	e2 := newEnvAt(t, port, dir)
	stop = testutil.Run(t, e2.trigger(t))
	e2.waitDrained(t, "acme")
	stop()
	rot, _ := e2.requests(t)
	require.Len(t, rot, 1)
	require.Equal(t, leak.RequestID("acme", "openai-key", "2"), rot[0].ID)
}

func TestParseConfig(t *testing.T) {
	cfg, err := leak.ParseConfig([]byte("ack_wait: 5s\n"))
	require.NoError(t, err)
	require.Equal(t, 5*time.Second, cfg.AckWait)
	require.True(t, cfg.Enabled)
	_, err = leak.ParseConfig([]byte("retention: 1m\n"))
	require.ErrorContains(t, err, "triggers.leak.retention")
	_, err = orchestrator.Parse([]byte("tenants: {acme: {secrets: {k: {backend: local, policy: {on_leak: ignore}}}}}"))
	require.ErrorContains(t, err, "policy.on_leak")
	_, err = orchestrator.Parse([]byte("tenants: {acme: {secrets: {k: {backend: local, policy: {on_canary: revoke}}}}}"))
	require.ErrorContains(t, err, "policy.on_canary")
}
