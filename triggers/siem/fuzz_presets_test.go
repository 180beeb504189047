package siem

import "testing"

// FuzzParsePresets runs every preset's mapping (and the template check)
// on the presets' fixtures and mutations of them.
func FuzzParsePresets(f *testing.F) {
	names := PresetNames()
	fuzzParser(f, "presets/*.json", []string{`{"alertId":null,"id":"x","createdAt":"2024-02-06T16:43:48Z"}`, `{"Name":"{{Name}}"}`},
		func(body []byte) ([]Alert, error) {
			var first []Alert
			var firstErr error
			for i, n := range names {
				m := Presets[n].Mapping
				alerts, err := m.parse(body)
				if i == 0 {
					first, firstErr = alerts, err
				}
			}
			return first, firstErr
		})
}

// FuzzPlaceholder: placeholder never panics and is deterministic.
func FuzzPlaceholder(f *testing.F) {
	for _, s := range []string{"{{alert.id}}", "$ALERT_ID", "${X}", "$result.x$", "<tenant>", "plain", "a<b>c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if placeholder(s) != placeholder(s) {
			t.Fatal("not deterministic")
		}
	})
}
