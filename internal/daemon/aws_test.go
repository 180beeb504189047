package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/goccy/go-yaml"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/awsfetch"
	"github.com/rekey-dev/rekey/handlers/awssm/awssmtest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/awsevents/kumotest"
)

// awsEnv is rekeyd with the Secrets Manager backend on the in-test
// emulator (awssmtest, a fake speaking the real JSON protocol: the
// emulators available lack the staging-label calls) and the AWS trigger
// reading a real SQS queue fed by a real EventBridge rule (kumo).
type awsEnv struct {
	t    testing.TB
	d    *running
	sm   *awssmtest.Server
	smc  *secretsmanager.Client
	kumo *kumotest.Kumo
	// smProxy stands between rekeyd and the emulator, to cut it.
	smProxy *testutil.Proxy
}

const (
	awsStaged    = "stripe-key" // rotated by rekey, staged mode
	awsDelegated = "twilio-key" // rotated by a Lambda (delegated mode)
)

func startAWS(t testing.TB, pollInterval time.Duration) *awsEnv {
	t.Helper()
	ctx := context.Background()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_REGION", "us-east-1")
	e := &awsEnv{t: t, sm: awssmtest.Start(t)}
	e.sm.SetAccount(kumotest.Account) // events come in kumo's account
	e.smc = e.sm.Client(t)
	e.smProxy = testutil.StartProxy(t, strings.TrimPrefix(e.sm.Endpoint(), "http://"))
	for _, s := range []string{awsStaged, awsDelegated} {
		_, err := e.smc.CreateSecret(ctx, &secretsmanager.CreateSecretInput{
			Name: aws.String("/tenants/acme/" + s), SecretString: aws.String("initial-" + s),
			Tags: []smtypes.Tag{{Key: aws.String("TenantId"), Value: aws.String("acme")}},
		})
		require.NoError(t, err)
	}
	_, err := e.smc.RotateSecret(ctx, &secretsmanager.RotateSecretInput{
		SecretId: aws.String("/tenants/acme/" + awsDelegated), RotateImmediately: aws.Bool(false),
		RotationLambdaARN: aws.String("arn:aws:lambda:us-east-1:123456789012:function:rotate-twilio"),
	})
	require.NoError(t, err)

	e.kumo, err = kumotest.Start(ctx)
	require.NoError(t, err, "the kumo AWS emulator is needed: %s", kumotest.HowToGetKumo)
	t.Cleanup(e.kumo.Stop)
	q, err := e.kumo.CreateQueue(ctx, "rekey-events", kumotest.QueueOptions{MaxReceiveCount: 3, VisibilityTimeout: 5 * time.Second})
	require.NoError(t, err)
	require.NoError(t, e.kumo.RouteToQueue(ctx, "default", "rekey-secretsmanager", `{"source":["aws.secretsmanager"]}`, q.ARN))

	cfg := testConfig(t, t.TempDir())
	cfg.Backends.AWSSM = mustYAML(t, map[string]any{
		"region": "us-east-1", "endpoint": "http://" + e.smProxy.Addr(), "poll_interval": pollInterval.String(), "timeout": "2s",
	})
	if cfg.Triggers == nil {
		cfg.Triggers = map[string]yaml.RawMessage{}
	}
	cfg.Triggers["awsevents"] = mustYAML(t, map[string]any{
		"queue_url": q.URL, "region": "us-east-1", "endpoint": e.kumo.Endpoint, "wait_time": "1s",
	})
	acme := cfg.Tenants["acme"]
	gen := orchestrator.GeneratorConfig{Style: "api-key", Length: 32, Prefix: "sk_live_"}
	acme.Secrets[awsStaged] = orchestrator.SecretConfig{Backend: "awssm", Generator: gen}
	acme.Secrets[awsDelegated] = orchestrator.SecretConfig{Backend: "awssm", Generator: gen, Options: map[string]string{"mode": "delegated"}}
	cfg.Tenants["acme"] = acme
	require.NoError(t, cfg.Validate())
	e.d = start(t, cfg, daemonOpts())
	return e
}

func mustYAML(t testing.TB, v any) []byte {
	t.Helper()
	b, err := yaml.Marshal(v)
	require.NoError(t, err)
	return b
}

// agent starts an agent of acme that reads Secrets Manager itself.
func (e *awsEnv) agent(instance string, onInv func(agent.Invalidated)) *agent.Agent {
	e.t.Helper()
	f, err := awsfetch.New(e.smc, awsfetch.Config{})
	require.NoError(e.t, err)
	return newAgentWith(e.t, e.d, "acme", instance, f, onInv)
}

// cachedAgent starts an agent that has read secret once (it is cached) and
// returns it with the invalidations it hears.
func (e *awsEnv) cachedAgent(instance, secret string) (*agent.Agent, <-chan agent.Invalidated, agent.Secret) {
	e.t.Helper()
	invs := make(chan agent.Invalidated, 8)
	a := e.agent(instance, func(inv agent.Invalidated) { invs <- inv })
	s, err := a.Get(context.Background(), secret)
	require.NoError(e.t, err)
	return a, invs, s
}

// putRotationEvent puts on the default bus the event Secrets Manager sends
// when a rotation ends, as CloudTrail shapes it.
func (e *awsEnv) putRotationEvent(name, event string) {
	e.t.Helper()
	detail, err := json.Marshal(map[string]any{
		"eventVersion": "1.08", "eventSource": "secretsmanager.amazonaws.com", "eventName": event,
		"eventTime": time.Now().UTC().Format(time.RFC3339), "awsRegion": "us-east-1", "eventType": "AwsServiceEvent",
		"additionalEventData": map[string]string{"SecretId": e.sm.ARN(name)},
		"eventID":             fmt.Sprintf("evt-%d", time.Now().UnixNano()),
	})
	require.NoError(e.t, err)
	out, err := e.kumo.EventBridge().PutEvents(context.Background(), &eventbridge.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{{
		Source: aws.String("aws.secretsmanager"), DetailType: aws.String("AWS Service Event via CloudTrail"), Detail: aws.String(string(detail)),
	}}})
	require.NoError(e.t, err)
	require.Zero(e.t, out.FailedEntryCount)
}

// current returns the AWSCURRENT version id and value.
func (e *awsEnv) current(name string) (string, string) {
	e.t.Helper()
	out, err := e.smc.GetSecretValue(context.Background(), &secretsmanager.GetSecretValueInput{SecretId: aws.String(name)})
	require.NoError(e.t, err)
	return aws.ToString(out.VersionId), aws.ToString(out.SecretString)
}

func waitInvalidation(t *testing.T, ch <-chan agent.Invalidated, secret string, timeout time.Duration) agent.Invalidated {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case inv := <-ch:
			if inv.Invalidation.Secret == secret {
				return inv
			}
		case <-deadline:
			t.Fatalf("no invalidation of %s within %s", secret, timeout)
		}
	}
}

// TestAWSStagedRotation: a rotation through the API stages the new value
// as AWSPENDING, promotes it to AWSCURRENT (the old one becomes
// AWSPREVIOUS), and an agent reading Secrets Manager itself serves the new
// value as soon as it is invalidated.
func TestAWSStagedRotation(t *testing.T) {
	e := startAWS(t, 5*time.Second)
	ctx := context.Background()
	name := "/tenants/acme/" + awsStaged
	a, invs, before := e.cachedAgent("aws-agent-1", awsStaged)
	require.Equal(t, "initial-"+awsStaged, string(before.Value))

	id := rotate(t, e.d, "acme", awsStaged)
	inv := waitInvalidation(t, invs, awsStaged, 20*time.Second)
	require.Equal(t, id, inv.Invalidation.RequestID)
	vid, value := e.current(name)
	require.Equal(t, vid, inv.Invalidation.Version)
	require.Regexp(t, `^sk_live_[A-Za-z0-9]{32}$`, value)
	got, err := a.Get(ctx, awsStaged)
	require.NoError(t, err)
	require.Equal(t, value, string(got.Value))
	require.Equal(t, vid, got.Version)

	stages := e.sm.Stages(name) // version id -> its labels
	require.Equal(t, []string{"AWSCURRENT"}, stages[vid])
	require.Equal(t, []string{"AWSPREVIOUS"}, stages[before.Version])
	for v, labels := range stages {
		require.NotContains(t, labels, "AWSPENDING", "AWSPENDING left on %s", v)
	}
	requireNoValueIn(t, e.d, []string{value, "initial-" + awsStaged})
}

// TestAWSEventInvalidatesAgents: AWS rotates a secret itself; the
// RotationSucceeded event goes EventBridge -> rule -> SQS -> rekey, which
// records the new version without writing to Secrets Manager and
// invalidates every agent, which then reads the new value.
func TestAWSEventInvalidatesAgents(t *testing.T) {
	e := startAWS(t, 5*time.Second)
	ctx := context.Background()
	name := "/tenants/acme/" + awsStaged
	a, invs, before := e.cachedAgent("aws-agent-2", awsStaged)

	// Outside rekey: a new AWSCURRENT.
	_, err := e.smc.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
		SecretId: aws.String(name), SecretString: aws.String("rotated-by-aws"), ClientRequestToken: aws.String("aws-side-rotation-0000000000000001"),
	})
	require.NoError(t, err)
	cached, err := a.Get(ctx, awsStaged)
	require.NoError(t, err)
	require.Equal(t, before.Version, cached.Version, "the agent should still hold its cached value")
	writes := e.sm.CallCounts()

	sent := time.Now()
	e.putRotationEvent(name, "RotationSucceeded")
	inv := waitInvalidation(t, invs, awsStaged, 20*time.Second)
	t.Logf("PutEvents -> agent invalidated in %s", time.Since(sent).Round(time.Millisecond))
	require.Equal(t, "aws-side-rotation-0000000000000001", inv.Invalidation.Version)
	got, err := a.Get(ctx, awsStaged)
	require.NoError(t, err)
	require.Equal(t, "rotated-by-aws", string(got.Value))

	after := e.sm.CallCounts()
	for _, op := range []string{"PutSecretValue", "UpdateSecretVersionStage", "RotateSecret"} {
		require.Equal(t, writes[op], after[op], "rekey called %s for an AWS-side rotation", op)
	}
	st, err := e.d.State().SecretStatus(ctx, "acme", awsStaged)
	require.NoError(t, err)
	require.Equal(t, schemas.RotateModeSync, st.LastMode)
}

// TestAWSDelegatedRotation: a rotation of a secret with a rotation Lambda
// calls RotateSecret and completes when the RotationSucceeded event comes
// back through EventBridge and SQS (polling is set to a minute, so only
// the event can end it in time).
func TestAWSDelegatedRotation(t *testing.T) {
	e := startAWS(t, time.Minute)
	ctx := context.Background()
	name := "/tenants/acme/" + awsDelegated
	e.sm.OnRotation(func(ev awssmtest.RotationEvent) { e.putRotationEvent(ev.Name, ev.Event) })
	a, invs, _ := e.cachedAgent("aws-agent-3", awsDelegated)

	began := time.Now()
	id := rotate(t, e.d, "acme", awsDelegated)
	inv := waitInvalidation(t, invs, awsDelegated, 30*time.Second)
	t.Logf("delegated rotation completed through the event in %s", time.Since(began).Round(time.Millisecond))
	require.Equal(t, id, inv.Invalidation.RequestID)
	vid, value := e.current(name)
	require.Equal(t, vid, inv.Invalidation.Version)
	got, err := a.Get(ctx, awsDelegated)
	require.NoError(t, err)
	require.Equal(t, value, string(got.Value))
	requireNoValueIn(t, e.d, []string{value, "initial-" + awsDelegated})
	require.Equal(t, 1, e.sm.Calls("RotateSecret")-1, "one RotateSecret besides the one enabling rotation")
}

// TestAWSDeletedSecretDroppedByAgents: a secret deleted in Secrets Manager
// (the CloudTrail DeleteSecret call through EventBridge and SQS) is dropped
// by every agent at once, which then fails to read it instead of serving
// the deleted value until its cache TTL.
func TestAWSDeletedSecretDroppedByAgents(t *testing.T) {
	e := startAWS(t, 5*time.Second)
	ctx := context.Background()
	name := "/tenants/acme/" + awsStaged
	a, invs, _ := e.cachedAgent("aws-agent-del", awsStaged)
	arn := e.sm.ARN(name)
	_, err := e.smc.DeleteSecret(ctx, &secretsmanager.DeleteSecretInput{SecretId: aws.String(name), ForceDeleteWithoutRecovery: aws.Bool(true)})
	require.NoError(t, err)

	detail, err := json.Marshal(map[string]any{
		"eventVersion": "1.09", "eventSource": "secretsmanager.amazonaws.com", "eventName": "DeleteSecret",
		"eventTime": time.Now().UTC().Format(time.RFC3339), "awsRegion": "us-east-1", "eventType": "AwsApiCall",
		"requestParameters": map[string]any{"secretId": name, "forceDeleteWithoutRecovery": true},
		"responseElements":  map[string]any{"arn": arn, "name": name},
		"eventID":           "delete-event-1",
	})
	require.NoError(t, err)
	out, err := e.kumo.EventBridge().PutEvents(ctx, &eventbridge.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{{
		Source: aws.String("aws.secretsmanager"), DetailType: aws.String("AWS API Call via CloudTrail"), Detail: aws.String(string(detail)),
	}}})
	require.NoError(t, err)
	require.Zero(t, out.FailedEntryCount)

	inv := waitInvalidation(t, invs, awsStaged, 20*time.Second)
	require.Equal(t, schemas.InvalidationRevoked, inv.Invalidation.Kind)
	_, err = a.Get(ctx, awsStaged)
	require.ErrorIs(t, err, agent.ErrNotFound, "the agent served a deleted secret")
}

// TestAWSOutage: Secrets Manager is cut off (a TCP proxy) for 20 s while
// rotation requests arrive; they are retried with backoff, complete after
// it is back, and no AWSPENDING is left.
func TestAWSOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s outage; skipped with -short")
	}
	e := startAWS(t, 5*time.Second)
	name := "/tenants/acme/" + awsStaged
	first := rotate(t, e.d, "acme", awsStaged)
	waitHandled(t, e.d, "acme", []string{first}, 20*time.Second)

	e.smProxy.Cut()
	cutAt := time.Now()
	var ids []string
	for range 4 {
		ids = append(ids, rotate(t, e.d, "acme", awsStaged))
		time.Sleep(time.Second)
	}
	time.Sleep(20*time.Second - time.Since(cutAt))
	e.smProxy.Restore()
	waitHandled(t, e.d, "acme", ids, 90*time.Second)
	t.Logf("Secrets Manager cut for 20 s: %d requests handled %s after it came back", len(ids), time.Since(cutAt.Add(20*time.Second)).Round(time.Millisecond))

	for _, r := range auditRecords(t, e.d, "acme") {
		if r.Action == "rotation" && r.Outcome == schemas.OutcomeFailed {
			t.Errorf("a rotation was given up during the outage: %+v", r)
		}
	}
	require.Contains(t, e.d.logs.String(), "will retry", "no rotation saw Secrets Manager unavailable")
	vid, _ := e.current(name)
	st, err := e.d.State().SecretStatus(context.Background(), "acme", awsStaged)
	require.NoError(t, err)
	require.Equal(t, vid, st.Version)
	for v, labels := range e.sm.Stages(name) {
		require.NotContains(t, labels, "AWSPENDING", "AWSPENDING left on %s", v)
	}
}

// BenchmarkAWSEventToAgents measures what an AWS-side rotation costs to
// reach every agent: a new AWSCURRENT is written, then its
// RotationSucceeded event is put on EventBridge; the time from PutEvents
// until the last of n agents dropped the old value (EventBridge rule ->
// SQS long poll -> rekey -> sync -> fanout -> agents) is one sample.
//
//	go test -run '^$' -bench AWSEventToAgents -benchtime 50x ./internal/daemon/
func BenchmarkAWSEventToAgents(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) {
			e := startAWS(b, 5*time.Second)
			ctx := context.Background()
			name := "/tenants/acme/" + awsStaged
			var mu sync.Mutex
			want, dropped := "", 0
			all := make(chan time.Time, 1)
			for i := range n {
				a := e.agent(fmt.Sprintf("bench-%d", i), func(inv agent.Invalidated) {
					mu.Lock()
					defer mu.Unlock()
					if inv.Invalidation.Secret != awsStaged || inv.Invalidation.Version != want {
						return
					}
					if dropped++; dropped == n {
						all <- inv.DroppedAt
					}
				})
				_, err := a.Get(ctx, awsStaged)
				require.NoError(b, err)
			}
			var lat []time.Duration
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				token := fmt.Sprintf("bench-rotation-%026d", i)
				_, err := e.smc.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
					SecretId: aws.String(name), SecretString: aws.String(fmt.Sprintf("value-%d", i)), ClientRequestToken: aws.String(token),
				})
				require.NoError(b, err)
				mu.Lock()
				want, dropped = token, 0
				mu.Unlock()
				b.StartTimer()
				sent := time.Now()
				e.putRotationEvent(name, "RotationSucceeded")
				select {
				case at := <-all:
					lat = append(lat, at.Sub(sent))
				case <-time.After(30 * time.Second):
					b.Fatalf("event %d: %d of %d agents invalidated after 30s", i, dropped, n)
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			pct := func(p float64) float64 {
				return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}
