package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// TestSyncRequest: a version made outside rekey (here written straight
// into the local backend, as AWS does when its own rotation Lambda runs) is
// recorded by a sync request and invalidated at every agent; the same sync
// again changes nothing, and neither writes to the backend.
func TestSyncRequest(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	ctx := context.Background()
	invalidated := make(chan agent.Invalidated, 8)
	a := newAgent(t, d, "acme", "planner-1", func(inv agent.Invalidated) { invalidated <- inv })
	before, err := a.Get(ctx, "openai-key")
	require.NoError(t, err)
	completed, unsub := subscribeEvents(t, d, "acme", schemas.KindRotationCompleted)
	defer unsub()

	// Out of band: a new version promoted without rekey.
	ref := handlers.SecretRef{Tenant: "acme", Secret: "openai-key", Backend: "local", Generator: handlers.Generator{Style: handlers.StyleAPIKey, Length: 40}}
	v, err := d.Local().Create(ctx, ref, "outside-rekey-1")
	require.NoError(t, err)
	require.NoError(t, d.Local().Finish(ctx, ref, v))

	id := publishSync(t, d, "acme", "openai-key", "evt-1")
	done := nextEvent[schemas.RotationCompleted](t, completed, schemas.TypeRotationCompleted, 10*time.Second)
	require.Equal(t, id, done.RequestID)
	require.Equal(t, schemas.RotateModeSync, done.Mode)
	require.Equal(t, v.ID, done.Version)
	require.Equal(t, before.Version, done.PreviousVersion)
	select {
	case inv := <-invalidated:
		require.Equal(t, v.ID, inv.Invalidation.Version)
	case <-time.After(10 * time.Second):
		t.Fatal("the agent was not invalidated")
	}
	after, err := a.Get(ctx, "openai-key")
	require.NoError(t, err)
	require.Equal(t, v.ID, after.Version)
	st, err := d.State().SecretStatus(ctx, "acme", "openai-key")
	require.NoError(t, err)
	require.Equal(t, v.ID, st.Version)
	require.Equal(t, schemas.RotateModeSync, st.LastMode)

	// The same change reported again (another event about it): recorded
	// already, so no event, no invalidation, no new version.
	id2 := publishSync(t, d, "acme", "openai-key", "evt-2")
	require.Eventually(t, func() bool {
		for _, r := range auditRecords(t, d, "acme") {
			if r.RequestID == id2 && r.Action == "rotation.sync" && r.Outcome == schemas.OutcomeCoalesced {
				return true
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond)
	select {
	case e := <-completed:
		t.Fatalf("unexpected completion %s", e.ID)
	case <-time.After(300 * time.Millisecond):
	}
	cur, err := d.Local().Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, v.ID, cur.ID, "a sync wrote to the backend")
	st, err = d.State().SecretStatus(ctx, "acme", "openai-key")
	require.NoError(t, err)
	require.Equal(t, orchestrator.SecretIdle, st.State)
	require.EqualValues(t, 1, st.Rotations)
}

// publishSync publishes a sync request with an id derived from eventID, the
// way triggers/awsevents does, and returns the request id.
func publishSync(t *testing.T, d *running, tenant, secret, eventID string) string {
	t.Helper()
	ev, err := schemas.NewEvent("test", schemas.TypeRotationRequested, tenant, tenant+"/"+secret, schemas.RotationRequested{
		Tenant: tenant, Secret: secret, Reason: "aws RotationSucceeded", Mode: schemas.RotateModeSync,
		Trigger: schemas.Trigger{Kind: schemas.TriggerAWS, Source: "sqs", Actor: eventID}, RequestedAt: time.Now().UTC(),
	})
	require.NoError(t, err)
	ev = ev.WithID("aws-" + eventID + "-sync")
	_, err = d.Bus().Publish(context.Background(), schemas.RotateSubject(tenant, secret), ev)
	require.NoError(t, err)
	return ev.ID
}

// TestDuplicateCloudEvent: the same rotation request (same CloudEvent id)
// published twice on NATS, as a retrying producer does, rotates once.
func TestDuplicateCloudEvent(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	ctx := context.Background()
	ev, err := schemas.NewEvent("test", schemas.TypeRotationRequested, "acme", "acme/openai-key", schemas.RotationRequested{
		Tenant: "acme", Secret: "openai-key", Reason: "producer retry", Trigger: schemas.Trigger{Kind: schemas.TriggerAPI}, RequestedAt: time.Now().UTC(),
	})
	require.NoError(t, err)
	for i := range 2 {
		ack, err := d.Bus().Publish(ctx, schemas.RotateSubject("acme", "openai-key"), ev)
		require.NoError(t, err)
		require.Equal(t, i == 1, ack.Duplicate, "publish %d", i)
	}
	waitHandled(t, d, "acme", []string{ev.ID}, 10*time.Second)
	time.Sleep(500 * time.Millisecond) // a second delivery would have been handled by now
	st, err := d.State().SecretStatus(ctx, "acme", "openai-key")
	require.NoError(t, err)
	require.EqualValues(t, 1, st.Rotations)
}
