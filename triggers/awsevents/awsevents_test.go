package awsevents_test

import (
	"context"
	"slices"
	"strings"
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

// TestRotationSucceededBecomesSyncRequest: a RotationSucceeded event put on
// EventBridge reaches the queue through the rule; the trigger publishes
// the external change and a sync rotation request, both with ids derived
// from the event id, audits both and deletes the message.
func TestRotationSucceededBecomesSyncRequest(t *testing.T) {
	e := newEnv(t)
	e.start()
	id := e.putEvent(e.fixture("rotation_succeeded"))
	e.waitHandled(1)

	reqs, evs := e.rotations()
	require.Len(t, reqs, 1)
	r := reqs[0]
	require.Equal(t, "aws-"+id+"-sync", evs[0].ID)
	require.Equal(t, "rekey.rotate.acme.openai-key", schemas.RotateSubject(r.Tenant, r.Secret))
	require.Equal(t, schemas.RotateModeSync, r.Mode)
	require.Equal(t, schemas.Trigger{Kind: schemas.TriggerAWS, Source: "sqs", Actor: id}, r.Trigger)
	require.Equal(t, "aws RotationSucceeded", r.Reason)
	require.Equal(t, awsevents.EventSource, evs[0].Source)
	require.Equal(t, "acme/openai-key", evs[0].Subject)

	changes, cevs := e.changes()
	require.Len(t, changes, 1)
	c := changes[0]
	require.Equal(t, "aws-"+id+"-change", cevs[0].ID)
	require.Equal(t, schemas.ExternalChange{
		Tenant: "acme", Secret: "openai-key", Backend: "awssm", Source: "aws.secretsmanager", Event: "RotationSucceeded",
		Outcome: schemas.ExternalSucceeded, ResourceID: e.sm.ARN("acme/openai-key"), EventID: id, EventTime: c.EventTime, ObservedAt: c.ObservedAt,
	}, c)
	require.Equal(t, time.Date(2021, 8, 13, 19, 17, 16, 0, time.UTC), c.EventTime, "CloudTrail's eventTime")

	ext := e.auditsOf("acme", "external_change")
	require.Len(t, ext, 1)
	require.Equal(t, schemas.OutcomeSucceeded, ext[0].Outcome)
	require.Equal(t, "aws:sqs:"+id, ext[0].Actor)
	require.Equal(t, "awsevents", ext[0].Component)
	require.Equal(t, "aws", ext[0].Detail["trigger"])
	require.Equal(t, "sqs", ext[0].Detail["source"])
	require.Equal(t, id, ext[0].Detail["event_id"])
	require.Equal(t, "AWS Service Event via CloudTrail", ext[0].Detail["detail_type"])
	req := e.auditsOf("acme", "rotation.request")
	require.Len(t, req, 1)
	require.Equal(t, schemas.OutcomeAccepted, req[0].Outcome)
	require.Equal(t, "aws-"+id+"-sync", req[0].RequestID)
	require.Equal(t, 1.0, e.count(awsevents.OutcomePublished))
	require.Equal(t, 1.0, e.metric("rekey_requests_total", "kind", "sync"))
}

// TestDuplicateDeliveryIsOneRequest: SQS delivers at least once; the same
// message (same EventBridge id) delivered twice causes one request, one
// external change and one set of audit records.
func TestDuplicateDeliveryIsOneRequest(t *testing.T) {
	e := newEnv(t)
	e.putVersion("acme/openai-key", "4d383ea9-084a-49c9-8722-cbfb0f25c456")
	e.start()
	body := string(e.fixture("put_secret_value"))
	e.send(body)
	e.send(body)
	e.waitHandled(2)

	reqs, evs := e.rotations()
	require.Len(t, reqs, 1)
	require.Equal(t, "aws-79f04f06-924c-7a00-b3f8-e532167d23e0-sync", evs[0].ID)
	changes, _ := e.changes()
	require.Len(t, changes, 1)
	require.Equal(t, "4d383ea9-084a-49c9-8722-cbfb0f25c456", changes[0].VersionID)
	require.Len(t, e.auditsOf("acme", "external_change"), 1)
	require.Len(t, e.auditsOf("acme", "rotation.request"), 1)
	require.Equal(t, 1.0, e.count(awsevents.OutcomePublished))
	require.Equal(t, 1.0, e.count(awsevents.OutcomeDuplicate))
}

// TestMalformedMessageEndsInDeadLetterQueue: a message that is not an
// EventBridge event is never deleted; it is audited on every receive and
// the redrive policy moves it to the dead-letter queue.
func TestMalformedMessageEndsInDeadLetterQueue(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.send(`{"this is": "not an EventBridge event"}`)

	var dlq []string
	require.Eventually(t, func() bool {
		out, err := e.kumo.SQS().ReceiveMessage(context.Background(), &sqs.ReceiveMessageInput{QueueUrl: aws.String(e.queue.DLQURL)})
		require.NoError(t, err)
		for _, m := range out.Messages {
			dlq = append(dlq, aws.ToString(m.Body))
		}
		return len(dlq) > 0
	}, 30*time.Second, 100*time.Millisecond)
	require.Equal(t, []string{`{"this is": "not an EventBridge event"}`}, dlq)
	require.Zero(t, e.depth())

	recs := e.auditsOf("ops", "aws.event")
	require.Len(t, recs, 3, "one record per receive (maxReceiveCount 3)")
	var counts []string
	for _, r := range recs {
		require.Equal(t, schemas.OutcomeRefused, r.Outcome)
		require.Equal(t, "true", r.Detail["kept"])
		require.Contains(t, r.Detail["reason"], "no id")
		counts = append(counts, r.Detail["receive_count"])
	}
	slices.Sort(counts)
	require.Equal(t, []string{"1", "2", "3"}, counts)
	require.Equal(t, 3.0, e.count(awsevents.OutcomeMalformed))
	reqs, _ := e.rotations()
	require.Empty(t, reqs)
}

// TestRefusedIgnoredAndInfoMessages: messages rekey does not act on are
// audited and deleted; changes that leave AWSCURRENT alone are reported
// without a sync request.
func TestRefusedIgnoredAndInfoMessages(t *testing.T) {
	e := newEnv(t)
	e.start()
	unknown := e.putEvent(e.withSecretID(e.fixture("rotation_succeeded"), "arn:aws:secretsmanager:us-east-1:000000000000:secret:hooli/key-AAAAAA"))
	e.putEvent(e.withSecretID(e.fixture("rotation_succeeded"), "not-a-valid/rekey-id"))
	e.putEvent(e.fixture("put_secret_value_pending"))
	e.putEvent(e.fixture("put_secret_value_denied"))
	failedID := e.putEvent(e.fixture("rotation_failed")) // names no version: unconfirmed
	e.putEvent(e.fixture("rotation_started"))
	e.putEvent(e.fixture("update_secret_version_stage_pending"))
	e.putEvent(e.fixture("tag_resource"))
	e.send(`{"version":"0","id":"e1","detail-type":"EC2 Instance State-change Notification","source":"aws.ec2","detail":{"state":"running"}}`)
	e.waitHandled(9)

	reqs, _ := e.rotations()
	require.Empty(t, reqs, "none of these changed AWSCURRENT")
	changes, _ := e.changes()
	byEvent := map[string]schemas.ExternalChange{}
	for _, c := range changes {
		byEvent[c.Event+"/"+c.Outcome] = c
	}
	require.Len(t, changes, 4)
	require.Contains(t, byEvent, "PutSecretValue/info")
	require.Contains(t, byEvent, "RotationStarted/info")
	require.Contains(t, byEvent, "UpdateSecretVersionStage/info")
	require.NotContains(t, byEvent, "RotationFailed/failed", "a failure without a version is not published")
	fa := e.auditsOf("acme", "external_change")
	require.Len(t, fa, 5)
	var unconfirmed []schemas.AuditRecord
	for _, r := range fa {
		if r.Outcome == schemas.OutcomeUnconfirmed {
			unconfirmed = append(unconfirmed, r)
		}
	}
	require.Len(t, unconfirmed, 1)
	require.Equal(t, failedID, unconfirmed[0].Detail["event_id"])
	require.Contains(t, unconfirmed[0].Detail["reason"], "RotationFailed names no version")
	require.Equal(t, 1.0, e.count(awsevents.OutcomeUnconfirmed))

	refused := e.auditsOf("ops", "aws.event")
	reasons := map[string]string{}
	for _, r := range refused {
		reasons[r.Detail["event_id"]] = r.Detail["reason"]
	}
	require.Contains(t, reasons[unknown], "is not a secret rekey manages")
	require.Contains(t, reasons["e1"], "not an event rekey acts on")
	require.Len(t, refused, 3, "unknown secret, invalid ref, EC2 event: %v", reasons)
	ignored := e.auditsOf("acme", "aws.event")
	require.Len(t, ignored, 1)
	require.Contains(t, ignored[0].Detail["reason"], "TagResource is not one rekey acts on")
	require.Equal(t, 2.0, e.count(awsevents.OutcomeRefused))
	require.Equal(t, 2.0, e.count(awsevents.OutcomeIgnored))
	require.Equal(t, 4.0, e.count(awsevents.OutcomePublished))
}

// TestAllowLists: an event about a secret of a tenant outside
// triggers.awsevents.tenants is refused, audited to that tenant, deleted;
// so is an event from an account outside triggers.awsevents.accounts.
func TestAllowLists(t *testing.T) {
	e := newEnv(t)
	e.cfg.Tenants = []string{"acme"}
	e.cfg.Accounts = []string{kumotest.Account}
	e.start()
	e.putEvent(e.withSecretID(e.fixture("rotation_succeeded"), e.sm.ARN("globex/openai-key")))
	e.send(string(fixture(t, "rotation_succeeded"))) // account 123456789012
	e.waitHandled(2)
	reqs, _ := e.rotations()
	require.Empty(t, reqs)
	byAccount := e.auditsOf("ops", "aws.event")
	require.Len(t, byAccount, 1)
	require.Equal(t, "123456789012", byAccount[0].Detail["account"])
	require.Contains(t, byAccount[0].Detail["reason"], "account is not in triggers.awsevents.accounts")
	recs := e.auditsOf("globex", "aws.event")
	require.Len(t, recs, 1)
	require.Equal(t, schemas.OutcomeRefused, recs[0].Outcome)
	require.Equal(t, "openai-key", recs[0].Secret)
	require.Contains(t, recs[0].Detail["reason"], "tenant is not in triggers.awsevents.tenants")
}

// TestGuardDutyFindings: a finding a rule maps to a tenant at or above the
// rule's severity revokes the tenant; below it, or mapped by no rule, it is
// audited and deleted.
func TestGuardDutyFindings(t *testing.T) {
	e := newEnv(t)
	e.start()
	keyID := e.putEvent(e.fixture("guardduty_access_key"))                                        // severity 8, acme's key, rule min high
	tagID := e.putEvent(e.fixture("guardduty_instance_tags"))                                     // severity 5, TenantId=globex, rule min medium
	lowID := e.putEvent(e.fixture("guardduty_eks_tags"))                                          // severity 2, TenantId=acme: below
	otherKey := e.putEvent(withKey(t, e.fixture("guardduty_access_key"), "ASIAEXAMPLEOTHERKEY1")) // no rule
	e.waitHandled(4)

	revs, evs := e.revocations()
	require.Len(t, revs, 2)
	got := map[string]schemas.RevocationRequested{}
	ids := map[string]string{}
	for i, r := range revs {
		got[r.Tenant] = r
		ids[r.Tenant] = evs[i].ID
	}
	require.Equal(t, schemas.ActionRevoke, got["acme"].Action)
	require.Equal(t, schemas.Trigger{Kind: schemas.TriggerAWS, Source: "sqs", Actor: keyID}, got["acme"].Trigger)
	require.Contains(t, got["acme"].Reason, "rule acme-agent-keys")
	require.Equal(t, "aws-"+keyID+"-revoke-acme", ids["acme"])
	require.Equal(t, schemas.Trigger{Kind: schemas.TriggerAWS, Source: "sqs", Actor: tagID}, got["globex"].Trigger)
	require.Contains(t, got["globex"].Reason, "rule tenant-tag")
	require.Equal(t, "aws-"+tagID+"-revoke-globex", ids["globex"])

	var accepted, below []string
	for _, r := range e.auditsOf("acme", "revocation.revoke.request") {
		switch r.Outcome {
		case schemas.OutcomeAccepted:
			accepted = append(accepted, r.Detail["event_id"])
			require.Equal(t, "access_key_id", r.Detail["matched"])
		case schemas.OutcomeRefused:
			below = append(below, r.Detail["event_id"])
			require.Contains(t, r.Detail["reason"], "severity 2 is below min_severity 4 of rule tenant-tag")
		}
	}
	require.Equal(t, []string{keyID}, accepted)
	require.Equal(t, []string{lowID}, below)
	gl := e.auditsOf("globex", "revocation.revoke.request")
	require.Len(t, gl, 1)
	require.Equal(t, "tag:TenantId", gl[0].Detail["matched"])
	unmapped := e.auditsOf("ops", "aws.event")
	require.Len(t, unmapped, 1)
	require.Equal(t, otherKey, unmapped[0].Detail["event_id"])
	require.Contains(t, unmapped[0].Detail["reason"], "no guardduty rule maps the finding to a tenant")
	require.NotContains(t, e.logs.String(), "Not A Tenant!", "a tag value that is no tenant is not repeated")
}

func withKey(t *testing.T, body []byte, key string) []byte {
	t.Helper()
	return []byte(strings.ReplaceAll(string(body), "ASIAEXAMPLEACMEAGENT", key))
}

// TestNATSUnavailableKeepsMessages: a message whose publish JetStream did
// not acknowledge stays on the queue and is handled when it comes back;
// while NATS is down nothing is received, so no receive counts toward the
// dead-letter queue.
func TestNATSUnavailableKeepsMessages(t *testing.T) {
	e := newEnv(t)
	e.putVersion("acme/openai-key", "a1b2c3d4-0000-4000-8000-000000000001")
	e.start()
	ctx := context.Background()

	// JetStream refuses the request: its stream is gone.
	require.NoError(t, e.bus.JS.DeleteStream(ctx, schemas.StreamRotate))
	id := e.putEvent(e.fixture("rotation_succeeded"))
	require.Eventually(t, func() bool { return e.count(awsevents.OutcomeUnavailable) >= 1 }, 20*time.Second, 50*time.Millisecond)
	require.Equal(t, 1, e.depth(), "the message was deleted")
	require.NoError(t, e.bus.EnsureStreams(ctx))
	e.waitHandled(2)
	reqs, evs := e.rotations()
	require.Len(t, reqs, 1)
	require.Equal(t, "aws-"+id+"-sync", evs[0].ID)
	changes, _ := e.changes()
	require.Len(t, changes, 1, "the external change published before the failure was not published twice")

	// NATS is down: nothing is received; the message waits on the queue.
	published := e.count(awsevents.OutcomePublished)
	e.nats.Shutdown()
	e.nats.WaitForShutdown()
	require.Eventually(t, func() bool { return !e.bus.NC.IsConnected() }, 10*time.Second, 20*time.Millisecond)
	id2 := e.putEvent(e.fixture("put_secret_value_current"))
	// A long poll under way when NATS went away may still receive it:
	// then it is released at once, unhandled (kumo still counts a
	// released message as in flight until the next receive).
	time.Sleep(2 * time.Second)
	require.Equal(t, 1, e.depth(), "the message is not on the queue")
	received := e.metric("rekey_aws_messages_received_total", "", "")
	require.Equal(t, published, e.count(awsevents.OutcomePublished), "handled while NATS was down")
	time.Sleep(2 * time.Second)
	require.Equal(t, received, e.metric("rekey_aws_messages_received_total", "", ""), "received while NATS was down")
	require.Equal(t, 1, e.depth())

	e.nats = testutil.StartNATS(t, e.natsPort, e.natsDir)
	require.Eventually(t, func() bool {
		reqs, _ := e.rotations()
		return len(reqs) == 2
	}, 30*time.Second, 100*time.Millisecond)
	_, evs = e.rotations()
	require.Equal(t, "aws-"+id2+"-sync", evs[1].ID)
	require.Eventually(t, func() bool { return e.depth() == 0 }, 10*time.Second, 50*time.Millisecond)
}
