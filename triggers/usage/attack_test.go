package usage_test

import (
	"context"
	"encoding/json"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/usage"
)

// Attacks from one tenant's agent credentials on the use-count trigger
// (issue 19, finding 1): each asserts the refusal and that nothing was
// requested.

// TestAttackHugeCountIsCapped: one report of MaxInt64 uses of the current
// version counts one minute's worth of the instance's plausible rate, not
// the limit; no rotation; the refusal is audited with counts.
func TestAttackHugeCountIsCapped(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	stop := run(t, env.trigger(t, env.connect(t), func(c *usage.Config) { c.MaxUsesPerInstancePerMinute = 600 }))
	env.publish(t, []schemas.UsageReport{
		{Tenant: "acme", Secret: "openai-key", Version: "2", Agent: "evil", Count: math.MaxInt64},
		{Tenant: "acme", Secret: "openai-key", Version: "2", Agent: "evil", Count: 500},
	})
	env.waitCounted(t, map[string]int64{"2": 600})
	stop()
	require.Empty(t, env.requests(t), "no rotation")
	refused := env.refusals(t)
	require.Equal(t, "2", refused["over_instance_rate"])
}

// TestAttackFutureVersionsAreNotCounted: reports for versions that do not
// exist yet (local versions are sequential) are refused and leave no
// count behind, so no later rotation can be forced by them.
func TestAttackFutureVersionsAreNotCounted(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	stop := run(t, env.trigger(t, env.connect(t)))
	var planted []schemas.UsageReport
	for _, v := range []string{"3", "4", "5", "6", "7", "8", "0", "x"} {
		planted = append(planted, schemas.UsageReport{Tenant: "acme", Secret: "openai-key", Version: v, Agent: "evil", Count: 1000})
	}
	env.publish(t, planted)
	env.publish(t, split(map[string]int64{"2": 10}, 1)) // in order after the planted ones
	env.waitCounted(t, map[string]int64{"2": 10})
	stop()
	for _, r := range planted {
		c, err := usage.ReadCount(context.Background(), env.bus, "acme", "openai-key", r.Version)
		require.NoError(t, err)
		require.Zero(t, c.Uses, "version %s", r.Version)
		require.Zero(t, c.Reports)
	}
	require.Empty(t, env.requests(t))
	require.Equal(t, "8", env.refusals(t)["version_not_current"])
}

// TestAttackPlantedCountIsDropped: a count stored for a version before it
// became current (planted before admission existed, or a reused version
// number) is dropped at the version's first report, not added to.
func TestAttackPlantedCountIsDropped(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	ctx := context.Background()
	kv, err := env.bus.KV(ctx, usage.Bucket, 0)
	require.NoError(t, err)
	old := time.Now().UTC().Add(-48 * time.Hour)
	b, err := json.Marshal(usage.Count{Tenant: "acme", Secret: "openai-key", Version: "3", Uses: 999, Reports: 1, FirstAt: old, UpdatedAt: old})
	require.NoError(t, err)
	_, err = kv.Put(ctx, usage.Key("acme", "openai-key", "3"), b)
	require.NoError(t, err)
	// Version 3 becomes current now.
	_, err = env.state.UpdateSecretStatus(ctx, "acme", "openai-key", func(st *orchestrator.SecretStatus) error {
		st.Version, st.PreviousVersion, st.LastCompletedAt = "3", "2", time.Now().UTC()
		return nil
	})
	require.NoError(t, err)

	stop := run(t, env.trigger(t, env.connect(t)))
	env.publish(t, split(map[string]int64{"3": 5}, 1))
	env.waitCounted(t, map[string]int64{"3": 5})
	stop()
	require.Empty(t, env.requests(t), "999 planted + 5 real uses did not reach max_uses 1000")
}

// TestAttackInstanceCap: a tenant's instances beyond the cap are refused;
// the ones within it are counted.
func TestAttackInstanceCap(t *testing.T) {
	env := newEnv(t, orchestrator.NATSConfig{})
	stop := run(t, env.trigger(t, env.connect(t), func(c *usage.Config) { c.MaxInstancesPerTenant = 2 }))
	var reps []schemas.UsageReport
	for _, a := range []string{"a1", "a2", "a3", "a4"} {
		reps = append(reps, schemas.UsageReport{Tenant: "acme", Secret: "openai-key", Version: "2", Agent: a, Count: 10})
	}
	env.publish(t, reps)
	env.waitCounted(t, map[string]int64{"2": 20})
	stop()
	require.Equal(t, "2", env.refusals(t)["over_instance_cap"])
}

// refusals sums the usage.refused audit records of acme by reason: the
// first refusal is written at once, the rest of a burst under a minute
// in one record (here when the counter stops).
func (e *env) refusals(t *testing.T) map[string]string {
	t.Helper()
	sum := map[string]int64{}
	records := 0
	for _, a := range e.audits(t) {
		if a.Action != "usage.refused" {
			continue
		}
		records++
		require.Equal(t, "acme", a.Tenant)
		require.Equal(t, schemas.OutcomeRefused, a.Outcome)
		for k, v := range a.Detail {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err)
			sum[k] += n
		}
	}
	require.LessOrEqual(t, records, 2, "a burst is audited once, not per report")
	out := map[string]string{}
	for k, n := range sum {
		out[k] = strconv.FormatInt(n, 10)
	}
	return out
}
