package agent

import (
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
