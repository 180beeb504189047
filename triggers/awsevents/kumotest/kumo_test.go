package kumotest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/triggers/awsevents/kumotest"
)

// What the trigger relies on from SQS and EventBridge, checked against the
// emulator, and where the emulator departs from AWS (TestKumoDeviations,
// which fails when a new kumo fixes one: then update the package doc).

var servers kumotest.Servers

func TestMain(m *testing.M) {
	code := m.Run()
	servers.Stop()
	os.Exit(code)
}

var n atomic.Int64

func uniq(prefix string) string { return fmt.Sprintf("%s-%d", prefix, n.Add(1)) }

func receive(t *testing.T, k *kumotest.Kumo, url string, wait int32) []string {
	t.Helper()
	out, err := k.SQS().ReceiveMessage(context.Background(), &sqs.ReceiveMessageInput{
		QueueUrl: aws.String(url), WaitTimeSeconds: wait, MaxNumberOfMessages: 10,
	})
	require.NoError(t, err)
	var bodies []string
	for _, m := range out.Messages {
		bodies = append(bodies, aws.ToString(m.Body))
	}
	return bodies
}

// TestRuleDeliversMatchesToSQS: PutEvents -> rule -> SQS target, with the
// EventBridge envelope as the message body; events the pattern does not
// match are not delivered.
func TestRuleDeliversMatchesToSQS(t *testing.T) {
	k := servers.Kumo(t)
	ctx := context.Background()
	q, err := k.CreateQueue(ctx, uniq("deliver"), kumotest.QueueOptions{})
	require.NoError(t, err)
	bus := uniq("bus")
	require.NoError(t, k.RouteToQueue(ctx, bus, "secrets", `{"source":["aws.secretsmanager"],"detail":{"eventName":["RotationSucceeded"]}}`, q.ARN))

	out, err := k.EventBridge().PutEvents(ctx, &eventbridge.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{
		{EventBusName: aws.String(bus), Source: aws.String("aws.secretsmanager"), DetailType: aws.String("AWS Service Event via CloudTrail"),
			Detail: aws.String(`{"eventName":"RotationSucceeded","additionalEventData":{"SecretId":"s"}}`)},
		{EventBusName: aws.String(bus), Source: aws.String("aws.secretsmanager"), DetailType: aws.String("AWS Service Event via CloudTrail"),
			Detail: aws.String(`{"eventName":"RotationStarted"}`)},
		{EventBusName: aws.String(bus), Source: aws.String("aws.guardduty"), DetailType: aws.String("GuardDuty Finding"), Detail: aws.String(`{}`)},
	}})
	require.NoError(t, err)
	require.Zero(t, out.FailedEntryCount)
	id := aws.ToString(out.Entries[0].EventId)
	require.NotEmpty(t, id)

	bodies := receive(t, k, q.URL, 5)
	require.Len(t, bodies, 1)
	var env map[string]any
	require.NoError(t, json.Unmarshal([]byte(bodies[0]), &env))
	require.Equal(t, id, env["id"], "the envelope id is the PutEvents event id")
	require.Equal(t, "0", env["version"])
	require.Equal(t, "aws.secretsmanager", env["source"])
	require.Equal(t, "AWS Service Event via CloudTrail", env["detail-type"])
	require.Equal(t, kumotest.Account, env["account"])
	require.Equal(t, kumotest.Region, env["region"])
	require.Equal(t, map[string]any{"eventName": "RotationSucceeded", "additionalEventData": map[string]any{"SecretId": "s"}}, env["detail"])
	_, err = time.Parse(time.RFC3339, env["time"].(string))
	require.NoError(t, err)

	require.Empty(t, receive(t, k, q.URL, 1), "unmatched events were delivered")
}

// TestLongPollVisibilityAndRedrive: a long poll returns as soon as a
// message is sent; a received message is invisible for the visibility
// timeout, then comes back with a higher receive count; after
// maxReceiveCount receives it moves to the dead-letter queue; a deleted
// message never comes back.
func TestLongPollVisibilityAndRedrive(t *testing.T) {
	k := servers.Kumo(t)
	ctx := context.Background()
	c := k.SQS()
	q, err := k.CreateQueue(ctx, uniq("redrive"), kumotest.QueueOptions{VisibilityTimeout: time.Second, MaxReceiveCount: 2})
	require.NoError(t, err)

	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = c.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(q.URL), MessageBody: aws.String("poison")})
	}()
	start := time.Now()
	require.Equal(t, []string{"poison"}, receive(t, k, q.URL, 10))
	require.Less(t, time.Since(start), 5*time.Second, "the long poll did not return when the message arrived")
	require.Empty(t, receive(t, k, q.URL, 0), "visible during its visibility timeout")

	time.Sleep(1100 * time.Millisecond)
	out, err := c.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(q.URL), MaxNumberOfMessages: 10})
	require.NoError(t, err)
	require.Len(t, out.Messages, 1)
	require.Equal(t, "2", out.Messages[0].Attributes["ApproximateReceiveCount"])

	time.Sleep(1100 * time.Millisecond)
	require.Empty(t, receive(t, k, q.URL, 0), "received more than maxReceiveCount times")
	require.Equal(t, []string{"poison"}, receive(t, k, q.DLQURL, 1))

	_, err = c.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(q.URL), MessageBody: aws.String("good")})
	require.NoError(t, err)
	out, err = c.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(q.URL), WaitTimeSeconds: 1})
	require.NoError(t, err)
	require.Len(t, out.Messages, 1)
	_, err = c.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(q.URL), ReceiptHandle: out.Messages[0].ReceiptHandle})
	require.NoError(t, err)
	time.Sleep(1100 * time.Millisecond)
	require.Empty(t, receive(t, k, q.URL, 0))
	visible, inFlight, err := k.Depth(ctx, q.URL)
	require.NoError(t, err)
	require.Zero(t, visible+inFlight)
}

// TestKumoDeviations records where kumo v0.33.1 departs from AWS.
func TestKumoDeviations(t *testing.T) {
	k := servers.Kumo(t)
	ctx := context.Background()
	c := k.SQS()
	q, err := k.CreateQueue(ctx, uniq("deviations"), kumotest.QueueOptions{VisibilityTimeout: time.Second})
	require.NoError(t, err)
	bus := uniq("bus")
	// AWS: the pattern's "account" must match; kumo ignores the key.
	require.NoError(t, k.RouteToQueue(ctx, bus, "any-account", `{"source":["s"],"account":["999999999999"]}`, q.ARN))
	at := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	out, err := k.EventBridge().PutEvents(ctx, &eventbridge.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{
		{EventBusName: aws.String(bus), Source: aws.String("s"), DetailType: aws.String("d"), Detail: aws.String(`{}`),
			Resources: []string{"arn:aws:secretsmanager:us-east-1:123456789012:secret:x"}, Time: &at},
		// AWS: a failed entry (the bus does not exist); kumo: accepted.
		{EventBusName: aws.String(uniq("no-such-bus")), Source: aws.String("s"), DetailType: aws.String("d"), Detail: aws.String(`{}`)},
	}})
	require.NoError(t, err)
	require.Zero(t, out.FailedEntryCount, "kumo now reports PutEvents to a missing bus as failed")

	bodies := receive(t, k, q.URL, 5)
	require.Len(t, bodies, 1, "kumo now matches the pattern's account")
	var env map[string]any
	require.NoError(t, json.Unmarshal([]byte(bodies[0]), &env))
	require.NotContains(t, env, "resources", "kumo now delivers resources")
	require.NotEqual(t, at.Format(time.RFC3339), env["time"], "kumo now delivers the entry's time")
	require.Equal(t, bus, env["event-bus-name"], "kumo no longer adds event-bus-name")

	// AWS: a message whose visibility timeout ends during a long poll is
	// returned by it; kumo: only by the next receive.
	start := time.Now()
	require.Empty(t, receive(t, k, q.URL, 3), "kumo now wakes a long poll when a message becomes visible again")
	require.GreaterOrEqual(t, time.Since(start), 3*time.Second)
	require.Len(t, receive(t, k, q.URL, 0), 1)

	// AWS: deleting a message already deleted succeeds; kumo refuses the
	// stale receipt handle.
	_, err = c.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(q.URL), MessageBody: aws.String("x")})
	require.NoError(t, err)
	got, err := c.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(q.URL), WaitTimeSeconds: 1})
	require.NoError(t, err)
	require.Len(t, got.Messages, 1)
	del := &sqs.DeleteMessageInput{QueueUrl: aws.String(q.URL), ReceiptHandle: got.Messages[0].ReceiptHandle}
	_, err = c.DeleteMessage(ctx, del)
	require.NoError(t, err)
	_, err = c.DeleteMessage(ctx, del)
	require.ErrorContains(t, err, "ReceiptHandleIsInvalid", "kumo now accepts a second delete")

	// AWS: the queue URL names the endpoint; kumo's always says localhost:4566.
	require.Contains(t, q.URL, "http://localhost:4566/"+kumotest.Account+"/")

	// AWS: MaxNumberOfMessages above 10 is refused; kumo clamps it.
	_, err = c.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(q.URL), MaxNumberOfMessages: 11})
	require.NoError(t, err, "kumo now refuses MaxNumberOfMessages 11")
}
