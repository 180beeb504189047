package siem_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
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
