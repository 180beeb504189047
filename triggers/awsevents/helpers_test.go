package awsevents_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/awssm/awssmtest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/awsevents"
	"github.com/rekey-dev/rekey/triggers/awsevents/kumotest"
	"github.com/rekey-dev/rekey/triggers/triggertest"
)

// The emulator is started by the first test that needs it and stopped by
// TestMain, so `go test -run TestParse` needs none. A test that needs it
// when it cannot be found fails with how to build it.
var servers kumotest.Servers

// TestMain: the trigger takes its credentials from
// the SDK's default chain, as rekeyd does; kumotest.Main gives it test
// credentials and keeps the machine's own AWS setup out.
func TestMain(m *testing.M) { os.Exit(kumotest.Main(m, &servers)) }

// rekeyYAML has the tenants of the tests; ops receives the audit records
// of messages that name no tenant.
const rekeyYAML = `
tenants:
  acme: {secrets: {openai-key: {backend: awssm}, db-password: {backend: awssm}}}
  globex: {secrets: {openai-key: {backend: awssm}}}
  ops: {secrets: {pager-key: {backend: local}}}
`

// rekeyConfig parses rekeyYAML.
func rekeyConfig(t testing.TB) *orchestrator.Config {
	t.Helper()
	c, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)
	return &c
}

// resolver is the map-based SecretResolver of the tests: what the awssm
// backend's configuration answers for its secrets, by name or by a full
// ARN of any account or region (the backend checks only the region; the
// trigger checks the rest).
type resolver map[string]schemas.Ref

func (r resolver) Lookup(secretID string) (string, string, bool) {
	name := secretID
	if strings.HasPrefix(secretID, "arn:") {
		parts := strings.SplitN(secretID, ":", 7)
		if len(parts) != 7 || len(parts[6]) < 8 {
			return "", "", false
		}
		name = parts[6][:len(parts[6])-7]
	}
	ref, ok := r[name]
	return ref.Tenant, ref.Secret, ok
}

var secrets = resolver{
	"acme/openai-key":      {Tenant: "acme", Secret: "openai-key"},
	"acme/db-password":     {Tenant: "acme", Secret: "db-password"},
	"globex/openai-key":    {Tenant: "globex", Secret: "openai-key"},
	"not-a-valid/rekey-id": {Tenant: "Acme", Secret: "openai-key"},
}

// sectionYAML is the triggers.awsevents section of the tests; %s are the
// queue URL and the emulator's endpoint.
const sectionYAML = `
queue_url: %s
region: us-east-1
endpoint: %s
wait_time: 1s
tenants: [acme, globex]
audit_tenant: ops
guardduty:
  rules:
    - name: acme-agent-keys
      tenant: acme
      access_key_ids: [ASIAEXAMPLEACMEAGENT]
      principal_ids: [AROAEXAMPLEACMEROLE:i-0123]
      min_severity: high
    - name: tenant-tag
      tag_key: TenantId
      tenants: [acme, globex]
      min_severity: medium
eventbridge:
  enabled: true
  bus_name: %s
`

// uniq makes a queue or bus name no other test uses.
var uniq = testutil.Uniq

// env is one test's emulator queue and bus, NATS server and bus.
type env struct {
	*triggertest.Env
	t        *testing.T
	kumo     *kumotest.Kumo
	queue    kumotest.Queue
	ebBus    string
	nats     *server.Server
	natsDir  string
	natsPort int
	bus      *orchestrator.Bus
	metrics  *orchestrator.Metrics
	rekey    *orchestrator.Config
	cfg      awsevents.Config
	logs     *testutil.SyncBuffer
	log      *slog.Logger
	// sm is Secrets Manager, in kumo's account, with acme/openai-key,
	// acme/db-password and globex/openai-key; smc its client.
	sm  *awssmtest.Server
	smc *secretsmanager.Client
}

// newEnv makes a queue (visibility timeout 1s, dead-letter queue after 3
// receives) fed by a rule on a new event bus for Secrets Manager events
// and GuardDuty findings, starts NATS and the streams, and parses the
// section for them.
func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	te := triggertest.Start(t, triggertest.Options{Name: "awsevents-test"})
	e := &env{Env: te, t: t, kumo: servers.Kumo(t), ebBus: uniq("bus"), logs: te.Logs, log: te.Log, metrics: orchestrator.NewMetrics(),
		nats: te.Server, natsDir: te.Dir, natsPort: te.Server.Addr().(*net.TCPAddr).Port, bus: te.Bus}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s\nkumo:\n%s", e.logs.String(), e.kumo.Log())
		}
	})
	var err error
	e.queue, err = e.kumo.CreateQueue(ctx, uniq("rekey-events"), kumotest.QueueOptions{VisibilityTimeout: time.Second, MaxReceiveCount: 3})
	require.NoError(t, err)
	require.NoError(t, e.kumo.RouteToQueue(ctx, e.ebBus, "aws-to-rekey",
		`{"source":["aws.secretsmanager","aws.guardduty"],"detail-type":["AWS API Call via CloudTrail","AWS Service Event via CloudTrail","GuardDuty Finding"]}`,
		e.queue.ARN))

	e.rekey = rekeyConfig(t)
	e.cfg, err = awsevents.ParseConfig([]byte(fmt.Sprintf(sectionYAML, e.queue.URL, e.kumo.Endpoint, e.ebBus)), e.rekey)
	require.NoError(t, err)

	e.sm = awssmtest.Start(t)
	e.sm.SetAccount(kumotest.Account) // the account kumo puts in its events
	e.smc = e.sm.Client(t)
	for _, name := range []string{"acme/openai-key", "acme/db-password", "globex/openai-key"} {
		_, err := e.smc.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String(name), SecretString: aws.String("initial")})
		require.NoError(t, err)
	}
	e.cfg.SecretsManager = awsevents.SecretsManagerTarget{Region: awssmtest.Region, Endpoint: e.sm.Endpoint()}
	return e
}

// start runs the trigger until the test ends.
func (e *env) start() *awsevents.Trigger {
	e.t.Helper()
	tr, err := awsevents.New(e.cfg, secrets, orchestrator.Deps{Rekey: e.rekey, Bus: e.bus, Audit: e.Auditor(), Metrics: e.metrics, Log: e.log})
	require.NoError(e.t, err)
	testutil.Run(e.t, tr)
	return tr
}

// fixture is a fixture as AWS would send it about the emulator's secrets:
// acme/openai-key's ARN is the emulator's, the account kumo's, and a
// GuardDuty finding was updated just now.
func (e *env) fixture(name string) []byte {
	e.t.Helper()
	body := strings.ReplaceAll(string(fixture(e.t, name)), acmeARN, e.sm.ARN("acme/openai-key"))
	body = strings.ReplaceAll(body, "123456789012", kumotest.Account)
	body = updatedAtRE.ReplaceAllString(body, `"updatedAt": "`+time.Now().UTC().Format(time.RFC3339Nano)+`"`)
	return []byte(body)
}

var updatedAtRE = regexp.MustCompile(`"updatedAt": *"[^"]*"`)

// putVersion makes version id of a secret AWSCURRENT, outside rekey.
func (e *env) putVersion(name, id string) {
	e.t.Helper()
	_, err := e.smc.PutSecretValue(context.Background(), &secretsmanager.PutSecretValueInput{
		SecretId: aws.String(name), ClientRequestToken: aws.String(id), SecretString: aws.String("value-" + id),
	})
	require.NoError(e.t, err)
}

// putEvent puts a fixture's source, detail-type and detail on the test's
// event bus, to reach the queue through the rule, and returns the event
// id EventBridge gave it.
func (e *env) putEvent(body []byte) string {
	e.t.Helper()
	var env struct {
		Source     string          `json:"source"`
		DetailType string          `json:"detail-type"`
		Detail     json.RawMessage `json:"detail"`
	}
	require.NoError(e.t, json.Unmarshal(body, &env))
	out, err := e.kumo.EventBridge().PutEvents(context.Background(), &eventbridge.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{{
		EventBusName: aws.String(e.ebBus), Source: aws.String(env.Source), DetailType: aws.String(env.DetailType),
		Detail: aws.String(string(env.Detail)),
	}}})
	require.NoError(e.t, err)
	require.Zero(e.t, out.FailedEntryCount)
	return aws.ToString(out.Entries[0].EventId)
}

// send puts body on the queue as is (a redelivery, a message no rule
// would route, garbage).
func (e *env) send(body string) {
	e.t.Helper()
	_, err := e.kumo.SQS().SendMessage(context.Background(), &sqs.SendMessageInput{QueueUrl: aws.String(e.queue.URL), MessageBody: aws.String(body)})
	require.NoError(e.t, err)
}

// depth is the queue's visible plus in-flight messages.
func (e *env) depth() int {
	e.t.Helper()
	visible, inFlight, err := e.kumo.Depth(context.Background(), e.queue.URL)
	require.NoError(e.t, err)
	return visible + inFlight
}

// waitHandled waits until the trigger handled n messages in all and the
// queue is empty.
func (e *env) waitHandled(n int) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		return e.handled() >= float64(n) && e.depth() == 0
	}, 30*time.Second, 50*time.Millisecond, "handled %v of %d; %d messages on the queue", e.handled(), n, e.depth())
}

// count is rekey_aws_messages_total{outcome}.
func (e *env) count(outcome string) float64 {
	e.t.Helper()
	return e.metric("rekey_aws_messages_total", "outcome", outcome)
}

func (e *env) handled() float64 {
	total := 0.0
	for _, o := range []string{awsevents.OutcomePublished, awsevents.OutcomeDuplicate, awsevents.OutcomeRefused,
		awsevents.OutcomeIgnored, awsevents.OutcomeMalformed, awsevents.OutcomeUnavailable, awsevents.OutcomeUnconfirmed,
		awsevents.OutcomeDeferred} {
		total += e.count(o)
	}
	return total
}

// metric returns the value of the first counter of name with the label
// (any, when label is empty), 0 when absent.
func (e *env) metric(name, label, value string) float64 {
	e.t.Helper()
	return testutil.CounterValue(e.t, e.metrics.Registry, name, label, value)
}

// events reads a stream (the subjects matching filter; all when it is
// empty) without consuming the work queues, and decodes every event.
func (e *env) events(stream, filter string) []schemas.Event {
	e.t.Helper()
	return e.Events(stream, filter)
}

// decoded decodes the data of every event of a stream (matching filter).
func decoded[T any](e *env, stream, filter, typ string) ([]T, []schemas.Event) {
	e.t.Helper()
	evs := e.events(stream, filter)
	return triggertest.Data[T](e.t, evs, typ), evs
}

func (e *env) rotations() ([]schemas.RotationRequested, []schemas.Event) {
	return decoded[schemas.RotationRequested](e, schemas.StreamRotate, "", schemas.TypeRotationRequested)
}

func (e *env) revocations() ([]schemas.RevocationRequested, []schemas.Event) {
	return decoded[schemas.RevocationRequested](e, schemas.StreamRevoke, "", schemas.TypeRevocationRequested)
}

func (e *env) changes() ([]schemas.ExternalChange, []schemas.Event) {
	return decoded[schemas.ExternalChange](e, schemas.StreamEvents, schemas.EventsSubject("*", schemas.KindExternalChange), schemas.TypeExternalChange)
}

func (e *env) audits() []schemas.AuditRecord {
	recs, _ := decoded[schemas.AuditRecord](e, schemas.StreamAudit, "", schemas.TypeAuditRecord)
	return recs
}

// auditsOf returns the audit records of tenant with action.
func (e *env) auditsOf(tenant, action string) []schemas.AuditRecord {
	var out []schemas.AuditRecord
	for _, r := range e.audits() {
		if r.Tenant == tenant && r.Action == action {
			out = append(out, r)
		}
	}
	return out
}

// withSecretID returns a fixture (of e.fixture) with its secret id
// replaced.
func (e *env) withSecretID(body []byte, id string) []byte {
	e.t.Helper()
	return []byte(strings.ReplaceAll(string(body), e.sm.ARN("acme/openai-key"), id))
}
