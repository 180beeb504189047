package daemon_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// TestTransientFailureRetries: a step that fails twice then works is
// retried with backoff; the rotation completes on the third attempt and
// each failed attempt's staged version is rolled back.
func TestTransientFailureRetries(t *testing.T) {
	var fails atomic.Int32
	d := start(t, testConfig(t, t.TempDir()), daemon.Options{
		StepHook: func(_ context.Context, step string) error {
			if step == handlers.StepSet && fails.Add(1) <= 2 {
				return errors.New("downstream refused the new credential")
			}
			return nil
		},
	})
	id := rotate(t, d, "acme", "billing-db")
	ctx := context.Background()
	require.Eventually(t, func() bool {
		st, err := d.State().SecretStatus(ctx, "acme", "billing-db")
		return err == nil && st.LastRequestID == id && st.State == orchestrator.SecretIdle && st.Announced
	}, 15*time.Second, 10*time.Millisecond)

	ref := handlers.SecretRef{Tenant: "acme", Secret: "billing-db", Backend: "local"}
	staged, err := d.Local().Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, staged)
	st, err := d.State().SecretStatus(ctx, "acme", "billing-db")
	require.NoError(t, err)
	require.Equal(t, "1", st.PreviousVersion)

	var retries, rollbacks int
	var completed *schemas.AuditRecord
	for _, r := range auditRecords(t, d, "acme") {
		if r.RequestID != id {
			continue
		}
		switch {
		case r.Action == "rotation.set" && r.Outcome == schemas.OutcomeRetrying:
			retries++
		case r.Action == "rotation.rollback" && r.Outcome == schemas.OutcomeSucceeded:
			rollbacks++
		case r.Action == "rotation.complete":
			completed = &r
		}
	}
	require.Equal(t, 2, retries)
	require.Equal(t, 2, rollbacks)
	require.NotNil(t, completed)
	require.Equal(t, "3", completed.Detail["attempts"])
}

// TestPermanentFailure: a step that always fails ends, after the last
// attempt, in a rotation.failed event; nothing is promoted or left staged,
// and the request is not redelivered.
func TestPermanentFailure(t *testing.T) {
	var calls atomic.Int32
	d := start(t, testConfig(t, t.TempDir()), daemon.Options{
		StepHook: func(_ context.Context, step string) error {
			if step == handlers.StepTest {
				calls.Add(1)
				return errors.New("new credential does not work")
			}
			return nil
		},
	})
	failedEvents, unsub := subscribeEvents(t, d, "acme", schemas.KindRotationFailed)
	defer unsub()
	id := rotate(t, d, "acme", "openai-key")

	ev := nextEvent[schemas.RotationFailed](t, failedEvents, schemas.TypeRotationFailed, 15*time.Second)
	require.Equal(t, id, ev.RequestID)
	require.Equal(t, handlers.StepTest, ev.Step)
	require.Equal(t, 3, ev.Attempts)
	require.Contains(t, ev.Error, "new credential does not work")

	ctx := context.Background()
	ref := handlers.SecretRef{Tenant: "acme", Secret: "openai-key", Backend: "local"}
	cur, err := d.Local().Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, "1", cur.ID, "a failed rotation promoted a version")
	staged, err := d.Local().Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, staged)
	code, st := api(t, d.HTTPAddr(), http.MethodGet, "/v1/tenants/acme/secrets/openai-key", testToken, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "failed", st["state"])
	require.Contains(t, st["last_error"], "new credential does not work")

	// Terminated, not redelivered: no further attempts after a while.
	n := calls.Load()
	time.Sleep(4 * time.Second) // longer than the test AckWait
	require.Equal(t, n, calls.Load(), "the failed request was redelivered")
}

func subscribeEvents(t testing.TB, d *running, tenant, kind string) (<-chan schemas.Event, func()) {
	t.Helper()
	ch := make(chan schemas.Event, 16)
	sub, err := d.Bus().NC.Subscribe(schemas.EventsSubject(tenant, kind), func(m *nats.Msg) {
		if ev, err := schemas.Decode(m.Data); err == nil {
			ch <- ev
		}
	})
	require.NoError(t, err)
	require.NoError(t, d.Bus().NC.Flush())
	return ch, func() { _ = sub.Unsubscribe() }
}

// nextEvent decodes the next event of ch as a typ payload, failing the test
// after timeout.
func nextEvent[T any](t testing.TB, ch <-chan schemas.Event, typ string, timeout time.Duration) T {
	t.Helper()
	var out T
	select {
	case e := <-ch:
		require.NoError(t, e.DecodeData(typ, &out))
	case <-time.After(timeout):
		t.Fatalf("no %s event within %s", typ, timeout)
	}
	return out
}

// TestLostAnnouncementIsRepaired: a promotion recorded in the status whose
// completion event and audit record were not written (rekeyd killed in
// between, or the publish failed) is announced before the secret's next
// request is handled, so agents still hear of it.
func TestLostAnnouncementIsRepaired(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	ctx := context.Background()
	first := rotate(t, d, "acme", "openai-key")
	require.Eventually(t, func() bool {
		st, err := d.State().SecretStatus(ctx, "acme", "openai-key")
		return err == nil && st.LastRequestID == first && st.Announced
	}, 10*time.Second, 10*time.Millisecond)

	// Pretend the announcement of that rotation was lost.
	_, err := d.State().UpdateSecretStatus(ctx, "acme", "openai-key", func(st *orchestrator.SecretStatus) error {
		st.Announced = false
		return nil
	})
	require.NoError(t, err)
	completed, unsub := subscribeEvents(t, d, "acme", schemas.KindRotationCompleted)
	defer unsub()
	second := rotate(t, d, "acme", "openai-key")

	seen := map[string]string{}
	deadline := time.After(15 * time.Second)
	for len(seen) < 2 {
		select {
		case ev := <-completed:
			var done schemas.RotationCompleted
			require.NoError(t, ev.DecodeData(schemas.TypeRotationCompleted, &done))
			seen[done.RequestID] = ev.ID
		case <-deadline:
			t.Fatalf("completions seen: %v", seen)
		}
	}
	require.Equal(t, "done-"+first+"-2", seen[first], "the lost announcement was made again, with its derived id")
	require.Contains(t, seen, second)
	// Here the first announcement was not really lost, so the derived ids
	// make JetStream keep one copy of each: no duplicate record or event.
	completes := 0
	for _, r := range auditRecords(t, d, "acme") {
		if r.Action == "rotation.complete" && r.RequestID == first {
			completes++
		}
	}
	require.Equal(t, 1, completes, "the re-announcement duplicated the audit record")
	stored := 0
	for _, m := range streamMsgs(t, d, schemas.StreamEvents) {
		if m.Header.Get("Nats-Msg-Id") == "done-"+first+"-2" {
			stored++
		}
	}
	require.Equal(t, 1, stored)
	// The status records "announced" just after the event is out.
	require.Eventually(t, func() bool {
		st, err := d.State().SecretStatus(ctx, "acme", "openai-key")
		return err == nil && st.Announced
	}, 5*time.Second, 5*time.Millisecond)
}

// TestRevocationRetriesFailedParts: a secret whose rotation fails for a
// whole round during a revocation is retried in a second round, its
// progress is published (retrying, then succeeded), and the report counts
// it as retried, not failed.
func TestRevocationRetriesFailedParts(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	d := start(t, testConfig(t, t.TempDir()), daemon.Options{
		StepHook: func(_ context.Context, step string) error {
			if step == handlers.StepSet && failing.Load() {
				return errors.New("issuer unavailable")
			}
			return nil
		},
	})
	progress, unsubP := subscribeEvents(t, d, "globex", schemas.KindRevocationProgress)
	defer unsubP()
	completed, unsubC := subscribeEvents(t, d, "globex", schemas.KindRevocationCompleted)
	defer unsubC()
	code, body := api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/globex/revoke", testToken, `{"reason":"test"}`)
	require.Equal(t, http.StatusAccepted, code, "body %v", body)

	var outcomes []string
	var last schemas.RevocationProgress
	deadline := time.After(30 * time.Second)
	for last.Total == 0 || last.Done < last.Total {
		select {
		case e := <-progress:
			require.NoError(t, e.DecodeData(schemas.TypeRevocationProgress, &last))
			outcomes = append(outcomes, last.Item+":"+last.Outcome)
			if last.Outcome == schemas.OutcomeRetrying {
				require.Contains(t, last.Error, "issuer unavailable")
				failing.Store(false) // the next round works
			}
		case <-deadline:
			t.Fatalf("revocation did not finish; progress so far %v", outcomes)
		}
	}
	require.True(t, slices.ContainsFunc(outcomes, func(o string) bool { return strings.HasSuffix(o, ":"+schemas.OutcomeRetrying) }), "outcomes %v", outcomes)
	require.Equal(t, 0, last.Failed)

	rep := nextEvent[schemas.RevocationCompleted](t, completed, schemas.TypeRevocationCompleted, 10*time.Second)
	require.False(t, rep.Failed, "report %+v", rep)
	retried := 0
	for _, p := range rep.Parts {
		retried += p.Retried
		require.Zero(t, p.Failed, "part %+v", p)
	}
	require.GreaterOrEqual(t, retried, 1, "report %+v", rep)
}

// TestLostLockStopsTheRotation: when a rotation's lock is lost mid-saga
// (here deleted, as if it had expired and another replica could take it),
// the rotation stops before it promotes; its request is redelivered and
// completed once, later, under a new lock.
func TestLostLockStopsTheRotation(t *testing.T) {
	var once sync.Once
	var d *running
	lostSeen := make(chan struct{})
	d = start(t, testConfig(t, t.TempDir()), daemon.Options{
		StepHook: func(ctx context.Context, step string) error {
			if step != handlers.StepTest {
				return nil
			}
			var err error
			once.Do(func() {
				kv, kerr := d.Bus().JS.KeyValue(context.Background(), orchestrator.BucketLocks)
				if kerr != nil {
					err = kerr
					return
				}
				if err = kv.Delete(context.Background(), "rotate.acme.billing-db"); err != nil {
					return
				}
				select { // hold the step until the rotator notices
				case <-ctx.Done():
					close(lostSeen)
					err = context.Cause(ctx)
				case <-time.After(10 * time.Second):
					err = errors.New("the rotation did not notice it lost its lock")
				}
			})
			return err
		},
	})
	ctx := context.Background()
	id := rotate(t, d, "acme", "billing-db")
	select {
	case <-lostSeen:
	case <-time.After(15 * time.Second):
		t.Fatal("the lost lock was not noticed")
	}
	waitHandled(t, d, "acme", []string{id}, 30*time.Second)
	st, err := d.State().SecretStatus(ctx, "acme", "billing-db")
	require.NoError(t, err)
	require.Equal(t, "1", st.PreviousVersion, "more than one promotion")
	require.EqualValues(t, 1, st.Rotations)
	ref := handlers.SecretRef{Tenant: "acme", Secret: "billing-db", Backend: "local"}
	staged, err := d.Local().Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, staged)
	require.Contains(t, d.logs.String(), "rotation lock lost")
}
