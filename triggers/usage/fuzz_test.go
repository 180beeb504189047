package usage_test

import (
	"encoding/json"
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/usage"
)

// kvKey is the grammar of NATS KV keys.
var kvKey = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

// FuzzParseReport feeds arbitrary subjects and bytes to ParseReport, the
// decoding of what agents publish. Nothing may panic; every error is
// ErrMalformed or ErrRefused; an accepted report was published on its own
// tenant's and secret's subject, validates, and yields a valid KV key and
// a request id usable as a Nats-Msg-Id.
func FuzzParseReport(f *testing.F) {
	now := time.Date(2026, 1, 15, 3, 0, 0, 0, time.UTC)
	valid := schemas.UsageReport{Tenant: "acme", Secret: "openai-key", Version: "7", Agent: "acme-planner-1",
		Tool: "planner", Count: 42, WindowStart: now.Add(-5 * time.Second), WindowEnd: now}
	for _, r := range []schemas.UsageReport{valid, func() schemas.UsageReport { r := valid; r.Version = "database/creds/ro.1"; return r }()} {
		ev, err := schemas.NewEvent("agent/acme-planner-1", schemas.TypeUsageReport, r.Tenant, r.Tenant+"/"+r.Secret, r)
		require.NoError(f, err)
		b, err := ev.Encode()
		require.NoError(f, err)
		f.Add("rekey.used.acme.openai-key.a", b)
		f.Add("rekey.used.acme.db.a", b)
		f.Add("rekey.used.acme.db", b)
	}
	f.Add("rekey.used.acme.openai-key.a", []byte(`{"specversion":"1.0","id":"x","source":"s","type":"rekey.usage.report.v1","tenant":"acme","data":{"tenant":"acme","secret":"openai-key","version":"1","agent":"a","count":9223372036854775807}}`))
	f.Add("rekey.used.acme.openai-key.a", []byte(`{"specversion":"1.0","id":"x","source":"s","type":"rekey.usage.report.v1","tenant":"acme","data":{"tenant":"acme","secret":"openai-key","version":"\u0000","count":1}}`))
	f.Add("rekey.used.*.>", []byte(`{}`))

	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		r, err := usage.ParseReport(subject, data)
		if err != nil {
			require.True(t, errors.Is(err, schemas.ErrMalformed) || errors.Is(err, usage.ErrRefused), "%v", err)
			return
		}
		require.Equal(t, schemas.UsedSubject(r.Tenant, r.Secret, r.Agent), subject)
		require.NoError(t, r.Validate())
		require.Positive(t, r.Count)
		require.NotEmpty(t, r.Version)
		require.Regexp(t, kvKey, usage.Key(r.Tenant, r.Secret, r.Version))
		require.Regexp(t, kvKey, usage.RequestID(r.Tenant, r.Secret, r.Version))
	})
}

func TestParseReport(t *testing.T) {
	report := func(mod func(*schemas.UsageReport, *schemas.Event)) []byte {
		r := schemas.UsageReport{Tenant: "acme", Secret: "db", Version: "7", Agent: "a", Count: 3}
		ev, err := schemas.NewEvent("agent/a", schemas.TypeUsageReport, "acme", "acme/db", r)
		require.NoError(t, err)
		mod(&r, &ev)
		ev.Data, err = json.Marshal(r)
		require.NoError(t, err)
		b, err := ev.Encode()
		require.NoError(t, err)
		return b
	}
	same := func(*schemas.UsageReport, *schemas.Event) {}
	for _, tc := range []struct {
		name, subject string
		data          []byte
		want          error // nil: accepted
	}{
		{"valid", "rekey.used.acme.db.a", report(same), nil},
		{"payload names another tenant", "rekey.used.acme.db.a", report(func(r *schemas.UsageReport, e *schemas.Event) { r.Tenant, e.Tenant = "globex", "globex" }), usage.ErrRefused},
		{"payload names another instance than the subject", "rekey.used.acme.db.b", report(same), usage.ErrRefused},
		{"instance token not an instance id", "rekey.used.acme.db.-a", report(same), schemas.ErrMalformed},
		{"payload names another secret", "rekey.used.acme.db.a", report(func(r *schemas.UsageReport, _ *schemas.Event) { r.Secret = "openai-key" }), usage.ErrRefused},
		{"envelope names another tenant", "rekey.used.acme.db.a", report(func(_ *schemas.UsageReport, e *schemas.Event) { e.Tenant = "globex" }), usage.ErrRefused},
		{"envelope subject disagrees", "rekey.used.acme.db.a", report(func(_ *schemas.UsageReport, e *schemas.Event) { e.Subject = "acme/other" }), usage.ErrRefused},
		{"no envelope subject", "rekey.used.acme.db.a", report(func(_ *schemas.UsageReport, e *schemas.Event) { e.Subject = "" }), nil},
		{"zero count", "rekey.used.acme.db.a", report(func(r *schemas.UsageReport, _ *schemas.Event) { r.Count = 0 }), schemas.ErrMalformed},
		{"no version", "rekey.used.acme.db.a", report(func(r *schemas.UsageReport, _ *schemas.Event) { r.Version = "" }), schemas.ErrMalformed},
		{"control character in version", "rekey.used.acme.db.a", report(func(r *schemas.UsageReport, _ *schemas.Event) { r.Version = "7\n" }), schemas.ErrMalformed},
		{"wrong type", "rekey.used.acme.db.a", report(func(_ *schemas.UsageReport, e *schemas.Event) { e.Type = schemas.TypeRotationRequested }), schemas.ErrMalformed},
		{"short subject", "rekey.used.acme.db", report(same), schemas.ErrMalformed},
		{"long subject", "rekey.used.acme.db.a.x", report(same), schemas.ErrMalformed},
		{"other subject", "rekey.rotate.acme.db", report(same), schemas.ErrMalformed},
		{"not json", "rekey.used.acme.db.a", []byte("uses: 3"), schemas.ErrMalformed},
		{"too big", "rekey.used.acme.db.a", make([]byte, usage.MaxReportBytes+1), schemas.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := usage.ParseReport(tc.subject, tc.data)
			if tc.want != nil {
				require.ErrorIs(t, err, tc.want)
				return
			}
			require.NoError(t, err)
			require.Equal(t, int64(3), r.Count)
			require.Equal(t, "7", r.Version)
		})
	}
}
