package awsevents_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/awsevents"
	"github.com/rekey-dev/rekey/triggers/awsevents/kumotest"
)

// TestPublisherDeliversOutcomesThroughARule: a rotation_completed event on
// the EVENTS stream is put on the EventBridge bus as source "rekey",
// detail-type "rekey rotation completed" and the event's data as detail;
// a rule routes it to an SQS queue; the JetStream message is acked. Kinds
// not configured are not sent.
func TestPublisherDeliversOutcomesThroughARule(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	out, err := e.kumo.CreateQueue(ctx, uniq("rekey-outcomes"), kumotest.QueueOptions{})
	require.NoError(t, err)
	require.NoError(t, e.kumo.RouteToQueue(ctx, e.ebBus, "rekey-outcomes", `{"source":["rekey"]}`, out.ARN))

	p, err := awsevents.NewPublisher(e.cfg, e.bus, e.metrics, e.log)
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
	_, err = e.bus.PublishEvent(ctx, schemas.EventsSubject("acme", schemas.KindInvalidationConfirmed), "test",
		schemas.TypeInvalidationConfirmed, "acme", "acme/openai-key", schemas.InvalidationConfirmed{Tenant: "acme", Kind: "rotated", RequestID: "req-0"})
	require.NoError(t, err)
	ev, err := e.bus.PublishEvent(ctx, schemas.EventsSubject("acme", schemas.KindRotationCompleted), "test",
		schemas.TypeRotationCompleted, "acme", "acme/openai-key", done)
	require.NoError(t, err)
	failed := schemas.RotationFailed{Tenant: "globex", Secret: "openai-key", Backend: "awssm", RequestID: "req-2", Step: "test",
		Error: "connection refused", Attempts: 5, Trigger: schemas.Trigger{Kind: schemas.TriggerAPI}, FailedAt: time.Now().UTC()}
	_, err = e.bus.PublishEvent(ctx, schemas.EventsSubject("globex", schemas.KindRotationFailed), "test",
		schemas.TypeRotationFailed, "globex", "globex/openai-key", failed)
	require.NoError(t, err)

	var got []map[string]json.RawMessage
	require.Eventually(t, func() bool {
		res, err := e.kumo.SQS().ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(out.URL), MaxNumberOfMessages: 10})
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
		c, err := e.bus.JS.Consumer(ctx, schemas.StreamEvents, awsevents.PublisherDurable)
		require.NoError(t, err)
		info, err := c.Info(ctx)
		require.NoError(t, err)
		return info.NumAckPending == 0 && info.AckFloor.Consumer == 2 && info.NumPending == 0
	}, 10*time.Second, 50*time.Millisecond, "the events were not acked")
	require.Equal(t, 1.0, e.metric("rekey_aws_eventbridge_events_total", "kind", schemas.KindRotationCompleted))
}
