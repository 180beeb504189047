package siem_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/siem"
)

// TestFormats posts each vendor's example payload, signed or with a
// token, and reads what reached the ROTATE and REVOKE streams.
func TestFormats(t *testing.T) {
	for _, tc := range []struct {
		name, source, fixture string
		sign                  signer
		rotations             []string // tenant/secret
		revocations           []string // tenant
		rule                  string
	}{
		{"alertmanager bearer", "am-bearer", "alertmanager/firing.json", bearer(bearerToken), []string{"acme/openai-key"}, nil, "leaked-credential"},
		{"alertmanager hmac sha256=", "am-hmac", "alertmanager/firing.json", hmacHeader("X-Hub-Signature-256", "sha256=", hmacSecret), []string{"acme/openai-key"}, nil, "leaked-credential"},
		{"grafana hmac with timestamp", "grafana-hmac", "grafana/firing.json", grafanaSigned(hmacSecret, 10*time.Second), []string{"acme/stripe-key"}, nil, "payments-key-misuse"},
		{"grafana basic", "grafana-basic", "grafana/firing.json", basic("grafana", basicPass), []string{"acme/stripe-key"}, nil, "rule-1"},
		{"splunk basic", "splunk-basic", "splunk/alert.json", basic(basicUser, basicPass), []string{"globex/db-password"}, nil, "db-brute-force"},
		{"splunk bearer", "splunk-bearer", "splunk/alert.json", bearer(bearerToken), []string{"globex/db-password"}, nil, "rule-1"},
		{"datadog bearer revoke", "datadog-bearer", "datadog/triggered.json", bearer(bearerToken), nil, []string{"globex"}, "token-replay"},
		{"datadog hmac base64 all secrets", "datadog-hmac", "datadog/triggered.json", hmacBase64("X-Signature", hmacSecret), []string{"globex/db-password", "globex/openai-key"}, nil, "rule-1"},
		{"pagerduty v1=", "pd-hmac", "pagerduty/triggered.json", pdSigned(hmacSecret), []string{"acme/stripe-key"}, nil, "card-testing"},
		{"pagerduty two signatures, second valid", "pd-hmac", "pagerduty/triggered.json", pdSigned(hmacSecret2, hmacSecret), []string{"acme/stripe-key"}, nil, "card-testing"},
		{"pagerduty two signatures, first valid", "pd-hmac", "pagerduty/triggered.json", pdSigned(hmacSecret, hmacSecret2), []string{"acme/stripe-key"}, nil, "card-testing"},
		{"generic hmac from env", "generic-hmac", "generic/detections.json", hmacHeader("X-Signature-256", "sha256=", hmacSecret), []string{"acme/db-password"}, nil, "swept"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 0)
			code, _, resp := e.post(e.url, tc.source, load(t, tc.fixture), tc.sign)
			require.Equal(t, http.StatusAccepted, code, "%+v", resp)
			require.Len(t, resp.RequestIDs, len(tc.rotations)+len(tc.revocations))

			var got []string
			for _, r := range e.rotations() {
				got = append(got, r.Tenant+"/"+r.Secret)
				require.Equal(t, schemas.Trigger{Kind: schemas.TriggerSIEM, Source: tc.source, Actor: resp.Alerts[0].ID}, r.Trigger)
				require.Contains(t, r.Reason, tc.rule)
			}
			require.ElementsMatch(t, tc.rotations, got)
			got = nil
			for _, r := range e.revocations() {
				got = append(got, r.Tenant)
				require.Equal(t, schemas.ActionRevoke, r.Action)
				require.Equal(t, schemas.TriggerSIEM, r.Trigger.Kind)
			}
			require.ElementsMatch(t, tc.revocations, got)

			// Every request is audited as accepted, with the alert's id.
			var accepted int
			for _, a := range e.audits() {
				if a.Outcome == schemas.OutcomeAccepted {
					accepted++
					require.Equal(t, "siem:"+tc.source, a.Actor)
					require.Equal(t, resp.Alerts[0].ID, a.Detail["alert_id"])
					require.Equal(t, tc.rule, a.Detail["rule"])
					require.Contains(t, resp.RequestIDs, a.RequestID)
				}
			}
			require.Equal(t, len(resp.RequestIDs), accepted)
		})
	}
}

// TestAuthentication: every failure is a 401 and publishes nothing.
func TestAuthentication(t *testing.T) {
	e := newEnv(t, 0)
	am := load(t, "alertmanager/firing.json")
	gr := load(t, "grafana/firing.json")
	pd := load(t, "pagerduty/triggered.json")
	for _, tc := range []struct {
		name, source string
		body         []byte
		sign         signer
		reason       string
	}{
		{"no token", "am-bearer", am, noAuth, "missing Authorization"},
		{"wrong token", "am-bearer", am, bearer("tok-wrong-000000000000"), "invalid bearer token"},
		{"basic on a bearer source", "am-bearer", am, basic(basicUser, basicPass), "must be a Bearer token"},
		{"no signature", "am-hmac", am, noAuth, "missing X-Hub-Signature-256"},
		{"signature with another secret", "am-hmac", am, hmacHeader("X-Hub-Signature-256", "sha256=", hmacSecret2), "invalid signature"},
		{"signature without its prefix", "am-hmac", am, hmacHeader("X-Hub-Signature-256", "", hmacSecret), "invalid signature"},
		{"signature of another body", "am-hmac", am, func(r *http.Request, _ []byte) {
			r.Header.Set("X-Hub-Signature-256", "sha256="+siem.SignHMAC([]byte(hmacSecret), []byte("{}")))
		}, "invalid signature"},
		{"stale timestamp", "grafana-hmac", gr, grafanaSigned(hmacSecret, 10*time.Minute), "away from now"},
		{"future timestamp", "grafana-hmac", gr, grafanaSigned(hmacSecret, -10*time.Minute), "away from now"},
		{"no timestamp", "grafana-hmac", gr, hmacHeader("X-Grafana-Alerting-Signature", "", hmacSecret), "missing X-Grafana-Alerting-Timestamp"},
		{"timestamp not in the signature", "grafana-hmac", gr, func(r *http.Request, body []byte) {
			r.Header.Set("X-Grafana-Alerting-Timestamp", strconv.FormatInt(time.Now().Unix(), 10))
			r.Header.Set("X-Grafana-Alerting-Signature", siem.SignHMAC([]byte(hmacSecret), body))
		}, "invalid signature"},
		{"pagerduty, no valid signature", "pd-hmac", pd, pdSigned(hmacSecret2, "whsec-another-one-000000"), "invalid signature"},
		{"wrong basic password", "splunk-basic", load(t, "splunk/alert.json"), basic(basicUser, "pw-wrong-00000000000"), "invalid username or password"},
		{"wrong basic user", "splunk-basic", load(t, "splunk/alert.json"), basic("admin", basicPass), "invalid username or password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, h, resp := e.post(e.url, tc.source, tc.body, tc.sign)
			require.Equal(t, http.StatusUnauthorized, code)
			require.Contains(t, resp.Error, tc.reason)
			if strings.HasPrefix(tc.source, "am-bearer") {
				require.Equal(t, `Bearer realm="rekey"`, h.Get("WWW-Authenticate"))
			}
		})
	}
	require.Empty(t, e.rotations())
	require.Empty(t, e.revocations())
}

func TestResolvedAlertsPublishNothing(t *testing.T) {
	e := newEnv(t, 0)
	for _, tc := range []struct {
		source, fixture string
		sign            signer
		status          siem.Status
	}{
		{"am-bearer", "alertmanager/resolved.json", bearer(bearerToken), siem.StatusResolved},
		{"datadog-bearer", "datadog/recovered.json", bearer(bearerToken), siem.StatusResolved},
		{"pd-hmac", "pagerduty/resolved.json", pdSigned(hmacSecret), siem.StatusResolved},
		{"pd-hmac", "pagerduty/annotated.json", pdSigned(hmacSecret), siem.StatusOther},
	} {
		code, _, resp := e.post(e.url, tc.source, load(t, tc.fixture), tc.sign)
		require.Equal(t, http.StatusAccepted, code, tc.fixture)
		require.NotNil(t, resp.RequestIDs)
		require.Empty(t, resp.RequestIDs, tc.fixture)
		require.Equal(t, tc.status, resp.Alerts[0].Status)
		require.Equal(t, siem.OutcomeIgnored, resp.Alerts[0].Outcome)
	}
	require.Empty(t, e.rotations())
	require.Empty(t, e.revocations())
}

// TestDuplicateAlert: the same alert delivered again starts one rotation,
// within JetStream's window, after it, after a restart of the handler,
// and when deliveries race. After the source's dedup window it counts again.
func TestDuplicateAlert(t *testing.T) {
	e := newEnv(t, time.Second) // JetStream forgets message ids after 1s
	body := load(t, "alertmanager/firing.json")

	code, _, first := e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Len(t, first.RequestIDs, 1)
	id := first.RequestIDs[0]
	require.Equal(t, siem.OutcomeAccepted, first.Alerts[0].Outcome)

	code, _, again := e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, []string{id}, again.RequestIDs)
	require.Equal(t, siem.OutcomeDuplicate, again.Alerts[0].Outcome)
	require.True(t, again.Alerts[0].Requests[0].Duplicate)

	time.Sleep(1500 * time.Millisecond) // past JetStream's duplicate window
	code, _, _ = e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)

	restarted := e.serve() // fresh memory: the KV bucket remembers
	code, _, later := e.post(restarted, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, []string{id}, later.RequestIDs)
	require.Equal(t, siem.OutcomeDuplicate, later.Alerts[0].Outcome)
	require.Len(t, e.rotations(), 1)

	// Racing deliveries of a new alert to two replicas: one request.
	race := alertmanager("77aa00bb11cc22dd", map[string]string{"alertname": "LeakedCredential", "tenant": "acme", "secret": "stripe-key", "severity": "critical"})
	var wg sync.WaitGroup
	bases := []string{e.url, restarted, e.url, restarted}
	codes, errs := make([]int, len(bases)), make([]error, len(bases))
	for i, base := range bases {
		wg.Add(1)
		go func() { // no require here: it must run on the test's goroutine
			defer wg.Done()
			codes[i], _, _, errs[i] = e.tryPost(base, "am-bearer", race, bearer(bearerToken))
		}()
	}
	wg.Wait()
	for i, code := range codes {
		require.NoError(t, errs[i], "delivery %d", i)
		require.Equal(t, http.StatusAccepted, code, "delivery %d", i)
	}
	require.Len(t, e.rotations(), 2)

	// Only one accepted audit record per request.
	accepted := 0
	for _, a := range e.audits() {
		if a.Outcome == schemas.OutcomeAccepted {
			accepted++
		}
	}
	require.Equal(t, 2, accepted)

	// The window is per source: past it, the same alert rotates again.
	short := alertmanager("0123456789abcdef", map[string]string{"alertname": "LeakedCredential", "tenant": "acme", "secret": "db-password"})
	_, _, r1 := e.post(e.url, "short-window", short, bearer(bearerToken))
	_, _, r2 := e.post(e.url, "short-window", short, bearer(bearerToken))
	require.Equal(t, r1.RequestIDs, r2.RequestIDs)
	time.Sleep(2100 * time.Millisecond)
	_, _, r3 := e.post(e.url, "short-window", short, bearer(bearerToken))
	require.Equal(t, siem.OutcomeAccepted, r3.Alerts[0].Outcome)
	require.NotEqual(t, r1.RequestIDs, r3.RequestIDs)
	require.Len(t, e.rotations(), 4)
}

func TestTenantOutsideAllowListIsRefused(t *testing.T) {
	e := newEnv(t, 0)
	// initech is a tenant of rekey, but am-bearer may only name acme and globex.
	body := alertmanager("feedfacecafebeef", map[string]string{
		"alertname": "LeakedCredential", "tenant": "initech", "secret": "api-key", "severity": "critical",
	})
	code, _, resp := e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusForbidden, code)
	require.Empty(t, resp.RequestIDs)
	require.Contains(t, resp.Error, `tenant "initech" is not allowed for source am-bearer`)
	require.Equal(t, "labels.tenant", resp.Field)
	require.Equal(t, siem.OutcomeRefused, resp.Alerts[0].Outcome)
	require.Empty(t, e.rotations())
	require.Empty(t, e.revocations())

	audits := e.audits()
	require.Len(t, audits, 1)
	a := audits[0]
	require.Equal(t, "initech", a.Tenant)
	require.Equal(t, schemas.OutcomeRefused, a.Outcome)
	require.Equal(t, "siem:am-bearer", a.Actor)
	require.Equal(t, "feedfacecafebeef", a.Detail["alert_id"])
	require.Contains(t, a.Detail["reason"], "not allowed")

	// A revoke rule is held to the same allow-list.
	body = alertmanager("0badc0de0badc0de", map[string]string{"alertname": "TenantCompromised", "tenant": "initech", "severity": "critical"})
	code, _, _ = e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusForbidden, code)
	require.Empty(t, e.revocations())

	// In a group, the allowed alert goes through and the other is refused.
	both := []byte(`{"version":"4","status":"firing","alerts":[
		{"status":"firing","fingerprint":"aaaa","labels":{"alertname":"LeakedCredential","tenant":"globex","secret":"openai-key","severity":"critical"}},
		{"status":"firing","fingerprint":"bbbb","labels":{"alertname":"LeakedCredential","tenant":"initech","secret":"api-key","severity":"critical"}}]}`)
	code, _, resp = e.post(e.url, "am-bearer", both, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, siem.OutcomeAccepted, resp.Alerts[0].Outcome)
	require.Equal(t, siem.OutcomeRefused, resp.Alerts[1].Outcome)
	rots := e.rotations()
	require.Len(t, rots, 1)
	require.Equal(t, "globex", rots[0].Tenant)
}

func TestNoRuleMatchedIsAudited(t *testing.T) {
	e := newEnv(t, 0)
	body := alertmanager("1111222233334444", map[string]string{"alertname": "DiskFull", "tenant": "acme", "severity": "critical"})
	code, _, resp := e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusUnprocessableEntity, code)
	require.Contains(t, resp.Error, "no rule of source am-bearer matched")
	require.Equal(t, siem.OutcomeUnmatched, resp.Alerts[0].Outcome)
	require.Empty(t, e.rotations())

	// One record per tenant the source may name, listing the alert ids.
	var tenants []string
	for _, a := range e.audits() {
		require.Equal(t, schemas.OutcomeRefused, a.Outcome)
		require.Equal(t, "siem:am-bearer", a.Actor)
		require.Equal(t, "1111222233334444", a.Detail["alert_ids"])
		require.Equal(t, "no rule matched", a.Detail["reason"])
		tenants = append(tenants, a.Tenant)
	}
	require.ElementsMatch(t, []string{"acme", "globex"}, tenants)
}

func TestMinSeverity(t *testing.T) {
	e := newEnv(t, 0)
	// leaked-credential needs warning; info is below: ignored, not an error.
	body := alertmanager("5555666677778888", map[string]string{"alertname": "LeakedCredential", "tenant": "acme", "secret": "openai-key", "severity": "info"})
	code, _, resp := e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Empty(t, resp.RequestIDs)
	require.Equal(t, siem.OutcomeIgnored, resp.Alerts[0].Outcome)
	require.Contains(t, resp.Alerts[0].Reason, "below min_severity warning")
	require.Equal(t, siem.SeverityInfo, resp.Alerts[0].Severity)

	// TenantCompromised revokes at critical only.
	body = alertmanager("9999aaaabbbbcccc", map[string]string{"alertname": "TenantCompromised", "tenant": "globex", "severity": "error"})
	code, _, _ = e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Empty(t, e.revocations())
	body = alertmanager("ddddeeeeffff0000", map[string]string{"alertname": "TenantCompromised", "tenant": "globex", "severity": "critical"})
	code, _, resp = e.post(e.url, "am-bearer", body, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, "revoke", resp.Alerts[0].Action)
	require.Equal(t, "rekey.revoke.globex", resp.Alerts[0].Requests[0].Subject)
	require.Len(t, e.revocations(), 1)
	require.Empty(t, e.rotations())
}

func TestInvalidIDsAreRefused(t *testing.T) {
	e := newEnv(t, 0)
	for i, tc := range []struct {
		tenant, secret, field, reason string
	}{
		{"acme.*", "openai-key", "labels.tenant", `tenant id must match ^[a-z0-9][a-z0-9_-]{0,62}$: it contains "." "*"`},
		{"*", "openai-key", "labels.tenant", `it contains "*"`},
		{">", "openai-key", "labels.tenant", `it contains ">"`},
		{"acme", ">", "labels.secret", `secret id must match ^[a-z0-9][a-z0-9_-]{0,62}$: it contains ">"`},
		{"acme", "openai-key.>", "labels.secret", `it contains "." ">"`},
		{"acme", "openai-key,*", "labels.secret", `it contains "*"`},
		{"Acme", "openai-key", "labels.tenant", "it has upper case letters"},
		{"acme", "sk-live-" + strings.Repeat("Zq9", 30), "labels.secret", "is 98 bytes long (at most 63), has upper case letters"},
		{"acme", "no-such-key", "labels.secret", `secret "no-such-key" of tenant "acme" is not configured`},
		{"", "openai-key", "labels.tenant", "naming the tenant"},
	} {
		labels := map[string]string{"alertname": "LeakedCredential", "secret": tc.secret, "severity": "critical"}
		if tc.tenant != "" {
			labels["tenant"] = tc.tenant
		}
		body := alertmanager("id-"+strconv.Itoa(i), labels)
		code, _, resp := e.post(e.url, "am-bearer", body, bearer(bearerToken))
		require.Equal(t, http.StatusUnprocessableEntity, code, "%+v", tc)
		require.Contains(t, resp.Error, tc.reason)
		require.Equal(t, tc.field, resp.Field)
		require.Equal(t, siem.OutcomeInvalid, resp.Alerts[0].Outcome)
		if len(tc.secret) > 20 { // a credential-like value
			require.NotContains(t, e.logs.String(), tc.secret, "a label value is never repeated")
		}
	}
	require.Empty(t, e.rotations())
	require.Empty(t, e.revocations())
	// Bad secrets of an allowed tenant are audited under that tenant; an
	// invalid tenant has no audit subject to go to (it is logged).
	audits := e.audits()
	require.Len(t, audits, 5)
	for _, a := range audits {
		require.Equal(t, "acme", a.Tenant)
		require.Equal(t, schemas.OutcomeRefused, a.Outcome)
		require.NotEmpty(t, a.Detail["reason"])
	}
}

func TestReplies(t *testing.T) {
	e := newEnv(t, 0)
	am := load(t, "alertmanager/firing.json")

	code, _, resp := e.post(e.url, "nope", am, bearer(bearerToken))
	require.Equal(t, http.StatusNotFound, code)
	require.Equal(t, "unknown source", resp.Error)

	code, _, resp = e.post(e.url, "am-bearer", []byte(`{"version":"4","alerts":[{"status":"pending"}]}`), bearer(bearerToken))
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, resp.Error, `alerts[0].status "pending" is not firing or resolved`)
	code, _, resp = e.post(e.url, "am-bearer", []byte(`not json`), bearer(bearerToken))
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, resp.Error, "alertmanager payload")

	// 413 over the source's max_body_bytes (1024), after authentication.
	big := alertmanager("abababababababab", map[string]string{"alertname": "LeakedCredential", "padding": strings.Repeat("x", 2000)})
	code, _, resp = e.post(e.url, "small", big, bearer(bearerToken))
	require.Equal(t, http.StatusRequestEntityTooLarge, code)
	require.Contains(t, resp.Error, "body over 1024 bytes")
	code, _, _ = e.post(e.url, "small", big, noAuth)
	require.Equal(t, http.StatusUnauthorized, code)

	// 429 with Retry-After once the source's bucket (burst 2: one delivery
	// of two alerts) is empty.
	code, _, _ = e.post(e.url, "limited", am, bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	code, h, resp := e.post(e.url, "limited", am, bearer(bearerToken))
	require.Equal(t, http.StatusTooManyRequests, code)
	retry, err := strconv.Atoi(h.Get("Retry-After"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, retry, 1)
	require.Contains(t, resp.Error, "rate limit")
	// Failed authentication does not spend the bucket of the real sender.
	code, _, _ = e.post(e.url, "limited", am, bearer("tok-wrong-000000000000"))
	require.Equal(t, http.StatusUnauthorized, code)

	require.Len(t, e.rotations(), 1)
}

func TestNATSUnavailable(t *testing.T) {
	e := newEnv(t, 0)
	// A handler whose own connection is gone: nothing can be queued.
	bus, err := orchestrator.Connect(t.Context(), e.bus.NC.ConnectedUrl(), "siem-down", orchestrator.NATSConfig{}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(e.logs, nil))
	h, err := siem.New(e.cfg, orchestrator.Deps{Rekey: e.rekey, Bus: bus, Audit: orchestrator.NewAuditor(bus, "test", log), Metrics: orchestrator.NewMetrics(), Log: log})
	require.NoError(t, err)
	bus.NC.Close()
	mux := http.NewServeMux()
	h.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)

	code, _, resp := e.post(hs.URL, "am-bearer", load(t, "alertmanager/firing.json"), bearer(bearerToken))
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, resp.Error, "NATS unavailable, retry")
	require.Equal(t, siem.OutcomeFailed, resp.Alerts[0].Outcome)
	require.Empty(t, resp.RequestIDs)

	// Nothing was recorded as seen: the retry, here to a healthy
	// replica, queues the request.
	code, _, resp = e.post(e.url, "am-bearer", load(t, "alertmanager/firing.json"), bearer(bearerToken))
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, siem.OutcomeAccepted, resp.Alerts[0].Outcome)
	require.Len(t, e.rotations(), 1)
}
