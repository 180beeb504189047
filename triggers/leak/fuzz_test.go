package leak_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/leak"
)

// FuzzParseReport: a leak report is what a tenant's agent (possibly
// compromised) chooses to send. ParseReport must not panic; what it
// accepts names the subject's tenant and secret, a valid agent, and
// bounded printable fields; what it refuses wraps ErrMalformed or
// ErrRefused.
func FuzzParseReport(f *testing.F) {
	enc := func(evTenant string, r schemas.LeakReport) []byte {
		ev, err := schemas.NewEvent("rekey-agent/a", schemas.TypeLeakReport, evTenant, evTenant+"/"+r.Secret, r)
		if err != nil {
			f.Fatal(err)
		}
		b, err := ev.Encode()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	ok := schemas.LeakReport{Tenant: "acme", Secret: "k", Version: "3", Agent: "a1", Where: "scan",
		Encoding: schemas.EncodingHex, Count: 1, FoundAt: time.Now().UTC()}
	f.Add("rekey.leak.acme.k", enc("acme", ok))
	other := ok
	other.Tenant = "globex"
	f.Add("rekey.leak.acme.k", enc("acme", other))
	f.Add("rekey.leak.acme.k", enc("globex", ok))
	f.Add("rekey.leak.acme.k.x", enc("acme", ok))
	f.Add("rekey.leak.acme", []byte(`{}`))
	f.Add("rekey.leak.acme.k", []byte(`not json`))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		r, err := leak.ParseReport(subject, data)
		if err != nil {
			if !errors.Is(err, schemas.ErrMalformed) && !errors.Is(err, leak.ErrRefused) {
				t.Fatalf("error %v wraps neither ErrMalformed nor ErrRefused", err)
			}
			return
		}
		if subject != schemas.LeakSubject(r.Tenant, r.Secret) {
			t.Fatalf("report of %s/%s accepted on %s", r.Tenant, r.Secret, subject)
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted an invalid report: %v", err)
		}
		if strings.ContainsAny(r.Version+r.Where+r.Tool+r.Run, "\x00\n\r") {
			t.Fatal("accepted a non-printable field")
		}
	})
}
