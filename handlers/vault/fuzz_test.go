package vault

import (
	"strings"
	"testing"

	"github.com/rekey-dev/rekey/handlers"
)

// FuzzVersionID: whatever token a request carries, its version id is one
// safe path segment, and distinct tokens get distinct ids.
func FuzzVersionID(f *testing.F) {
	for _, s := range []string{"01JX3Q9Z8K4T6W2R0M5N7P1B3C-1-1", "01JX.openai-key-2-3", "../../sys/policy", "_staged", "", "a/b", ".", "..", strings.Repeat("x", 200)} {
		f.Add(s, "other")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		id := versionID(a)
		if !idRE.MatchString(id) || strings.Contains(id, "/") || id == "." || id == ".." || id == stagedSegment {
			t.Fatalf("versionID(%q) = %q is not a safe segment", a, id)
		}
		if a != b && versionID(b) == id {
			t.Fatalf("versionID(%q) == versionID(%q) == %q", a, b, id)
		}
	})
}

// FuzzLocate: whatever options a secret has, a location that is accepted
// lies inside the tenant's prefix, has no empty, dot or reserved segment,
// and a static role starts with the tenant's role prefix.
func FuzzLocate(f *testing.F) {
	f.Add("acme", "key", "kv", "tenants/{tenant}/{secret}", "value", "")
	f.Add("acme", "db", "static-role", "", "", "acme-{secret}")
	f.Add("acme", "key", "kv", "tenants/globex/key", "", "")
	f.Add("acme", "key", "kv", "tenants/acme/../globex/key", "", "")
	f.Add("acme", "key", "kv", "tenants/acme", "", "")
	f.Add("acme", "key", "kv", "tenants/acme/_staged/x", "", "")
	f.Add("acme", "db", "static-role", "", "", "globex-db")
	cfg := Config{}.Defaults()
	f.Fuzz(func(t *testing.T, tenant, secret, kind, path, field, role string) {
		opts := map[string]string{OptKind: kind}
		if path != "" {
			opts[OptPath] = path
		}
		if field != "" {
			opts[OptField] = field
		}
		if role != "" {
			opts[OptRole] = role
		}
		loc, err := cfg.locate(handlers.SecretRef{Tenant: tenant, Secret: secret, Options: opts})
		if err != nil {
			return
		}
		if !strings.HasPrefix(loc.path, "tenants/"+tenant+"/") {
			t.Fatalf("%q/%q options %v: path %q outside the tenant's prefix", tenant, secret, opts, loc.path)
		}
		for seg := range strings.SplitSeq(loc.mount+"/"+loc.path, "/") {
			if seg == "" || seg == "." || seg == ".." || seg == stagedSegment {
				t.Fatalf("%q/%q options %v: bad segment %q in %q", tenant, secret, opts, seg, loc.path)
			}
		}
		if loc.kind == KindStaticRole && (!strings.HasPrefix(loc.role, tenant+"-") || strings.Contains(loc.role, "/")) {
			t.Fatalf("%q/%q options %v: role %q outside the tenant's prefix", tenant, secret, opts, loc.role)
		}
	})
}
