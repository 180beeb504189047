package sidecar

import (
	"strings"
	"testing"
)

// FuzzNames: an outside name maps to a secret only if it is exactly what
// the mapping renders for that secret of this tenant (its name, its ARN
// as served, or the ARN without the suffix), so no crafted name reaches
// another tenant's secret or one outside the templates.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"/tenants/acme/openai-key", "/tenants/globex/openai-key", "/tenants/acme/../globex/x",
		"arn:aws:secretsmanager:us-east-1:000000000000:secret:/tenants/acme/openai-key-abcdef", "tenants/acme/openai-key",
		"prod/acme/db", "/tenants/acme/", "/tenants/acme/a/b", "billing-db"} {
		f.Add(s)
	}
	n := names{tenant: "acme", m: Mapping{
		AWSNames:   map[string]string{"db": "prod/{tenant}/db"},
		VaultPaths: map[string]string{"db": "apps/{tenant}/db"},
	}.Defaults()}
	f.Fuzz(func(t *testing.T, id string) {
		if s, ok := n.fromAWS(id); ok {
			name := n.awsName(s)
			partial := "arn:aws:secretsmanager:us-east-1:000000000000:secret:" + name
			if id != name && id != n.awsARN(s) && id != partial {
				t.Fatalf("AWS id %q mapped to %q, whose name is %q", id, s, name)
			}
			if strings.Contains(id, "globex") {
				t.Fatalf("AWS id %q of another tenant mapped to %q", id, s)
			}
		}
		if s, ok := n.vaultKV(id); ok {
			want := render(n.m.VaultPathTemplate, "acme", s)
			if p, over := n.m.VaultPaths[s]; over {
				want = render(p, "acme", s)
			}
			if id != want {
				t.Fatalf("Vault path %q mapped to %q, whose path is %q", id, s, want)
			}
		}
		_, _ = parseSigV4(id)
	})
}

// FuzzRender: render replaces the placeholders as strings.Replacer does.
func FuzzRender(f *testing.F) {
	for _, s := range []string{"/tenants/{tenant}/{secret}", "{secret}", "{{tenant}}", "{tenant", "a{b}{secret}{", ""} {
		f.Add(s, "acme", "openai-key")
	}
	f.Fuzz(func(t *testing.T, tmpl, tenant, secret string) {
		want := strings.NewReplacer(phTenant, tenant, phSecret, secret).Replace(tmpl)
		if got := render(tmpl, tenant, secret); got != want {
			t.Fatalf("render(%q, %q, %q) = %q, want %q", tmpl, tenant, secret, got, want)
		}
	})
}
