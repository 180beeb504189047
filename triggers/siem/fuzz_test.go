package siem

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every parser of outside input is fuzzed. The seeds are the vendor
// fixtures plus edge cases; the corpus grown by `go test -fuzz` is kept in
// testdata/fuzz/<FuzzName>/. Each parser must not panic, must be
// deterministic, and whatever it accepts must be safe to act on: an id
// that is short printable ASCII, a known status, a severity on the scale,
// non-nil labels.

func fuzzParser(f *testing.F, glob string, extra []string, parse func([]byte) ([]Alert, error)) {
	files, err := filepath.Glob(filepath.Join("testdata", glob))
	require.NoError(f, err)
	require.NotEmpty(f, files, glob)
	for _, file := range files {
		f.Add(fixture(f, filepath.Join(filepath.Base(filepath.Dir(file)), filepath.Base(file))))
	}
	for _, s := range extra {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		alerts, err := parse(body)
		if err != nil {
			if alerts != nil {
				t.Fatalf("alerts %v with error %v", alerts, err)
			}
			return
		}
		if again, err := parse(body); err != nil || !reflect.DeepEqual(alerts, again) {
			t.Fatalf("not deterministic: %v %v / %v", alerts, again, err)
		}
		for _, a := range alerts {
			switch {
			case a.ID == "" || len(a.ID) > maxIDLen || !printable(a.ID):
				t.Fatalf("id %q", a.ID)
			case len(a.Name) > 128 || !printable(a.Name):
				t.Fatalf("name %q", a.Name)
			case a.Status != StatusFiring && a.Status != StatusResolved && a.Status != StatusOther:
				t.Fatalf("status %q", a.Status)
			case a.Severity < SeverityUnknown || a.Severity > SeverityCritical || a.Severity != ParseSeverity(a.RawSeverity):
				t.Fatalf("severity %d from %q", a.Severity, a.RawSeverity)
			case a.Labels == nil:
				t.Fatal("nil labels")
			}
		}
	})
}

func FuzzParseAlertmanager(f *testing.F) {
	fuzzParser(f, "alertmanager/*.json", []string{
		`{"version":"4","alerts":[]}`,
		`{"version":"4","alerts":[{"status":"firing","labels":{"alertname":"x"}}]}`,
		`{"version":"4","alerts":null}`,
		`{"version":"4","alerts":[{"status":"resolved","fingerprint":"\u00ff\u0000"}]}`,
	}, parseAlertmanager)
}

func FuzzParseGrafana(f *testing.F) {
	fuzzParser(f, "grafana/*.json", []string{
		`{"alerts":[{"status":"firing","fingerprint":"f","labels":{"severity":"P1"}}]}`,
		`{"alerts":[{}]}`,
	}, parseGrafana)
}

func FuzzParseSplunk(f *testing.F) {
	fuzzParser(f, "splunk/*.json", []string{
		`{"sid":"s","search_name":null,"result":{"a":["x",1,true,null],"b":{"c":1}}}`,
		`{"sid":"s","result":null}`,
	}, parseSplunk)
}

func FuzzParseDatadog(f *testing.F) {
	fuzzParser(f, "datadog/*.json", []string{
		`{"id":1,"tags":["a:b","c"],"org":{"id":7}}`,
		`{"alert_cycle_key":"$ALERT_CYCLE_KEY","aggreg_key":"k","alert_transition":"Re-Triggered"}`,
		`{"id":"x","alert_transition":"No Data","tags":",,:,a:"}`,
	}, parseDatadog)
}

func FuzzParsePagerDuty(f *testing.F) {
	fuzzParser(f, "pagerduty/*.json", []string{
		`{"event":{"id":"e","event_type":"service.updated","resource_type":"service","data":{"id":"S"}}}`,
		`{"event":{"event_type":"incident.priority_updated","resource_type":"incident","data":{"id":"I","type":"incident","status":"resolved","priority":null}}}`,
		`{"event":{"id":"e","event_type":"incident.triggered","resource_type":"incident","data":null}}`,
	}, parsePagerDuty)
}

func FuzzParseGeneric(f *testing.F) {
	fuzzParser(f, "generic/*.json", []string{
		`{"detections":[{"uuid":1,"state":"CLOSED","target":{"tenant":true},"tags":{"x.y":"z"}}]}`,
		`{"detections":[[]]}`,
		`[{"uuid":"a"}]`,
	}, testMapping.parse)
}
