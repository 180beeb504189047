package cron_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/cron"
	"github.com/rekey-dev/rekey/triggers/triggertest"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       cron.Config
		field      string // expected in the error; "" for success
	}{
		{name: "empty section", yaml: "", want: cron.Config{Enabled: true, CatchUp: true}},
		{name: "null section", yaml: "null", want: cron.Config{Enabled: true, CatchUp: true}},
		{name: "all fields", yaml: "enabled: false\ncatch_up: false\nmax_catch_up_age: 6h\n",
			want: cron.Config{Enabled: false, CatchUp: false, MaxCatchUpAge: 6 * time.Hour}},
		{name: "negative age", yaml: "max_catch_up_age: -1s\n", field: "triggers.cron.max_catch_up_age"},
		{name: "bad duration", yaml: "max_catch_up_age: soon\n", field: "triggers.cron.max_catch_up_age"},
		{name: "unknown field", yaml: "catchup: true\n", field: `unknown field "catchup"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := cron.ParseConfig([]byte(tc.yaml))
			if tc.field != "" {
				require.Error(t, err)
				require.Contains(t, err.Error(), tc.field)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, cfg)
		})
	}
}

// TestInvalidScheduleNamesTheField: a bad schedule is refused by New and by
// ValidateSchedules, naming tenants.<t>.secrets.<s>.policy.schedule.
func TestInvalidScheduleNamesTheField(t *testing.T) {
	for _, tc := range []struct{ name, schedule string }{
		{"six fields", "0 0 3 * * *"},
		{"out of range", "61 * * * *"},
		{"bad every", "@every soon"},
		{"unknown descriptor", "@fortnightly"},
		{"tz prefix", "CRON_TZ=Europe/Berlin 0 3 * * *"},
		{"never fires", "0 0 30 2 *"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rekey := rekeyConfig(t, map[string]string{"db": fmt.Sprintf("schedule: %q", tc.schedule), "ok": "schedule: '@daily'"})
			err := cron.ValidateSchedules(rekey)
			require.Error(t, err)
			var fe *orchestrator.FieldError
			require.True(t, errors.As(err, &fe), "%v", err)
			require.Equal(t, "tenants.acme.secrets.db.policy.schedule", fe.Field)
			require.NotContains(t, err.Error(), "secrets.ok")

			_, err = cron.New(cron.Defaults(), orchestrator.Deps{Rekey: rekey, Bus: &orchestrator.Bus{}, Audit: &orchestrator.Auditor{}})
			require.ErrorContains(t, err, "tenants.acme.secrets.db.policy.schedule")
		})
	}
}

// TestNextHonoursTimeZone: cron expressions are evaluated in
// policy.timezone (UTC by default), across daylight saving changes;
// @every ticks are aligned to the Unix epoch.
func TestNextHonoursTimeZone(t *testing.T) {
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		require.NoError(t, err)
		return v
	}
	for _, tc := range []struct {
		name, spec, tz, after, want string
	}{
		{"daily Berlin winter", "0 3 * * *", "Europe/Berlin", "2026-01-15T12:00:00Z", "2026-01-16T02:00:00Z"},
		{"daily Berlin summer", "0 3 * * *", "Europe/Berlin", "2026-07-15T12:00:00Z", "2026-07-16T01:00:00Z"},
		{"daily Berlin on DST start", "0 3 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z"},
		{"@daily New York", "@daily", "America/New_York", "2026-07-01T12:00:00Z", "2026-07-02T04:00:00Z"},
		{"@daily Tokyo same UTC day", "@daily", "Asia/Tokyo", "2026-07-01T12:00:00Z", "2026-07-01T15:00:00Z"},
		{"@daily default UTC", "@daily", "", "2026-07-01T12:00:00Z", "2026-07-02T00:00:00Z"},
		{"weekly Sunday Berlin", "0 3 * * 0", "Europe/Berlin", "2026-01-14T12:00:00Z", "2026-01-18T02:00:00Z"},
		{"@every 1h on the hour", "@every 1h", "Asia/Kolkata", "2026-01-15T10:20:30Z", "2026-01-15T11:00:00Z"},
		{"@every 1s", "@every 1s", "", "2026-01-15T10:20:30.5Z", "2026-01-15T10:20:31Z"},
		{"@every 90m since epoch", "@every 90m", "", "2026-01-15T00:10:00Z", "2026-01-15T01:30:00Z"},
		{"strictly after", "0 3 * * *", "", "2026-01-15T03:00:00Z", "2026-01-16T03:00:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := cron.ParseSchedule(tc.spec, tc.tz)
			require.NoError(t, err)
			next := s.Next(utc(tc.after))
			require.True(t, utc(tc.want).Equal(next), "next %s, want %s", next.UTC().Format(time.RFC3339Nano), tc.want)
			if tc.tz != "" {
				require.Equal(t, tc.tz, next.Location().String())
			}
		})
	}
	_, err := cron.ParseSchedule("@daily", "Mars/Base")
	require.ErrorContains(t, err, "Mars/Base")
}

// TestJitterIsDeterministic: every replica derives the same jitter for a
// (secret, tick), within [0, max), and it varies between ticks and secrets.
func TestJitterIsDeterministic(t *testing.T) {
	tick := time.Date(2026, 1, 15, 3, 0, 0, 0, time.UTC)
	j := cron.Jitter("acme", "db", tick, 10*time.Minute)
	require.Equal(t, j, cron.Jitter("acme", "db", tick.In(time.FixedZone("x", 3600)), 10*time.Minute), "zone does not matter")
	require.Zero(t, cron.Jitter("acme", "db", tick, 0))

	seen := map[time.Duration]bool{}
	for i := range 200 {
		tk := tick.Add(time.Duration(i) * 24 * time.Hour)
		d := cron.Jitter("acme", "db", tk, 10*time.Minute)
		require.Equal(t, d, cron.Jitter("acme", "db", tk, 10*time.Minute))
		require.GreaterOrEqual(t, d, time.Duration(0))
		require.Less(t, d, 10*time.Minute)
		seen[d] = true
	}
	require.Greater(t, len(seen), 190, "jitter is spread")
	require.NotEqual(t, cron.Jitter("acme", "db", tick, time.Hour), cron.Jitter("acme", "db2", tick, time.Hour))
}

func TestRequestIDIsUnambiguous(t *testing.T) {
	tick := time.Date(2026, 1, 15, 3, 0, 0, 0, time.UTC)
	require.Equal(t, "cron.acme.db.20260115T030000Z", cron.RequestID("acme", "db", tick))
	require.Equal(t, cron.RequestID("acme", "db", tick), cron.RequestID("acme", "db", tick.In(time.FixedZone("x", -7200))))
	require.NotEqual(t, cron.RequestID("a-b", "c", tick), cron.RequestID("a", "b-c", tick))
}

// TestTwoReplicasFireEachTickOnce: two triggers on one NATS, "@every 1s"
// for about five seconds, store about five requests, not ten: each tick
// once. (On a loaded machine a tick fired more than a second late is
// collapsed into the next, so the lower bound is on the ticks' span.)
func TestTwoReplicasFireEachTickOnce(t *testing.T) {
	env := newEnv(t)
	rekey := rekeyConfig(t, map[string]string{"db": "schedule: '@every 1s'"})
	a := env.trigger(t, cron.Defaults(), rekey, nil)
	b := env.trigger(t, cron.Defaults(), rekey, nil)

	stopA, stopB := run(t, a), run(t, b)
	env.waitState(t, "acme.db", func(through time.Time) bool { return !through.IsZero() })
	time.Sleep(5 * time.Second)
	stopA()
	stopB()

	reqs := env.requests(t, "acme", "db")
	require.LessOrEqual(t, len(reqs), 6, "about one per second, not one per replica")
	ticks := map[time.Time]bool{}
	var first, last time.Time
	for _, r := range reqs {
		require.Equal(t, schemas.TriggerCron, r.req.Trigger.Kind)
		require.Equal(t, "cron", r.req.Trigger.Source)
		require.Equal(t, "scheduled rotation (@every 1s)", r.req.Reason)
		at, ok := strings.CutPrefix(r.req.Trigger.Actor, "@every 1s@")
		require.True(t, ok, r.req.Trigger.Actor)
		tick, err := time.Parse(time.RFC3339, at)
		require.NoError(t, err)
		require.Equal(t, cron.RequestID("acme", "db", tick), r.ev.ID)
		require.False(t, ticks[tick], "tick %s requested twice", at)
		ticks[tick] = true
		if first.IsZero() || tick.Before(first) {
			first = tick
		}
		if tick.After(last) {
			last = tick
		}
	}
	require.GreaterOrEqual(t, len(reqs), 2)
	require.GreaterOrEqual(t, last.Sub(first), 3*time.Second, "ticks of about five seconds fired")
	if len(reqs) < 4 {
		t.Logf("only %d requests over ticks %s..%s: a loaded machine collapsed late ticks", len(reqs), first, last)
	}
	ids := map[string]bool{}
	for _, r := range reqs {
		ids[r.ev.ID] = true
	}
	accepted := env.audits(t, "acme", schemas.OutcomeAccepted)
	require.Len(t, accepted, len(reqs), "one accepted audit record per request")
	for _, rec := range accepted {
		require.True(t, ids[rec.RequestID])
		require.Equal(t, "rotation.request", rec.Action)
		require.Equal(t, "cron", rec.Component)
	}
}

// TestCatchUp: ticks missed while rekey was down are caught up once at
// start (by two replicas starting together, still once), or skipped when
// catch_up is off or the tick is older than max_catch_up_age.
func TestCatchUp(t *testing.T) {
	day := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC)
	stopped := day.Add(10 * time.Hour)               // first run: Jan 10 10:00
	restart := day.Add(4*24*time.Hour + 5*time.Hour) // second run: Jan 14 05:00
	latest := day.Add(4*24*time.Hour + 3*time.Hour)  // latest missed tick: Jan 14 03:00
	for _, tc := range []struct {
		name     string
		cfg      cron.Config
		replicas int
		fires    bool
	}{
		{"once", cron.Defaults(), 1, true},
		{"once with two replicas", cron.Defaults(), 2, true},
		{"off", cron.Config{Enabled: true, CatchUp: false}, 2, false},
		{"too old", cron.Config{Enabled: true, CatchUp: true, MaxCatchUpAge: time.Hour}, 1, false},
		{"young enough", cron.Config{Enabled: true, CatchUp: true, MaxCatchUpAge: 3 * time.Hour}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			rekey := rekeyConfig(t, map[string]string{"db": "schedule: '0 3 * * *'", "other": "{}"})

			// First run: records where the schedule stands, fires nothing
			// (the next tick is 17 hours away).
			first := env.trigger(t, tc.cfg, rekey, clock(stopped))
			stop := run(t, first)
			env.waitState(t, "acme.db", func(through time.Time) bool { return !through.IsZero() })
			stop()
			require.Empty(t, env.requests(t, "acme", "db"))

			// Down for four days: four ticks missed.
			var stops []func()
			for range tc.replicas {
				stops = append(stops, run(t, env.trigger(t, tc.cfg, rekey, clock(restart))))
			}
			env.waitState(t, "acme.db", func(through time.Time) bool { return through.Equal(latest) })
			time.Sleep(500 * time.Millisecond) // a second request would show now
			for _, s := range stops {
				s()
			}

			reqs := env.requests(t, "acme", "db")
			if !tc.fires {
				require.Empty(t, reqs)
				return
			}
			require.Len(t, reqs, 1)
			require.Equal(t, cron.RequestID("acme", "db", latest), reqs[0].ev.ID)
			require.Equal(t, "0 3 * * *@2026-01-14T03:00:00Z", reqs[0].req.Trigger.Actor)
			accepted := env.audits(t, "acme", schemas.OutcomeAccepted)
			require.Len(t, accepted, 1)
			require.Equal(t, "true", accepted[0].Detail["catch_up"])
			require.Equal(t, "4", accepted[0].Detail["missed"])
		})
	}
}

// TestJitterDelaysTheTick: with a jitter, a tick fires at tick+jitter (the
// same instant on every replica), not before.
func TestJitterDelaysTheTick(t *testing.T) {
	env := newEnv(t)
	rekey := rekeyConfig(t, map[string]string{"db": "{schedule: '0 * * * *', jitter: 30m}"})
	start := time.Date(2026, 1, 10, 9, 0, 0, 0, time.UTC)
	j := cron.Jitter("acme", "db", start.Add(time.Hour), 30*time.Minute)

	// First run at 09:00 records where the schedule stands.
	stop := run(t, env.trigger(t, cron.Defaults(), rekey, clock(start)))
	env.waitState(t, "acme.db", func(through time.Time) bool { return !through.IsZero() })
	stop()

	// Back four seconds before the jittered time of the 10:00 tick: it is
	// not missed, it fires on time, about four seconds later.
	stop = run(t, env.trigger(t, cron.Defaults(), rekey, clock(start.Add(time.Hour+j-4*time.Second))))
	time.Sleep(time.Second)
	require.Empty(t, env.requests(t, "acme", "db"), "not before tick+jitter")
	require.Eventually(t, func() bool { return len(env.requests(t, "acme", "db")) == 1 }, 20*time.Second, 100*time.Millisecond)
	stop()
	reqs := env.requests(t, "acme", "db")
	require.Equal(t, cron.RequestID("acme", "db", start.Add(time.Hour)), reqs[0].ev.ID)
	rec := env.audits(t, "acme", schemas.OutcomeAccepted)
	require.Len(t, rec, 1)
	require.Equal(t, "false", rec[0].Detail["catch_up"])
	require.Equal(t, j.Round(time.Millisecond).String(), rec[0].Detail["jitter"])
}

// --- helpers ---

// rekeyConfig builds a configuration with tenant acme and the given
// secrets, each with a YAML flow mapping as its policy.
func rekeyConfig(t *testing.T, policies map[string]string) *orchestrator.Config {
	t.Helper()
	var b strings.Builder
	b.WriteString("tenants:\n  acme:\n    secrets:\n")
	for name, p := range policies {
		if !strings.HasPrefix(p, "{") {
			p = "{" + p + "}"
		}
		fmt.Fprintf(&b, "      %s:\n        backend: local\n        policy: %s\n", name, p)
	}
	cfg, err := orchestrator.Parse([]byte(b.String()))
	require.NoError(t, err)
	return &cfg
}

type env struct {
	*triggertest.Env
	bus *orchestrator.Bus
}

func newEnv(t *testing.T) *env {
	t.Helper()
	te := triggertest.Start(t, triggertest.Options{Name: "cron-test"})
	return &env{Env: te, bus: te.Bus}
}

func (e *env) connect(t *testing.T) *orchestrator.Bus {
	t.Helper()
	return e.Connect()
}

// trigger returns a trigger on its own connection, as a replica would be.
func (e *env) trigger(t *testing.T, cfg cron.Config, rekey *orchestrator.Config, now func() time.Time) *cron.Trigger {
	t.Helper()
	bus := e.connect(t)
	log := slog.New(slog.DiscardHandler)
	tr, err := cron.New(cfg, orchestrator.Deps{Rekey: rekey, Bus: bus, Audit: orchestrator.NewAuditor(bus, "test", log), Metrics: orchestrator.NewMetrics(), Log: log})
	require.NoError(t, err)
	if now != nil {
		tr.Now = now
	}
	return tr
}

// clock returns a clock that starts at start and runs at real speed.
func clock(start time.Time) func() time.Time {
	real := time.Now()
	return func() time.Time { return start.Add(time.Since(real)) }
}

// run starts tr and returns a func that stops it and checks it returned nil.
func run(t *testing.T, tr *cron.Trigger) func() {
	t.Helper()
	return testutil.Run(t, tr)
}

type stored struct {
	ev  schemas.Event
	req schemas.RotationRequested
}

// requests returns every rotation request stored for tenant/secret.
func (e *env) requests(t *testing.T, tenant, secret string) []stored {
	t.Helper()
	var out []stored
	for _, ev := range e.Events(schemas.StreamRotate, schemas.RotateSubject(tenant, secret)) {
		req := triggertest.Data[schemas.RotationRequested](t, []schemas.Event{ev}, schemas.TypeRotationRequested)[0]
		out = append(out, stored{ev, req})
	}
	return out
}

// audits returns the audit records of tenant with the given outcome.
func (e *env) audits(t *testing.T, tenant, outcome string) []schemas.AuditRecord {
	t.Helper()
	var out []schemas.AuditRecord
	for _, rec := range e.Audits(tenant) {
		if rec.Outcome == outcome {
			out = append(out, rec)
		}
	}
	return out
}

// waitState waits until the stored "through" time of key satisfies ok.
func (e *env) waitState(t *testing.T, key string, ok func(time.Time) bool) {
	t.Helper()
	require.Eventually(t, func() bool {
		kv, err := e.bus.JS.KeyValue(context.Background(), cron.Bucket)
		if err != nil {
			return false
		}
		entry, err := kv.Get(context.Background(), key)
		if err != nil {
			return false
		}
		var st struct {
			Through time.Time `json:"through"`
		}
		return json.Unmarshal(entry.Value(), &st) == nil && ok(st.Through)
	}, 30*time.Second, 50*time.Millisecond, "state of %s", key)
}
