package agent

import (
	"bytes"
	"testing"
	"time"

	"github.com/rekey-dev/rekey/schemas"
)

func FuzzParseInvalidation(f *testing.F) {
	enc := func(tenant, subject string, inv schemas.Invalidation) []byte {
		ev, err := schemas.NewEvent("rekey/fanout", schemas.TypeInvalidation, tenant, subject, inv)
		if err != nil {
			f.Fatal(err)
		}
		b, err := ev.Encode()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	now := time.Now().UTC()
	f.Add("rekey.invalidate.acme.k", enc("acme", "acme/k", schemas.Invalidation{Tenant: "acme", Secret: "k", Kind: "rotated", Version: "v2", RequestID: "r", PublishedAt: now}))
	f.Add("rekey.invalidate.acme._tenant", enc("acme", "acme", schemas.Invalidation{Tenant: "acme", Kind: "revoked", RequestID: "r"}))
	f.Add("rekey.invalidate.acme._tenant", enc("acme", "acme", schemas.Invalidation{Tenant: "acme", Kind: "restored", RequestID: "r"}))
	f.Add("rekey.invalidate.acme.k", enc("globex", "globex/k", schemas.Invalidation{Tenant: "globex", Secret: "k", Kind: "rotated"}))
	f.Add("rekey.invalidate.acme.k.x", []byte(`{}`))
	f.Add("rekey.invalidate.acme.", []byte(`{"specversion":"1.0"}`))
	f.Add("rekey.invalidate.acme.k", []byte(`not json`))

	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		p, err := parseInvalidation("acme", subject, data)
		if err != nil {
			return
		}
		if p.inv.Tenant != "acme" || p.token == "" || p.id == "" {
			t.Fatalf("accepted %+v", p)
		}
		if p.token == schemas.TenantToken {
			if p.inv.Secret != "" || p.inv.Kind == schemas.InvalidationRotated {
				t.Fatalf("accepted tenant-wide %+v", p)
			}
		} else if p.inv.Secret != p.token {
			t.Fatalf("secret %q on token %q", p.inv.Secret, p.token)
		}
	})
}

// FuzzScan: the leak guard reads whatever an agent writes. Around a held
// value in any of its forms, whatever the text, Scan must not panic, must
// find it, and must leave none of it in the clean text; text without a
// held value is returned as it was.
func FuzzScan(f *testing.F) {
	f.Add("the key is ", " ok", uint8(0))
	f.Add(`{"a":"`, `"}`, uint8(1))
	f.Add("", "", uint8(2))
	f.Add("\x00\xff\n\"'", "+,`", uint8(3))
	f.Add("aGVsbG8", "==", uint8(4))
	value := []byte("sk-fuzz-Q2x7RbT9pLm4ZcVw8NaY3kHd")
	forms := leakForms(value)
	g := new(leakGuard)
	g.init(3)
	g.hold("k", "1", value)
	f.Fuzz(func(t *testing.T, before, after string, form uint8) {
		if clean, leaks := scan(g, before+after); leaks == nil && clean != nil {
			t.Fatal("no leak, yet a new text")
		}
		p := forms[int(form)%len(forms)].b
		text := before + string(p) + after
		clean, leaks := scan(g, text)
		if len(leaks) == 0 {
			t.Fatalf("form %d not found in %q", form, text)
		}
		for _, l := range leaks {
			if l.Secret != "k" || l.Version != "1" || l.Count < 1 {
				t.Fatalf("leak %+v", l)
			}
		}
		if bytes.Contains(normalize(nil, clean), p) {
			t.Fatalf("form %d still in %q", form, clean)
		}
	})
}
