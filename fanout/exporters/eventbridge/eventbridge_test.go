package eventbridge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/exporters/eventbridge"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/awsevents/kumotest"
	"github.com/rekey-dev/rekey/triggers/triggertest"
)

// servers is the kumo emulator, started by the first test that needs it.
var servers kumotest.Servers

// TestMain: the publisher takes its credentials from the SDK's default
// chain, as rekeyd does; kumotest.Main gives it test credentials and
// keeps the machine's own AWS setup out.
func TestMain(m *testing.M) { os.Exit(kumotest.Main(m, &servers)) }

const queueURL = "https://sqs.eu-west-1.amazonaws.com/123456789012/rekey-events"

// TestParseConfig: eventbridge is read from the triggers.awsevents
// section, with the defaults and the section's region (else its queue
// URL's) and endpoint when it sets none; the bool is eventbridge.enabled.
func TestParseConfig(t *testing.T) {
	cfg, on, err := eventbridge.ParseConfig([]byte(`
queue_url: ` + queueURL + `
endpoint: http://127.0.0.1:4566
tenants: [acme]
eventbridge: {enabled: true, kinds: [rotation_completed, tenant_restored]}
`))
	require.NoError(t, err)
	require.True(t, on)
	require.Equal(t, eventbridge.Config{Enabled: true, BusName: eventbridge.DefaultBusName, Source: eventbridge.DefaultSource,
		Kinds: []string{schemas.KindRotationCompleted, schemas.KindTenantRestored}, Region: "eu-west-1", Endpoint: "http://127.0.0.1:4566"}, cfg)

	cfg, on, err = eventbridge.ParseConfig([]byte(`
queue_url: ` + queueURL + `
region: us-east-2
eventbridge: {enabled: true, region: ap-south-1, endpoint: "https://events.example", bus_name: platform, source: acme.rekey}
`))
	require.NoError(t, err)
	require.True(t, on)
	require.Equal(t, "ap-south-1", cfg.Region)
	require.Equal(t, "https://events.example", cfg.Endpoint)
	require.Equal(t, "platform", cfg.BusName)
	require.Equal(t, "acme.rekey", cfg.Source)
	require.Equal(t, eventbridge.DefaultKinds, cfg.Kinds)

	cfg, _, err = eventbridge.ParseConfig([]byte("region: us-east-2\neventbridge: {enabled: true}\n"))
	require.NoError(t, err)
	require.Equal(t, "us-east-2", cfg.Region, "the section's region before the queue URL's")

	for _, section := range []string{"", "null", "enabled: false\n", "queue_url: " + queueURL + "\n", "eventbridge:\n", "eventbridge: {enabled: false}\n"} {
		_, on, err := eventbridge.ParseConfig([]byte(section))
		require.NoError(t, err, section)
		require.False(t, on, section)
	}
}

func TestConfigErrorsNameTheirField(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, field, reason string
	}{
		{"unknown field", "eventbridge: {enabled: true, bus: x}\n", "", `unknown field "bus"`},
		{"kinds", "eventbridge: {enabled: true, kinds: [external_change]}\n", "triggers.awsevents.eventbridge.kinds[0]", "is not one of"},
		{"source", "eventbridge: {enabled: true, source: aws.rekey}\n", "triggers.awsevents.eventbridge.source", "reserved"},
		{"bus name", "eventbridge: {enabled: true, bus_name: 'my bus'}\n", "triggers.awsevents.eventbridge.bus_name", "event bus name or ARN"},
		{"endpoint", "eventbridge: {enabled: true, endpoint: 'localhost:4566'}\n", "triggers.awsevents.eventbridge.endpoint", "must be an http(s) URL"},
		{"enabled", "eventbridge: {enabled: maybe}\n", "", "triggers.awsevents.eventbridge"},
		{"region", "region: [a]\neventbridge: {enabled: true}\n", "triggers.awsevents.region", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, on, err := eventbridge.ParseConfig([]byte(tc.yaml))
			require.Error(t, err)
			require.False(t, on)
			require.Contains(t, err.Error(), tc.reason)
			if tc.field == "" {
				return
			}
			var fe *orchestrator.FieldError
			require.True(t, errors.As(err, &fe), "%v", err)
			require.Equal(t, tc.field, fe.Field, "%v", err)
		})
	}
}

// TestNewPublisher: a disabled publisher, one without a bus and one
// without a region are refused, as is a configuration that does not
// validate; defaults are filled in.
func TestNewPublisher(t *testing.T) {
	deps := orchestrator.Deps{Bus: &orchestrator.Bus{}}
	_, err := eventbridge.NewPublisher(eventbridge.Config{}, deps)
	require.ErrorContains(t, err, "eventbridge.enabled is false")

	_, err = eventbridge.NewPublisher(eventbridge.Config{Enabled: true, Region: "eu-west-1"}, orchestrator.Deps{})
	require.ErrorContains(t, err, "deps: bus is required")

	_, err = eventbridge.NewPublisher(eventbridge.Config{Enabled: true}, deps)
	require.ErrorContains(t, err, "no AWS region")

	_, err = eventbridge.NewPublisher(eventbridge.Config{Enabled: true, Region: "eu-west-1", Kinds: []string{"external_change"}}, deps)
	var fe *orchestrator.FieldError
	require.True(t, errors.As(err, &fe), "%v", err)
	require.Equal(t, "triggers.awsevents.eventbridge.kinds[0]", fe.Field)

	_, err = eventbridge.NewPublisher(eventbridge.Config{Enabled: true, Region: "eu-west-1"}, deps)
	require.NoError(t, err)
}

// TestPublisherDeliversOutcomesThroughARule: a rotation_completed event on
// the EVENTS stream is put on the EventBridge bus as source "rekey",
// detail-type "rekey rotation completed" and the event's data as detail;
// a rule routes it to an SQS queue; the JetStream message is acked. Kinds
// not configured are not sent.
func TestPublisherDeliversOutcomesThroughARule(t *testing.T) {
	te := triggertest.Start(t, triggertest.Options{Name: "eventbridge-test"})
	kumo := servers.Kumo(t)
	metrics := orchestrator.NewMetrics()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s\nkumo:\n%s", te.Logs.String(), kumo.Log())
		}
	})
	ctx := context.Background()
	ebBus := testutil.Uniq("bus")
	out, err := kumo.CreateQueue(ctx, testutil.Uniq("rekey-outcomes"), kumotest.QueueOptions{})
	require.NoError(t, err)
	require.NoError(t, kumo.RouteToQueue(ctx, ebBus, "rekey-outcomes", `{"source":["rekey"]}`, out.ARN))

	cfg, on, err := eventbridge.ParseConfig([]byte(fmt.Sprintf("enabled: false\nregion: us-east-1\nendpoint: %s\neventbridge: {enabled: true, bus_name: %s}\n",
		kumo.Endpoint, ebBus)))
	require.NoError(t, err)
	require.True(t, on)
	p, err := eventbridge.NewPublisher(cfg, orchestrator.Deps{Bus: te.Bus, Metrics: metrics, Log: te.Log})
	require.NoError(t, err)
	testutil.Run(t, p)
	select {
	case <-p.Started():
	case <-time.After(10 * time.Second):
		t.Fatal("publisher did not start")
	}

	done := schemas.RotationCompleted{
		Tenant: "acme", Secret: "openai-key", Backend: "awssm", Version: "v-2", PreviousVersion: "v-1", RequestID: "req-1",
		Reason: "scheduled", Trigger: schemas.Trigger{Kind: schemas.TriggerCron, Source: "cron"}, Attempts: 1,
		StartedAt: time.Now().UTC().Add(-time.Second).Truncate(time.Millisecond), CompletedAt: time.Now().UTC().Truncate(time.Millisecond),
	}
	_, err = te.Bus.PublishEvent(ctx, schemas.EventsSubject("acme", schemas.KindInvalidationConfirmed), "test",
		schemas.TypeInvalidationConfirmed, "acme", "acme/openai-key", schemas.InvalidationConfirmed{Tenant: "acme", Kind: "rotated", RequestID: "req-0"})
	require.NoError(t, err)
	ev, err := te.Bus.PublishEvent(ctx, schemas.EventsSubject("acme", schemas.KindRotationCompleted), "test",
		schemas.TypeRotationCompleted, "acme", "acme/openai-key", done)
	require.NoError(t, err)
	failed := schemas.RotationFailed{Tenant: "globex", Secret: "openai-key", Backend: "awssm", RequestID: "req-2", Step: "test",
		Error: "connection refused", Attempts: 5, Trigger: schemas.Trigger{Kind: schemas.TriggerAPI}, FailedAt: time.Now().UTC()}
	_, err = te.Bus.PublishEvent(ctx, schemas.EventsSubject("globex", schemas.KindRotationFailed), "test",
		schemas.TypeRotationFailed, "globex", "globex/openai-key", failed)
	require.NoError(t, err)

	var got []map[string]json.RawMessage
	require.Eventually(t, func() bool {
		res, err := kumo.SQS().ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(out.URL), MaxNumberOfMessages: 10})
		require.NoError(t, err)
		for _, m := range res.Messages {
			var env map[string]json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(aws.ToString(m.Body)), &env))
			got = append(got, env)
		}
		return len(got) >= 2
	}, 20*time.Second, 100*time.Millisecond)
	require.Len(t, got, 2)
	str := func(raw json.RawMessage) string {
		var s string
		require.NoError(t, json.Unmarshal(raw, &s))
		return s
	}
	// EventBridge does not keep order; index by detail-type.
	byType := map[string]map[string]json.RawMessage{}
	for _, env := range got {
		require.Equal(t, "rekey", str(env["source"]))
		byType[str(env["detail-type"])] = env
	}
	require.Contains(t, byType, "rekey rotation completed")
	require.Contains(t, byType, "rekey rotation failed")
	var detail schemas.RotationCompleted
	require.NoError(t, json.Unmarshal(byType["rekey rotation completed"]["detail"], &detail))
	require.Equal(t, done, detail)
	require.JSONEq(t, string(ev.Data), string(byType["rekey rotation completed"]["detail"]))
	var fd schemas.RotationFailed
	require.NoError(t, json.Unmarshal(byType["rekey rotation failed"]["detail"], &fd))
	require.Equal(t, "req-2", fd.RequestID)

	require.Eventually(t, func() bool {
		c, err := te.Bus.JS.Consumer(ctx, schemas.StreamEvents, eventbridge.PublisherDurable)
		require.NoError(t, err)
		info, err := c.Info(ctx)
		require.NoError(t, err)
		return info.NumAckPending == 0 && info.AckFloor.Consumer == 2 && info.NumPending == 0
	}, 10*time.Second, 50*time.Millisecond, "the events were not acked")
	require.Equal(t, 1.0, testutil.CounterValue(t, metrics.Registry, "rekey_aws_eventbridge_events_total", "kind", schemas.KindRotationCompleted))
}
