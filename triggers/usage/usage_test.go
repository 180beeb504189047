package usage_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/triggertest"
	"github.com/rekey-dev/rekey/triggers/usage"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       usage.Config
		field      string // expected in the error; "" for success
	}{
		{name: "empty section", yaml: "", want: usage.Defaults()},
		{name: "null section", yaml: "~", want: usage.Defaults()},
		{name: "all fields", yaml: "enabled: false\nconcurrency: 2\nack_wait: 5s\nretention: 0s\nmax_uses_per_instance_per_minute: 600\nmax_instances_per_tenant: 5\n",
			want: usage.Config{Enabled: false, Concurrency: 2, AckWait: 5 * time.Second, MaxUsesPerInstancePerMinute: 600, MaxInstancesPerTenant: 5}},
		{name: "instance rate", yaml: "max_uses_per_instance_per_minute: 0\n", field: "triggers.usage.max_uses_per_instance_per_minute"},
		{name: "instances", yaml: "max_instances_per_tenant: -1\n", field: "triggers.usage.max_instances_per_tenant"},
		{name: "concurrency", yaml: "concurrency: 0\n", field: "triggers.usage.concurrency"},
		{name: "ack wait", yaml: "ack_wait: 10ms\n", field: "triggers.usage.ack_wait"},
		{name: "retention", yaml: "retention: 1m\n", field: "triggers.usage.retention"},
		{name: "bad duration", yaml: "retention: forever\n", field: "triggers.usage.retention"},
		{name: "unknown field", yaml: "max_uses: 3\n", field: `unknown field "max_uses"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := usage.ParseConfig([]byte(tc.yaml))
			if tc.field != "" {
				require.Error(t, err)
				require.Contains(t, err.Error(), tc.field)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, cfg)
		})
	}
	require.True(t, usage.Defaults().Enabled)
}

// uses is the test's traffic: 9,001 uses of acme/openai-key (max_uses
// 1000) across three agents, of version 2 (current: it passes the limit)
// and version 1 (previous: counted, but no rotation of the version that
// replaced it). newEnv records the two in the secret's status.
var uses = map[string]int64{"1": 5000, "2": 4001}

// TestOneRotationPerVersionOverLimit: exactly one request per version that
// reached max_uses; reports that are malformed, unknown, without a policy
// or whose subject and payload disagree are acked and not counted (an
// unknown tenant has no stream: its reports are not even stored).
func TestOneRotationPerVersionOverLimit(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	stop := run(t, env.trigger(t, env.connect(t)))

	reports := split(uses, 3)
	env.publish(t, reports)
	// Noise.
	env.publish(t, []schemas.UsageReport{
		{Tenant: "acme", Secret: "db", Version: "1", Agent: "a", Count: 50000},   // no max_uses
		{Tenant: "acme", Secret: "gone", Version: "1", Agent: "a", Count: 50000}, // unknown secret
	})
	env.publishRaw(t, "rekey.used.acme.openai-key.a", []byte(`{"specversion":"1.0","id":"x"`))
	env.publishRaw(t, "rekey.used.acme.openai-key.a", event(t, schemas.UsageReport{Tenant: "acme", Secret: "openai-key", Version: "", Agent: "a", Count: 5000}))
	env.publishRaw(t, "rekey.used.acme.db.a", event(t, schemas.UsageReport{Tenant: "acme", Secret: "openai-key", Version: "3", Agent: "a", Count: 5000})) // refused

	env.waitCounted(t, uses)
	stop()

	reqs := env.requests(t)
	require.Len(t, reqs, 1, "version 2, not 1 (superseded)")
	for i, v := range []string{"2"} {
		cnt, err := usage.ReadCount(context.Background(), env.bus, "acme", "openai-key", v)
		require.NoError(t, err)
		require.NotNil(t, cnt.Rotation)
		require.True(t, cnt.Rotation.Published)
		require.GreaterOrEqual(t, cnt.Rotation.Uses, int64(1000))

		r := reqs[i]
		require.Equal(t, usage.RequestID("acme", "openai-key", v), r.ev.ID)
		require.Equal(t, "usage.acme.openai-key."+v, r.ev.ID)
		require.Equal(t, schemas.Trigger{Kind: schemas.TriggerUsage, Source: "usage", Actor: fmt.Sprintf("%s:%d", v, cnt.Rotation.Uses)}, r.req.Trigger)
		require.Equal(t, fmt.Sprintf("version %s used %d times (max_uses 1000)", v, cnt.Rotation.Uses), r.req.Reason)
	}
	cnt, err := usage.ReadCount(context.Background(), env.bus, "acme", "db", "1")
	require.NoError(t, err)
	require.Zero(t, cnt.Uses, "secret without max_uses is not counted")

	var audits []schemas.AuditRecord
	usedCount := map[string]int64{}
	for _, a := range env.audits(t) {
		if a.Action != "secret.used" {
			audits = append(audits, a)
			continue
		}
		// Each report naming its tool is in the audit trail once, with
		// the agent instance, the tool and the window.
		require.Equal(t, "planner", a.Detail["tool"])
		require.Equal(t, "agent:"+a.Detail["agent"], a.Actor)
		require.NotEmpty(t, a.Detail["window_end"])
		n, err := strconv.ParseInt(a.Detail["count"], 10, 64)
		require.NoError(t, err)
		usedCount[a.Detail["version"]] += n
	}
	require.Equal(t, uses, usedCount)
	slices.SortFunc(audits, func(a, b schemas.AuditRecord) int { return strings.Compare(a.Action, b.Action) })
	require.Len(t, audits, 2)
	require.Equal(t, schemas.OutcomeAccepted, audits[0].Outcome)
	require.Equal(t, "rotation.request", audits[0].Action)
	require.Equal(t, "1000", audits[0].Detail["max_uses"])
	// The report whose subject named another secret, tallied.
	require.Equal(t, "usage.refused", audits[1].Action)
	require.Equal(t, map[string]string{"subject_mismatch": "1"}, audits[1].Detail)
}

// TestCountsSurviveRestarts: the counter is stopped while reports flow, a
// new one carries on, NATS itself restarts; no use is lost or counted
// twice, and each version is still requested once.
func TestCountsSurviveRestarts(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	dir, port := env.Dir, env.Server.Addr().(*net.TCPAddr).Port

	reports := split(uses, 3)
	third := len(reports) / 3

	// First counter: the first third, then stop.
	stop := run(t, env.trigger(t, env.connect(t)))
	env.publish(t, reports[:third])
	env.waitCounted(t, sum(reports[:third]))
	stop()

	// NATS restarts on the same files.
	env.Server.Shutdown()
	env.Server.WaitForShutdown()
	env = newEnvWith(t, triggertest.Options{Name: "usage-test", Dir: dir, Port: port})

	// Second counter, stopped while the second third is being published.
	stop = run(t, env.trigger(t, env.connect(t)))
	var wg sync.WaitGroup
	var pubErr error
	wg.Go(func() { pubErr = env.send(reports[third : 2*third]) })
	time.Sleep(50 * time.Millisecond)
	stop()
	wg.Wait()
	require.NoError(t, pubErr)

	// Third counter: the rest.
	stop = run(t, env.trigger(t, env.connect(t)))
	env.publish(t, reports[2*third:])
	env.waitCounted(t, uses)
	stop()

	require.Len(t, env.requests(t), 1)
}

// TestReportsHeldByALostReplicaAreCounted: reports a replica took from the
// shared consumer and never acked (it died) are counted by another after
// the ack wait, once.
func TestReportsHeldByALostReplicaAreCounted(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	ctx := context.Background()
	stop := run(t, env.trigger(t, env.connect(t))) // creates the durable
	require.Eventually(t, func() bool {
		_, err := env.bus.JS.Consumer(ctx, schemas.UsageStream("acme"), usage.DurableFor("acme"))
		return err == nil
	}, 30*time.Second, 50*time.Millisecond)
	stop()

	reports := split(uses, 3)
	env.publish(t, reports)
	cons, err := env.connect(t).JS.Consumer(ctx, schemas.UsageStream("acme"), usage.DurableFor("acme"))
	require.NoError(t, err)
	batch, err := cons.Fetch(40, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	held := 0
	for range batch.Messages() {
		held++ // and never acked
	}
	require.Equal(t, 40, held)

	stop = run(t, env.trigger(t, env.connect(t)))
	env.waitCounted(t, uses)
	stop()
	require.Len(t, env.requests(t), 1)
}

// TestTwoCountersAtOnce: two replicas share the durable consumer; each
// report is counted once and each version requested once.
func TestTwoCountersAtOnce(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	stopA := run(t, env.trigger(t, env.connect(t)))
	stopB := run(t, env.trigger(t, env.connect(t)))

	reports := split(uses, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for agent := range 3 { // each agent publishes its own reports
		wg.Go(func() {
			var mine []schemas.UsageReport
			for _, r := range reports {
				if r.Agent == fmt.Sprintf("acme-agent-%d", agent) {
					mine = append(mine, r)
				}
			}
			errs[agent] = env.send(mine)
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	env.waitCounted(t, uses)
	stopA()
	stopB()

	reqs := env.requests(t)
	require.Len(t, reqs, 1)
	require.Equal(t, usage.RequestID("acme", "openai-key", "2"), reqs[0].ev.ID)
}

// TestNeverRequestedTwice: a version over its limit is not requested again
// by later reports, even after the duplicate window has passed.
func TestNeverRequestedTwice(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{DuplicateWindow: time.Second})
	stop := run(t, env.trigger(t, env.connect(t)))
	env.publish(t, split(map[string]int64{"2": 1500}, 2))
	env.waitCounted(t, map[string]int64{"2": 1500})
	require.Len(t, env.requests(t), 1)

	time.Sleep(1500 * time.Millisecond) // past the duplicate window
	env.publish(t, split(map[string]int64{"2": 2500}, 2))
	env.waitCounted(t, map[string]int64{"2": 4000})
	stop()
	require.Len(t, env.requests(t), 1)
}

// TestOldVersionDoesNotRotateTheNewOne: a version that is no longer the
// current one (per the secret's status) does not cause a rotation.
func TestOldVersionDoesNotRotateTheNewOne(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	env.setVersions(t, "5", "4")

	stop := run(t, env.trigger(t, env.connect(t)))
	env.publish(t, split(map[string]int64{"4": 1200}, 2))
	env.waitCounted(t, map[string]int64{"4": 1200})
	require.Empty(t, env.requests(t))

	env.publish(t, split(map[string]int64{"5": 1200}, 2))
	env.waitCounted(t, map[string]int64{"4": 1200, "5": 1200})
	stop()
	reqs := env.requests(t)
	require.Len(t, reqs, 1)
	require.Equal(t, usage.RequestID("acme", "openai-key", "5"), reqs[0].ev.ID)
}

// TestRequestRetriedUntilPublished: when the request cannot be published
// (here the ROTATE stream is missing), the report that reached the limit
// is not acked; its redelivery publishes the request once NATS takes it.
func TestRequestRetriedUntilPublished(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	ctx := context.Background()
	require.NoError(t, env.bus.JS.DeleteStream(ctx, schemas.StreamRotate))
	stop := run(t, env.trigger(t, env.connect(t)))

	env.publish(t, split(map[string]int64{"2": 1500}, 2))
	require.Eventually(t, func() bool {
		c, err := usage.ReadCount(ctx, env.bus, "acme", "openai-key", "2")
		return err == nil && c.Uses == 1500 && c.Rotation != nil && !c.Rotation.Published
	}, 30*time.Second, 50*time.Millisecond, "counted and decided, not yet published")
	time.Sleep(time.Second) // a retry or two fail

	require.NoError(t, env.bus.EnsureStreams(ctx))
	env.waitCounted(t, map[string]int64{"2": 1500})
	stop()
	reqs := env.requests(t)
	require.Len(t, reqs, 1)
	require.Equal(t, usage.RequestID("acme", "openai-key", "2"), reqs[0].ev.ID)
	c, err := usage.ReadCount(ctx, env.bus, "acme", "openai-key", "2")
	require.NoError(t, err)
	require.True(t, c.Rotation.Published)
}

func TestDisabledOrNoPolicyReturns(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	log := slog.New(slog.DiscardHandler)
	cfg := usage.Defaults()
	cfg.Enabled = false
	tr, err := usage.New(cfg, orchestrator.Deps{Rekey: env.rekey, Bus: env.bus, Audit: orchestrator.NewAuditor(env.bus, "test", log), Log: log})
	require.NoError(t, err)
	require.NoError(t, tr.Run(context.Background()))

	_, err = usage.New(usage.Config{}, orchestrator.Deps{Rekey: env.rekey, Bus: env.bus, Audit: orchestrator.NewAuditor(env.bus, "test", log), Log: log})
	require.ErrorContains(t, err, "concurrency")
}

func TestRequestIDAndKey(t *testing.T) {
	require.Equal(t, "acme.openai-key.7", usage.Key("acme", "openai-key", "7"))
	require.Equal(t, "usage.acme.openai-key.7", usage.RequestID("acme", "openai-key", "7"))
	require.NotEqual(t, usage.RequestID("a-b", "c", "1"), usage.RequestID("a", "b-c", "1"))
	// A version that is not a safe token is hashed.
	k := usage.Key("acme", "db", "database/creds/role.1")
	require.True(t, strings.HasPrefix(k, "acme.db.="), k)
	require.NotContains(t, k, "/")
	require.NotEqual(t, k, usage.Key("acme", "db", "database/creds/role.2"))
}

// --- helpers ---

type env struct {
	*triggertest.Env
	state *orchestrator.State
	bus   *orchestrator.Bus
	rekey *orchestrator.Config
}

func newEnv(t *testing.T, nc orchestrator.NATSConfig) *env {
	t.Helper()
	return newEnvWith(t, triggertest.Options{Name: "usage-test", NATS: nc})
}

// newEnvWith starts the environment with o (o.Dir and o.Port: a restart).
func newEnvWith(t *testing.T, o triggertest.Options) *env {
	t.Helper()
	rekey, err := orchestrator.Parse([]byte(`
tenants:
  acme:
    secrets:
      openai-key: {backend: local, policy: {max_uses: 1000}}
      db: {backend: local}
`))
	require.NoError(t, err)
	te := triggertest.Start(t, o)
	e := &env{Env: te, bus: te.Bus, rekey: &rekey}
	require.NoError(t, e.bus.EnsureUsageStreams(context.Background(), rekey.TenantNames()))
	// The state buckets are the workers'; the counter only opens them.
	state, err := orchestrator.NewState(context.Background(), e.bus, time.Minute)
	require.NoError(t, err)
	e.state = state
	e.setVersions(t, "2", "1")
	return e
}

// setVersions records acme/openai-key's current and previous versions in
// its status, as the rotation worker does.
func (e *env) setVersions(t *testing.T, current, previous string) {
	t.Helper()
	_, err := e.state.UpdateSecretStatus(context.Background(), "acme", "openai-key", func(st *orchestrator.SecretStatus) error {
		if st.State == "" {
			st.State = orchestrator.SecretIdle
		}
		st.Version, st.PreviousVersion = current, previous
		return nil
	})
	require.NoError(t, err)
}

func (e *env) connect(t *testing.T) *orchestrator.Bus {
	t.Helper()
	return e.Connect()
}

// trigger returns a counter on bus (its own connection, as a replica),
// with a short ack wait so that reports held by a stopped one come back
// quickly.
func (e *env) trigger(t *testing.T, bus *orchestrator.Bus, tune ...func(*usage.Config)) *usage.Trigger {
	t.Helper()
	cfg := usage.Defaults()
	cfg.AckWait = 2 * time.Second
	for _, f := range tune {
		f(&cfg)
	}
	log := slog.New(slog.DiscardHandler)
	tr, err := usage.New(cfg, orchestrator.Deps{Rekey: e.rekey, Bus: bus, Audit: orchestrator.NewAuditor(bus, "test", log), Metrics: orchestrator.NewMetrics(), Log: log})
	require.NoError(t, err)
	return tr
}

// run starts tr and returns a func that stops it and checks it returned nil.
func run(t *testing.T, tr *usage.Trigger) func() {
	t.Helper()
	return testutil.Run(t, tr)
}

// split cuts the uses of each version of acme/openai-key into reports of
// 1 to 60 uses from three agents, interleaved, as agents batch them.
func split(uses map[string]int64, agents int) []schemas.UsageReport {
	rng := rand.New(rand.NewPCG(1, 2))
	left := map[string]int64{}
	var versions []string
	for v, n := range uses {
		left[v] = n
		versions = append(versions, v)
	}
	var out []schemas.UsageReport
	now := time.Now().UTC()
	for len(versions) > 0 {
		i := rng.IntN(len(versions))
		v := versions[i]
		n := min(left[v], 1+rng.Int64N(60))
		left[v] -= n
		if left[v] == 0 {
			versions = append(versions[:i], versions[i+1:]...)
		}
		out = append(out, schemas.UsageReport{
			Tenant: "acme", Secret: "openai-key", Version: v, Agent: fmt.Sprintf("acme-agent-%d", rng.IntN(agents)),
			Tool: "planner", Count: n, WindowStart: now.Add(-5 * time.Second), WindowEnd: now,
		})
	}
	return out
}

func sum(reports []schemas.UsageReport) map[string]int64 {
	out := map[string]int64{}
	for _, r := range reports {
		out[r.Version] += r.Count
	}
	return out
}

func event(t *testing.T, r schemas.UsageReport) []byte {
	t.Helper()
	ev, err := schemas.NewEvent("agent/"+r.Agent, schemas.TypeUsageReport, r.Tenant, r.Tenant+"/"+r.Secret, r)
	require.NoError(t, err)
	b, err := ev.Encode()
	require.NoError(t, err)
	return b
}

// publish sends reports as the agent does: one event each, its id as the
// Nats-Msg-Id, on the subject of the report's own tenant and secret.
func (e *env) publish(t *testing.T, reports []schemas.UsageReport) {
	t.Helper()
	require.NoError(t, e.send(reports))
}

// send is publish for goroutines other than the test's.
func (e *env) send(reports []schemas.UsageReport) error {
	for _, r := range reports {
		ev, err := schemas.NewEvent("agent/"+r.Agent, schemas.TypeUsageReport, r.Tenant, r.Tenant+"/"+r.Secret, r)
		if err != nil {
			return err
		}
		b, err := ev.Encode()
		if err != nil {
			return err
		}
		// REKEY_USAGE sends no publish acks (agents name reply subjects):
		// a core publish, as agents do.
		m := &nats.Msg{Subject: schemas.UsedSubject(r.Tenant, r.Secret, r.Agent), Header: nats.Header{}, Data: b}
		m.Header.Set(nats.MsgIdHdr, ev.ID)
		if err := e.bus.NC.PublishMsg(m); err != nil {
			return err
		}
	}
	return e.bus.NC.Flush()
}

func (e *env) publishRaw(t *testing.T, subject string, data []byte) {
	t.Helper()
	require.NoError(t, e.bus.NC.Publish(subject, data))
	require.NoError(t, e.bus.NC.Flush())
}

// waitCounted waits until acme/openai-key's counts are want and the
// consumer has nothing pending or unacked.
func (e *env) waitCounted(t *testing.T, want map[string]int64) {
	t.Helper()
	ctx := context.Background()
	var last string
	ok := assertEventually(60*time.Second, func() bool {
		got := map[string]int64{}
		for v := range want {
			c, err := usage.ReadCount(ctx, e.bus, "acme", "openai-key", v)
			if err != nil {
				last = err.Error()
				return false
			}
			got[v] = c.Uses
		}
		cons, err := e.bus.JS.Consumer(ctx, schemas.UsageStream("acme"), usage.DurableFor("acme"))
		if err != nil {
			last = err.Error()
			return false
		}
		info, err := cons.Info(ctx)
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("counts %v, pending %d, unacked %d", got, info.NumPending, info.NumAckPending)
		for v, n := range want {
			if got[v] != n {
				return false
			}
		}
		return info.NumPending == 0 && info.NumAckPending == 0
	})
	require.True(t, ok, "want counts %v; last: %s", want, last)
}

func assertEventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type stored struct {
	ev  schemas.Event
	req schemas.RotationRequested
}

// requests returns the rotation requests stored in the ROTATE stream.
func (e *env) requests(t *testing.T) []stored {
	t.Helper()
	var out []stored
	for _, ev := range e.Events(schemas.StreamRotate, "") {
		req := triggertest.Data[schemas.RotationRequested](t, []schemas.Event{ev}, schemas.TypeRotationRequested)[0]
		out = append(out, stored{ev, req})
	}
	slices.SortFunc(out, func(a, b stored) int { return strings.Compare(a.ev.ID, b.ev.ID) })
	return out
}

func (e *env) audits(t *testing.T) []schemas.AuditRecord {
	t.Helper()
	return e.Audits("")
}

func (e *env) messages(t *testing.T, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	return e.Messages(stream, "")
}

// TestUsageStreamsPerTenant: the stream all tenants shared before is
// replaced by one per tenant, with a storage limit; reports land in their
// tenant's stream and are counted from there.
func TestUsageStreamsPerTenant(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	ctx := context.Background()
	require.NoError(t, env.bus.JS.DeleteStream(ctx, schemas.UsageStream("acme")))
	_, err := env.bus.JS.CreateStream(ctx, jetstream.StreamConfig{Name: schemas.StreamUsage, Subjects: []string{schemas.SubjectUsedAll}})
	require.NoError(t, err)
	require.NoError(t, env.bus.EnsureUsageStreams(ctx, []string{"acme", "globex"}))
	_, err = env.bus.JS.Stream(ctx, schemas.StreamUsage)
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
	for _, tn := range []string{"acme", "globex"} {
		st, err := env.bus.JS.Stream(ctx, schemas.UsageStream(tn))
		require.NoError(t, err)
		cfg := st.CachedInfo().Config
		require.Equal(t, []string{"rekey.used." + tn + ".*.*"}, cfg.Subjects)
		require.True(t, cfg.NoAck, "agents name reply subjects: no publish acks")
		require.Equal(t, int64(orchestrator.UsageStreamMaxBytes), cfg.MaxBytes)
		require.Equal(t, jetstream.DiscardOld, cfg.Discard)
	}
	stop := run(t, env.trigger(t, env.connect(t)))
	env.publish(t, split(map[string]int64{"2": 7}, 1))
	env.waitCounted(t, map[string]int64{"2": 7})
	stop()
	require.NotEmpty(t, env.messages(t, schemas.UsageStream("acme")))
	require.Empty(t, env.messages(t, schemas.UsageStream("globex")))
}
