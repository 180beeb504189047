package siem_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/siem"
)

// TestCanaryAlertTripsKillSwitch: an alert naming a canary secret
// (policy.canary) revokes its tenant although its rule only rotates: no
// one uses a canary, so the alert is proof of a leak. The canary's own
// rotation is not requested; another tenant is untouched.
func TestCanaryAlertTripsKillSwitch(t *testing.T) {
	e := newEnv(t, 0)
	body := alertmanager("c0ffee00c0ffee00", map[string]string{
		"alertname": "LeakedCredential", "tenant": "acme", "secret": "decoy-key", "severity": "critical",
	})
	code, _, resp := e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code, resp.Error)
	require.Equal(t, siem.OutcomeAccepted, resp.Alerts[0].Outcome)
	require.Equal(t, siem.ActionRevoke, resp.Alerts[0].Action)
	require.Empty(t, e.rotations())
	revs := e.revocations()
	require.Len(t, revs, 1)
	require.Equal(t, "acme", revs[0].Tenant)
	require.Equal(t, schemas.ActionRevoke, revs[0].Action)
	require.Equal(t, schemas.TriggerSIEM, revs[0].Trigger.Kind)

	// The same rule naming an ordinary secret still rotates it.
	body = alertmanager("c0ffee00c0ffee01", map[string]string{
		"alertname": "LeakedCredential", "tenant": "acme", "secret": "openai-key", "severity": "critical",
	})
	code, _, resp = e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code, resp.Error)
	require.Len(t, e.rotations(), 1)
	require.Len(t, e.revocations(), 1)
}
