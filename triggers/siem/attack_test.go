package siem_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

// manyAlerts is one Alertmanager delivery of n firing alerts, each for
// acme/openai-key.
func manyAlerts(n int) []byte {
	alerts := make([]map[string]any, n)
	for i := range alerts {
		alerts[i] = map[string]any{"status": "firing", "fingerprint": fmt.Sprintf("fp%06d", i),
			"labels":   map[string]string{"alertname": "LeakedCredential", "tenant": "acme", "secret": "openai-key", "n": fmt.Sprint(i)},
			"startsAt": "2026-03-02T08:14:05Z", "endsAt": "0001-01-01T00:00:00Z"}
	}
	b, _ := json.Marshal(map[string]any{"version": "4", "status": "firing", "receiver": "rekey", "groupKey": "{}:{}", "alerts": alerts})
	return b
}

// TestAttackManyAlertsInOneDelivery (issue 19, finding 7): one delivery
// of 2,000 alerts is refused with 413 naming max_alerts, and queues
// nothing; the rate limit counts alerts, so deliveries within max_alerts
// spend one token each.
func TestAttackManyAlertsInOneDelivery(t *testing.T) {
	e := newEnv(t, 0)
	code, _, resp := e.post(e.url, "capped", manyAlerts(2000), bearer(bearerToken))
	require.Equal(t, http.StatusRequestEntityTooLarge, code)
	require.Contains(t, resp.Error, "2000 alerts is over source capped's max_alerts 3")
	require.Equal(t, "alerts", resp.Field)
	require.Empty(t, e.rotations(), "nothing queued")
	require.Empty(t, e.audits())

	// Burst 5 alerts: 3 pass, the next 3 are over the limit (one token left).
	code, _, _ = e.post(e.url, "capped", manyAlerts(3), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	n := len(e.rotations())
	code, h, resp := e.post(e.url, "capped", manyAlerts(3), bearer(bearerToken))
	require.Equal(t, http.StatusTooManyRequests, code, "%+v", resp)
	require.NotEmpty(t, h.Get("Retry-After"))
	require.Contains(t, resp.Error, "alerts/s")
	require.Len(t, e.rotations(), n, "nothing more queued")
}

// firing is one Alertmanager delivery of one firing alert for
// acme/openai-key with the given fingerprint and startsAt ("" for none).
func firing(fp, startsAt string) []byte {
	a := map[string]any{"status": "firing", "fingerprint": fp,
		"labels": map[string]string{"alertname": "LeakedCredential", "tenant": "acme", "secret": "openai-key"}}
	if startsAt != "" {
		a["startsAt"] = startsAt
	}
	b, _ := json.Marshal(map[string]any{"version": "4", "status": "firing", "receiver": "rekey", "groupKey": "{}:{}", "alerts": []any{a}})
	return b
}

// TestAttackReplayAfterDedupWindow (issue 20, finding 6): a captured
// signed delivery replayed after the dedup window. With require_timestamp
// the alert's own firing time decides: the replay is refused as stale
// (422 naming fired_at, audited) and queues nothing; an alert without a
// firing time, or one from the future, is refused too; a new firing of
// the same alert (a new startsAt) is a new alert and acts.
func TestAttackReplayAfterDedupWindow(t *testing.T) {
	e := newEnv(t, 0)
	captured := firing("fp-replay", time.Now().UTC().Format(time.RFC3339Nano))
	code, _, resp := e.post(e.url, "stamped", captured, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code, "%+v", resp)
	require.Len(t, e.rotations(), 1)

	time.Sleep(2100 * time.Millisecond) // past the source's 2 s dedup window
	code, _, resp = e.post(e.url, "stamped", captured, bearer(bearerToken))
	require.Equal(t, http.StatusUnprocessableEntity, code, "%+v", resp)
	require.Equal(t, "fired_at", resp.Field)
	require.Contains(t, resp.Error, "stale or replayed")
	require.Len(t, e.rotations(), 1, "the replay queued nothing")

	for _, body := range [][]byte{firing("fp-none", ""), firing("fp-future", time.Now().Add(time.Hour).UTC().Format(time.RFC3339))} {
		code, _, resp = e.post(e.url, "stamped", body, bearer(bearerToken))
		require.Equal(t, http.StatusUnprocessableEntity, code, "%+v", resp)
		require.Equal(t, "fired_at", resp.Field)
	}
	require.Len(t, e.rotations(), 1)
	refused := 0
	for _, a := range e.audits() {
		if a.Outcome == schemas.OutcomeRefused {
			refused++
		}
	}
	require.Equal(t, 3, refused, "every refusal is audited")

	// The same alert firing again later is a new alert.
	code, _, resp = e.post(e.url, "stamped", firing("fp-replay", time.Now().UTC().Format(time.RFC3339Nano)), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code, "%+v", resp)
	require.Len(t, e.rotations(), 2)
}

// TestFiringTimeInDedupKey: without require_timestamp, an alert of any
// age acts (a compromise alert delayed by an outage still counts), the
// same firing delivered twice acts once, and a new firing of the same
// fingerprint (another startsAt) acts again within the window.
func TestFiringTimeInDedupKey(t *testing.T) {
	e := newEnv(t, 0)
	old := firing("fp-key", "2026-03-02T08:14:05Z")
	for range 2 {
		code, _, resp := e.post(e.url, "short-window", old, bearer(bearerToken))
		require.Equal(t, http.StatusAccepted, code, "%+v", resp)
	}
	require.Len(t, e.rotations(), 1, "the same firing acts once")
	code, _, resp := e.post(e.url, "short-window", firing("fp-key", "2026-03-02T09:00:00Z"), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code, "%+v", resp)
	require.Len(t, e.rotations(), 2, "a new firing acts")
}
