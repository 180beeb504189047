package siem

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// testMapping is the generic mapping of testdata/generic, also used by
// FuzzParseGeneric and the package tests' configuration.
var testMapping = GenericMapping{
	Alerts: "detections", ID: "uuid", Name: "title", Status: "state", Resolved: []string{"closed"},
	Severity: "level", Labels: map[string]string{"tenant": "target.tenant", "secret": "target.credential"},
	LabelsFrom: "tags",
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return b
}

func TestParsers(t *testing.T) {
	type want struct {
		id       string
		status   Status
		severity Severity
		name     string
		labels   map[string]string // a subset
	}
	for _, tc := range []struct {
		file  string
		parse func([]byte) ([]Alert, error)
		want  []want
	}{
		{"alertmanager/firing.json", parseAlertmanager, []want{
			{"5d1f0a9c3b7e2248", StatusFiring, SeverityCritical, "LeakedCredential", map[string]string{"tenant": "acme", "secret": "openai-key", "env": "prod"}},
			{"90ab44e1c7d3f610", StatusResolved, SeverityCritical, "LeakedCredential", map[string]string{"secret": "stripe-key"}},
		}},
		{"alertmanager/resolved.json", parseAlertmanager, []want{
			{"5d1f0a9c3b7e2248", StatusResolved, SeverityCritical, "LeakedCredential", nil},
		}},
		{"grafana/firing.json", parseGrafana, []want{
			{"e3c0b2a94f17d866", StatusFiring, SeverityWarning, "Stripe key used from new ASN", map[string]string{"team": "payments", "tenant": "acme"}},
		}},
		{"splunk/alert.json", parseSplunk, []want{
			{"scheduler__admin__search__RMD5a1f3c09e2b7d4411_at_1772442000_5120", StatusFiring, SeverityError, "DB credential brute force",
				map[string]string{"tenant": "globex", "credential": "db-password", "src_ip": "198.51.100.23,198.51.100.24", "search_name": "DB credential brute force", "app": "search"}},
		}},
		{"datadog/triggered.json", parseDatadog, []want{
			{"7702931840212336110", StatusFiring, SeverityCritical, "Token replay detected",
				map[string]string{"tenant": "globex", "service": "agents", "env": "prod", "monitor": "", "alert_id": "158823417", "org_name": "Example Corp"}},
		}},
		{"datadog/recovered.json", parseDatadog, []want{
			{"7702931840212336110", StatusResolved, SeverityCritical, "Token replay detected", map[string]string{"tenant": "globex"}},
		}},
		{"pagerduty/triggered.json", parsePagerDuty, []want{
			{"Q2F7VX9LM4N1BC", StatusFiring, SeverityError, "Card testing burst on acme checkout",
				map[string]string{"service": "acme-payments", "priority": "P2", "urgency": "high", "team": "Security", "teams": "Security,Payments", "event_type": "incident.triggered"}},
		}},
		{"pagerduty/resolved.json", parsePagerDuty, []want{
			{"Q2F7VX9LM4N1BC", StatusResolved, SeverityError, "Card testing burst on acme checkout", map[string]string{"service": "acme-payments"}},
		}},
		{"pagerduty/annotated.json", parsePagerDuty, []want{
			{"Q2F7VX9LM4N1BC", StatusOther, SeverityUnknown, "", map[string]string{"event_type": "incident.annotated"}},
		}},
		{"generic/detections.json", testMapping.parse, []want{
			{"6f0d9b2e-3c41-4a7e-9d15-0b8e2f7c4a31", StatusFiring, SeverityCritical, "Postgres password in CI log",
				map[string]string{"tenant": "acme", "secret": "db-password", "env": "prod", "source": "ci-logs"}},
			{"c2a8e415-77b0-4f6c-8e3d-5a19d0b6f2e7", StatusResolved, SeverityCritical, "OpenAI key in a notebook", map[string]string{"secret": "openai-key"}},
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			alerts, err := tc.parse(fixture(t, tc.file))
			require.NoError(t, err)
			require.Len(t, alerts, len(tc.want))
			for i, w := range tc.want {
				a := alerts[i]
				require.Equal(t, w.id, a.ID)
				require.Equal(t, w.status, a.Status)
				require.Equal(t, w.severity, a.Severity, "raw %q", a.RawSeverity)
				require.Equal(t, w.name, a.Name)
				for k, v := range w.labels {
					require.Contains(t, a.Labels, k)
					require.Equal(t, v, a.Labels[k], "label %s", k)
				}
			}
		})
	}
}

func TestParsersRefuseMalformed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		parse  func([]byte) ([]Alert, error)
		body   string
		reason string
	}{
		{"am not json", parseAlertmanager, `{"version":"4",`, "alertmanager payload"},
		{"am version", parseAlertmanager, `{"version":"1","alerts":[]}`, `version "1" is not 4`},
		{"am no alerts", parseAlertmanager, `{"version":"4"}`, "no alerts array"},
		{"am bad status", parseAlertmanager, `{"version":"4","alerts":[{"status":"pending","labels":{}}]}`, `alerts[0].status "pending"`},
		{"am label not string", parseAlertmanager, `{"version":"4","alerts":[{"status":"firing","labels":{"a":1}}]}`, "alertmanager payload"},
		{"grafana array", parseGrafana, `[]`, "grafana payload"},
		{"splunk no sid", parseSplunk, `{"result":{}}`, "no sid"},
		{"datadog no id", parseDatadog, `{"alert_transition":"Triggered","alert_cycle_key":"$ALERT_CYCLE_KEY"}`, "no alert_cycle_key"},
		{"pagerduty no event", parsePagerDuty, `{}`, "no event"},
		{"pagerduty no type", parsePagerDuty, `{"event":{"id":"x"}}`, "no event.event_type"},
		{"pagerduty no incident", parsePagerDuty, `{"event":{"id":"x","event_type":"incident.triggered","resource_type":"incident","data":{}}}`, "without an incident id"},
		{"generic no id", testMapping.parse, `{"detections":[{"state":"open"}]}`, "alert 0 has no uuid"},
		{"generic not array", testMapping.parse, `{"detections":{}}`, "is not an array"},
		{"generic trailing", testMapping.parse, `{"detections":[]} {}`, "after the JSON value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.parse([]byte(tc.body))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.reason)
		})
	}
}

func TestParseDetails(t *testing.T) {
	// Alertmanager without fingerprints: a digest of the labels, stable.
	body := []byte(`{"version":"4","alerts":[{"status":"firing","labels":{"b":"2","a":"1"}},{"status":"firing","labels":{"a":"1","b":"2"}}]}`)
	alerts, err := parseAlertmanager(body)
	require.NoError(t, err)
	require.Len(t, alerts[0].ID, 16)
	require.Equal(t, alerts[0].ID, alerts[1].ID)

	// A long or binary id is replaced by a digest, so it is safe to echo.
	alerts, err = parseGrafana([]byte(`{"alerts":[{"status":"firing","fingerprint":"a\u0000b","labels":{}}]}`))
	require.NoError(t, err)
	require.Regexp(t, `^sha256:[0-9a-f]{32}$`, alerts[0].ID)

	// Datadog: tags as a JSON array, "No Data" is other, unresolved
	// variables are ignored, the alert type stands in for a missing priority.
	alerts, err = parseDatadog([]byte(`{"id":"1","alert_transition":"No Data","alert_type":"warning","alert_priority":"$ALERT_PRIORITY","tags":["tenant:acme","secret:openai-key"],"tenant2":"x"}`))
	require.NoError(t, err)
	require.Equal(t, StatusOther, alerts[0].Status)
	require.Equal(t, SeverityWarning, alerts[0].Severity)
	require.Equal(t, "acme", alerts[0].Labels["tenant"])
	require.Equal(t, "x", alerts[0].Labels["tenant2"])
	require.NotContains(t, alerts[0].Labels, "alert_priority")

	// Generic: a bare object is one alert; numbers and booleans are text.
	m := GenericMapping{ID: "id", Severity: "sev", Labels: map[string]string{"n": "n", "ok": "ok", "deep": "a.1.b"}}
	alerts, err = m.parse([]byte(`{"id": 42, "sev": "P1", "n": 1.5, "ok": true, "a": [{}, {"b": "x"}]}`))
	require.NoError(t, err)
	require.Equal(t, "42", alerts[0].ID)
	require.Equal(t, SeverityCritical, alerts[0].Severity)
	require.Equal(t, map[string]string{"n": "1.5", "ok": "true", "deep": "x"}, alerts[0].Labels)
}

func TestSeverityScale(t *testing.T) {
	require.Less(t, SeverityUnknown, SeverityInfo)
	require.Less(t, SeverityInfo, SeverityWarning)
	require.Less(t, SeverityWarning, SeverityError)
	require.Less(t, SeverityError, SeverityCritical)
	for in, want := range map[string]Severity{
		"critical": SeverityCritical, " CRITICAL ": SeverityCritical, "P1": SeverityCritical, "page": SeverityCritical,
		"high": SeverityError, "P2": SeverityError, "error": SeverityError,
		"warning": SeverityWarning, "medium": SeverityWarning, "P3": SeverityWarning,
		"info": SeverityInfo, "low": SeverityInfo, "informational": SeverityInfo, "P5": SeverityInfo,
		"": SeverityUnknown, "sev-banana": SeverityUnknown,
	} {
		require.Equal(t, want, ParseSeverity(in), in)
	}
	s, ok := SeverityLevel("warning")
	require.True(t, ok)
	require.Equal(t, SeverityWarning, s)
	_, ok = SeverityLevel("high")
	require.False(t, ok, "config names are the four levels only")
}
