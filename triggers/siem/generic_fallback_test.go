package siem_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fallbackYAML: generic sources with fallbacks, constants and a composed
// dedup key (issue 16, items 2 and 3).
const fallbackYAML = `
sources:
  composed:
    format: generic
    tenants: [acme]
    auth:
      bearer: {token: ` + bearerToken + `}
    generic:
      id: [alertId, detection.id]
      dedup_key: [rule, user.name, resource]
      fired_at: [firedAt, createdAt]
      name: [title, rule]
      severity: [severity, "=critical"]
      labels:
        tenant: "target.tenant | tenant | =acme"
        secret: "target.secret | secret"
    rules:
      - name: leaked
        tenant_label: tenant
        secret_label: secret
        min_severity: warning
`

func TestGenericFallbacks(t *testing.T) {
	e := newEnvWith(t, fallbackYAML)
	now := time.Now().UTC()
	t1 := now.Add(-2 * time.Minute).Format(time.RFC3339)
	t2 := now.Add(-time.Minute).Format(time.RFC3339)

	// The second path of id, the constant severity and tenant.
	code, _, resp := e.post(e.url, "composed", []byte(`{"detection":{"id":"d-1"},"createdAt":"`+t1+`","secret":"openai-key"}`), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code, "%+v", resp)
	require.Equal(t, "d-1", resp.Alerts[0].ID)
	require.Equal(t, "critical", resp.Alerts[0].Severity.String())
	require.Len(t, e.rotations(), 1)
	require.Equal(t, "acme", e.rotations()[0].Tenant)

	// No id (Panther's alertId null): the composed key and the firing time.
	body := func(user, fired string) []byte {
		return []byte(`{"alertId":null,"rule":"AWS.IAM.KeyLeak","user":{"name":"` + user + `"},"resource":"arn:x","firedAt":"` + fired + `","target":{"tenant":"acme","secret":"stripe-key"}}`)
	}
	code, _, first := e.post(e.url, "composed", body("alice", t1), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code, "%+v", first)
	require.Regexp(t, `^key:[0-9a-f]{32}$`, first.Alerts[0].ID, "a digest: the values are not repeated")
	require.Len(t, e.rotations(), 2)

	// A repeat of that firing is a duplicate...
	code, _, resp = e.post(e.url, "composed", body("alice", t1), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, "duplicate", resp.Alerts[0].Outcome)
	require.Equal(t, first.RequestIDs, resp.RequestIDs)
	require.Len(t, e.rotations(), 2)

	// ...a second firing (a later time) and another user are not merged.
	code, _, resp = e.post(e.url, "composed", body("alice", t2), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, "accepted", resp.Alerts[0].Outcome)
	require.Equal(t, first.Alerts[0].ID, resp.Alerts[0].ID, "same alert, another firing")
	code, _, resp = e.post(e.url, "composed", body("bob", t1), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, "accepted", resp.Alerts[0].Outcome)
	require.NotEqual(t, first.Alerts[0].ID, resp.Alerts[0].ID)
	require.Len(t, e.rotations(), 4)

	// No id and no firing time: refused, nothing queued.
	code, _, resp = e.post(e.url, "composed", []byte(`{"rule":"r","target":{"secret":"openai-key"}}`), bearer(bearerToken))
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, resp.Error, "firing time")
	require.Len(t, e.rotations(), 4)
}

// TestAttackUnrenderedTemplate (issue 16, item 3): bodies whose mapped
// fields still hold template placeholders are refused with 422 naming the
// field, without repeating the value, and change nothing.
func TestAttackUnrenderedTemplate(t *testing.T) {
	e := newEnvWith(t, fallbackYAML)
	fired := time.Now().UTC().Format(time.RFC3339)
	for _, tc := range []struct{ name, body, field, kind string }{
		{"kibana id", `{"alertId":"{{alert.id}}","firedAt":"` + fired + `","secret":"openai-key"}`, "id", "{{...}}"},
		{"sumo name", `{"alertId":"a1","title":"{{Name}}","firedAt":"` + fired + `","secret":"openai-key"}`, "name", "{{...}}"},
		{"triple mustache", `{"alertId":"a1","firedAt":"` + fired + `","secret":"{{{context.secret}}}"}`, "labels.secret", "{{...}}"},
		{"datadog var", `{"alertId":"$ALERT_ID","firedAt":"` + fired + `","secret":"openai-key"}`, "id", "$VAR"},
		{"shell var", `{"alertId":"a1","firedAt":"` + fired + `","tenant":"${TENANT}","secret":"openai-key"}`, "labels.tenant", "${...}"},
		{"splunk token", `{"alertId":"a1","firedAt":"` + fired + `","secret":"$result.secret$"}`, "labels.secret", "$...$"},
		{"angle", `{"alertId":"a1","firedAt":"` + fired + `","target":{"tenant":"<tenant>"},"secret":"openai-key"}`, "labels.tenant", "<...>"},
		{"severity", `{"alertId":"a1","severity":"{{rule.severity}}","firedAt":"` + fired + `","secret":"openai-key"}`, "severity", "{{...}}"},
		{"fired_at", `{"alertId":"a1","firedAt":"{{date}}","secret":"openai-key"}`, "fired_at", "{{...}}"},
		{"dedup key", `{"rule":"r","user":{"name":"{{user}}"},"firedAt":"` + fired + `","secret":"openai-key"}`, "dedup_key[1]", "{{...}}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, resp := e.post(e.url, "composed", []byte(tc.body), bearer(bearerToken))
			require.Equal(t, http.StatusUnprocessableEntity, code, "%+v", resp)
			require.Equal(t, tc.field, resp.Field)
			require.Contains(t, resp.Error, "field "+tc.field+" holds an unrendered template placeholder ("+tc.kind+")")
			e.nothingQueued()
		})
	}
	// Rendered values with a "<", a "$" or braces are not placeholders.
	code, _, resp := e.post(e.url, "composed", []byte(`{"alertId":"a<1>b","title":"cost $5 {x}","firedAt":"`+fired+`","secret":"openai-key"}`), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code, "%+v", resp)
}
