package awsevents_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/awsevents"
	"github.com/rekey-dev/rekey/triggers/awsevents/kumotest"
)

// The attacks of this file are made by someone who can put a message on
// the queue (a broad sqs:SendMessage in the account) or replay one it saw.
// Each is made first, then the test checks that it was refused and that
// nothing changed: no rotation, revocation or sync request, no
// external_change event (which delegated rotations and fanout act on),
// and Secrets Manager as it was. A control event AWS does confirm then
// shows that the same path acts.

// snapshot is what an attack must leave as it was.
type snapshot struct {
	rotations, revocations, changes int
	stages                          map[string]map[string][]string
	writes                          map[string]int
}

func (e *env) snapshot() snapshot {
	e.t.Helper()
	reqs, _ := e.rotations()
	revs, _ := e.revocations()
	chs, _ := e.changes()
	s := snapshot{rotations: len(reqs), revocations: len(revs), changes: len(chs), stages: map[string]map[string][]string{}, writes: map[string]int{}}
	for _, name := range []string{"acme/openai-key", "acme/db-password", "globex/openai-key"} {
		s.stages[name] = e.sm.Stages(name)
	}
	for op, n := range e.sm.CallCounts() {
		if op != "DescribeSecret" && op != "ListSecretVersionIds" {
			s.writes[op] = n
		}
	}
	return s
}

// requireUnchanged fails when anything in before changed.
func (e *env) requireUnchanged(before snapshot, what string) {
	e.t.Helper()
	after := e.snapshot()
	require.Equal(e.t, before.rotations, after.rotations, "%s: a rotation or sync was requested", what)
	require.Equal(e.t, before.revocations, after.revocations, "%s: a revocation was requested", what)
	require.Equal(e.t, before.changes, after.changes, "%s: an external change was published", what)
	require.Equal(e.t, before.stages, after.stages, "%s: Secrets Manager changed", what)
	require.Equal(e.t, before.writes, after.writes, "%s: the trigger wrote to Secrets Manager", what)
}

// unconfirmedOf returns the unconfirmed audit records of tenant, by event id.
func (e *env) unconfirmedOf(tenant string) map[string]string {
	out := map[string]string{}
	for _, r := range e.auditsOf(tenant, "external_change") {
		if r.Outcome == schemas.OutcomeUnconfirmed {
			out[r.Detail["event_id"]] = r.Detail["reason"]
		}
	}
	return out
}

// refusedOf returns the refused aws.event audit records of tenant, by event id.
func (e *env) refusedOf(tenant string) map[string]string {
	out := map[string]string{}
	for _, r := range e.auditsOf(tenant, "aws.event") {
		out[r.Detail["event_id"]] = r.Detail["reason"]
	}
	return out
}

// withEventID gives an event body its own EventBridge id.
func withEventID(body []byte, id string) string {
	s := string(body)
	start := strings.Index(s, `"id"`)
	end := start + strings.Index(s[start:], ",")
	return s[:start] + fmt.Sprintf(`"id": %q`, id) + s[end:]
}

// TestAttackForgedDeleteSecret: a DeleteSecret event about a secret that
// exists would make every agent drop it; Secrets Manager says it exists,
// so it is audited as unconfirmed and nothing is published. The real
// deletion then acts.
func TestAttackForgedDeleteSecret(t *testing.T) {
	e := newEnv(t)
	e.start()
	before := e.snapshot()
	e.send(withEventID(e.fixture("delete_secret"), "forged-delete-1"))
	e.waitHandled(1)

	require.Equal(t, 1.0, e.count(awsevents.OutcomeUnconfirmed))
	require.Contains(t, e.unconfirmedOf("acme")["forged-delete-1"], "exists and is not scheduled for deletion")
	e.requireUnchanged(before, "forged DeleteSecret")

	// Control: the secret really is deleted.
	_, err := e.smc.DeleteSecret(context.Background(), &secretsmanager.DeleteSecretInput{SecretId: aws.String("acme/openai-key"), RecoveryWindowInDays: aws.Int64(7)})
	require.NoError(t, err)
	e.send(withEventID(e.fixture("delete_secret"), "real-delete-1"))
	e.waitHandled(2)
	changes, _ := e.changes()
	require.Len(t, changes, 1)
	require.True(t, changes[0].Deleted)
	reqs, _ := e.rotations()
	require.Len(t, reqs, 1, "the confirmed deletion syncs")
}

// TestAttackRotationFailed: during a rotation by Secrets Manager (a new
// version is AWSPENDING), a RotationFailed that names no version, names
// the AWSCURRENT version, or a version that does not exist would fail the
// rotation rekey waits for; none is published. One naming the pending
// version is.
func TestAttackRotationFailed(t *testing.T) {
	e := newEnv(t)
	e.start()
	const pending = "c0ffee00-0000-4000-8000-00000000abcd"
	_, err := e.smc.PutSecretValue(context.Background(), &secretsmanager.PutSecretValueInput{
		SecretId: aws.String("acme/openai-key"), ClientRequestToken: aws.String(pending), SecretString: aws.String("next"),
		VersionStages: []string{"AWSPENDING"},
	})
	require.NoError(t, err)
	var current string
	for id, labels := range e.sm.Stages("acme/openai-key") {
		if strings.Contains(strings.Join(labels, ","), "AWSCURRENT") {
			current = id
		}
	}
	require.NotEmpty(t, current)
	before := e.snapshot()

	failed := string(e.fixture("rotation_failed"))
	naming := func(id, version string) string {
		return withEventID([]byte(strings.Replace(failed, `"additionalEventData": {`, `"additionalEventData": {"VersionId": "`+version+`", `, 1)), id)
	}
	e.send(withEventID([]byte(failed), "failed-no-version"))
	e.send(naming("failed-current", current))
	e.send(naming("failed-unknown", "deadbeef-0000-4000-8000-000000000000"))
	e.waitHandled(3)

	got := e.unconfirmedOf("acme")
	require.Contains(t, got["failed-no-version"], "names no version")
	require.Contains(t, got["failed-current"], "is AWSCURRENT")
	require.Contains(t, got["failed-unknown"], "does not exist")
	require.Equal(t, 3.0, e.count(awsevents.OutcomeUnconfirmed))
	e.requireUnchanged(before, "forged RotationFailed")

	// Control: the pending version failed.
	e.send(naming("failed-pending", pending))
	e.waitHandled(4)
	changes, _ := e.changes()
	require.Len(t, changes, 1)
	require.Equal(t, schemas.ExternalFailed, changes[0].Outcome)
	require.Equal(t, pending, changes[0].VersionID)
}

// TestAttackForgedRotationSucceededAndPut: a RotationSucceeded while a
// rotation is still pending, and a PutSecretValue naming a version that
// does not exist, are not confirmed; no sync is requested.
func TestAttackForgedRotationSucceededAndPut(t *testing.T) {
	e := newEnv(t)
	e.start()
	_, err := e.smc.PutSecretValue(context.Background(), &secretsmanager.PutSecretValueInput{
		SecretId: aws.String("acme/openai-key"), ClientRequestToken: aws.String("c0ffee00-0000-4000-8000-00000000beef"),
		SecretString: aws.String("next"), VersionStages: []string{"AWSPENDING"},
	})
	require.NoError(t, err)
	before := e.snapshot()
	e.send(withEventID(e.fixture("rotation_succeeded"), "succeeded-while-pending"))
	e.send(withEventID(e.fixture("put_secret_value_current"), "put-of-no-version"))
	e.waitHandled(2)
	got := e.unconfirmedOf("acme")
	require.Contains(t, got["succeeded-while-pending"], "the rotation is not over")
	require.Contains(t, got["put-of-no-version"], "does not exist")
	e.requireUnchanged(before, "forged RotationSucceeded/PutSecretValue")

	// Control: the version exists (and is AWSCURRENT).
	e.putVersion("acme/openai-key", "a1b2c3d4-0000-4000-8000-000000000001")
	e.send(withEventID(e.fixture("put_secret_value_current"), "put-real"))
	e.waitHandled(3)
	reqs, _ := e.rotations()
	require.Len(t, reqs, 1)
}

// TestAttackIdentities: the secret's account, region and partition are
// checked, not only the envelope's account: an ARN in another account, an
// event in another region, an ARN of another partition, a CloudTrail
// region or recipient that is not the event's, and a fully forged event
// from another account (whose ARN Secrets Manager contradicts) are all
// refused, and nothing changes.
func TestAttackIdentities(t *testing.T) {
	e := newEnv(t)
	e.start()
	realARN := e.sm.ARN("acme/openai-key")
	body := string(e.fixture("rotation_succeeded"))
	otherAccountARN := strings.Replace(realARN, ":"+kumotest.Account+":", ":999999999999:", 1)
	before := e.snapshot()

	attacks := map[string]string{
		"arn-other-account":   strings.ReplaceAll(body, realARN, otherAccountARN),
		"arn-other-partition": strings.ReplaceAll(body, realARN, strings.Replace(realARN, "arn:aws:", "arn:aws-cn:", 1)),
		"name-other-region":   strings.ReplaceAll(strings.ReplaceAll(body, realARN, "acme/openai-key"), `"region": "us-east-1"`, `"region": "eu-west-1"`),
		"cloudtrail-region":   strings.Replace(body, `"awsRegion": "us-east-1"`, `"awsRegion": "eu-west-1"`, 1),
		"cloudtrail-account":  strings.Replace(body, `"recipientAccountId": "`+kumotest.Account+`"`, `"recipientAccountId": "999999999999"`, 1),
		"all-other-account":   strings.ReplaceAll(strings.ReplaceAll(body, realARN, otherAccountARN), kumotest.Account, "999999999999"),
	}
	for id, b := range attacks {
		e.send(withEventID([]byte(b), id))
	}
	e.waitHandled(len(attacks))
	refused := e.refusedOf("acme")
	require.Contains(t, refused["arn-other-account"], "is in account 999999999999, not the event's account "+kumotest.Account)
	require.Contains(t, refused["arn-other-partition"], `partition "aws-cn"`)
	require.Contains(t, refused["name-other-region"], `region "eu-west-1" is not the region of the secrets`)
	require.Contains(t, refused["cloudtrail-region"], "detail.awsRegion")
	require.Contains(t, refused["cloudtrail-account"], "detail.recipientAccountId")
	require.Contains(t, e.unconfirmedOf("acme")["all-other-account"], "the secret is in account "+kumotest.Account+", not the event's account 999999999999")
	require.Equal(t, 5.0, e.count(awsevents.OutcomeRefused))
	require.Equal(t, 1.0, e.count(awsevents.OutcomeUnconfirmed))
	e.requireUnchanged(before, "events naming other identities")

	// Control: the same event with the real identities syncs.
	e.send(withEventID([]byte(body), "real"))
	e.waitHandled(len(attacks) + 1)
	reqs, _ := e.rotations()
	require.Len(t, reqs, 1)
}

// TestAttackGuardDutySeverity: a finding with severity "NaN", "Inf" or 11
// for acme's agent key (rule min_severity high) would revoke acme, since
// NaN compares false with every minimum; it is malformed, never acted on,
// and ends in the dead-letter queue.
func TestAttackGuardDutySeverity(t *testing.T) {
	e := newEnv(t)
	e.start()
	before := e.snapshot()
	body := string(e.fixture("guardduty_access_key"))
	for _, sev := range []string{`"NaN"`, `"Inf"`, `11`, `"-Infinity"`, `"0x1p3"`} {
		e.putEvent([]byte(strings.Replace(body, `"severity": 8`, `"severity": `+sev, 1)))
	}
	require.Eventually(t, func() bool { return e.count(awsevents.OutcomeMalformed) >= 5 }, 30*time.Second, 50*time.Millisecond)
	require.Zero(t, e.count(awsevents.OutcomePublished))
	for _, r := range e.auditsOf("ops", "aws.event") {
		require.Contains(t, r.Detail["reason"], "detail.severity")
	}
	e.requireUnchanged(before, "GuardDuty findings with a severity out of range")

	// Control: severity 8 revokes.
	e.putEvent([]byte(body))
	require.Eventually(t, func() bool { return e.count(awsevents.OutcomePublished) == 1 }, 30*time.Second, 50*time.Millisecond)
	revs, _ := e.revocations()
	require.Len(t, revs, 1)
}

// TestAttackReplayAfterDuplicateWindow: the same EventBridge event
// delivered again after JetStream's duplicate window (simulated by new
// streams, which remember no message id) and after a restart of the
// trigger (a new instance: another replica reads the same bucket), and a
// still-active GuardDuty finding re-sent under a new event id, act once.
// A GuardDuty finding last updated before dedup_window is refused.
func TestAttackReplayAfterDuplicateWindow(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	finding := e.fixture("guardduty_access_key")
	sync := e.fixture("rotation_succeeded")
	stop := e.startStoppable()
	e.send(string(finding))
	e.send(string(sync))
	e.waitHandled(2)
	revs, _ := e.revocations()
	require.Len(t, revs, 1)
	reqs, _ := e.rotations()
	require.Len(t, reqs, 1)
	stop()

	// JetStream forgets the message ids: new streams.
	for _, s := range []string{schemas.StreamRevoke, schemas.StreamRotate, schemas.StreamEvents} {
		require.NoError(t, e.bus.JS.DeleteStream(ctx, s))
	}
	require.NoError(t, e.bus.EnsureStreams(ctx))
	before := e.snapshot()

	e.startStoppable()
	e.send(string(finding))
	e.send(string(sync))
	e.send(withEventID(finding, "same-finding-new-event-id"))
	stale := withEventID([]byte(updatedAtRE.ReplaceAllString(string(finding), `"updatedAt": "`+time.Now().Add(-25*time.Hour).UTC().Format(time.RFC3339)+`"`)), "stale-finding")
	e.send(stale)
	require.Eventually(t, func() bool {
		return e.count(awsevents.OutcomeDuplicate) == 3 && e.count(awsevents.OutcomeRefused) == 1 && e.depth() == 0
	},
		30*time.Second, 50*time.Millisecond, "duplicates %v", e.count(awsevents.OutcomeDuplicate))
	require.Contains(t, e.refusedOf("ops")["stale-finding"], "longer ago than dedup_window")
	e.requireUnchanged(before, "replayed events")

	// Control: a new update of the finding acts.
	fresh := updatedAtRE.ReplaceAllString(string(finding), `"updatedAt": "`+time.Now().Add(time.Second).UTC().Format(time.RFC3339Nano)+`"`)
	e.send(withEventID([]byte(fresh), "finding-updated"))
	require.Eventually(t, func() bool { revs, _ := e.revocations(); return len(revs) == 1 }, 30*time.Second, 50*time.Millisecond)
}

// startStoppable runs a new trigger on the env (its own instance, as after
// a restart; its counters are the env's) and returns a function that
// stops it.
func (e *env) startStoppable() func() {
	e.t.Helper()
	tr, err := awsevents.New(e.cfg, secrets, orchestrator.Deps{Bus: e.bus, Audit: orchestrator.NewAuditor(e.bus, "test", e.log), Metrics: e.metrics, Log: e.log})
	require.NoError(e.t, err)
	return testutil.Run(e.t, tr)
}

// TestQueueMustFitDedupWindow: at start the queue's redrive policy and
// visibility timeout are read; a queue whose messages could come back
// after dedup_window (no redrive policy, more receives than
// max_receive_count, visibility timeout times receives over the window)
// stops the trigger with an error naming the field.
func TestQueueMustFitDedupWindow(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	noRedrive, err := e.kumo.CreateQueue(ctx, uniq("no-redrive"), kumotest.QueueOptions{})
	require.NoError(t, err)
	slow, err := e.kumo.CreateQueue(ctx, uniq("slow"), kumotest.QueueOptions{VisibilityTimeout: time.Minute, MaxReceiveCount: 3})
	require.NoError(t, err)
	for _, tc := range []struct {
		name, queue string
		edit        func(*awsevents.Config)
		field, says string
	}{
		{"no redrive policy", noRedrive.URL, func(*awsevents.Config) {}, "max_receive_count", "has no redrive policy"},
		{"more receives", e.queue.URL, func(c *awsevents.Config) { c.MaxReceiveCount = 2 }, "max_receive_count", "maxReceiveCount 3 is above max_receive_count 2"},
		{"window too short", slow.URL, func(c *awsevents.Config) { c.DedupWindow = 2 * time.Minute }, "dedup_window", "must exceed the visibility timeout (1m0s) times maxReceiveCount (3)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.cfg
			cfg.QueueURL = tc.queue
			tc.edit(&cfg)
			tr, err := awsevents.New(cfg, secrets, orchestrator.Deps{Bus: e.bus, Audit: orchestrator.NewAuditor(e.bus, "test", e.log), Metrics: orchestrator.NewMetrics(), Log: e.log})
			require.NoError(t, err)
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			err = tr.Run(rctx)
			var fe *orchestrator.FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, awsevents.Section+"."+tc.field, fe.Field)
			require.ErrorContains(t, err, tc.says)
			require.NoError(t, rctx.Err(), "Run returned at once")
		})
	}
	// A section whose own visibility_timeout does not fit is refused by
	// its validation already.
	_, err = awsevents.ParseConfig([]byte("queue_url: "+e.queue.URL+"\nvisibility_timeout: 1h\nmax_receive_count: 5\ndedup_window: 4h\n"), e.rekey)
	require.ErrorContains(t, err, "triggers.awsevents.dedup_window")
}

// TestDedupBucketIsGranted: the api role, which runs the trigger, may
// create and use the dedup bucket.
func TestDedupBucketIsGranted(t *testing.T) {
	require.Contains(t, orchestrator.RoleBuckets()[orchestrator.RoleAPI], awsevents.BucketDedup)
}
