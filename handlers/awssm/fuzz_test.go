package awssm

import (
	"strings"
	"testing"

	"github.com/rekey-dev/rekey/handlers"
)

// fuzzConfig has secrets whose names end like ARN suffixes and contain
// "-", to tempt a lookup that guesses.
func fuzzConfig() Config {
	return Config{Region: "us-east-1", Secrets: []handlers.SecretRef{
		{Tenant: "acme", Secret: "openai-key"},
		{Tenant: "acme", Secret: "db-key-abcdef"},
		{Tenant: "acme", Secret: "db-key"},
		{Tenant: "globex", Secret: "stripe", Options: map[string]string{OptName: "/tenants/{tenant}/pay/{secret}-live"}},
	}}.Defaults()
}

// FuzzLookup: whatever id an event carries, Lookup either finds nothing or
// finds the one configured secret whose name is exactly the id, or the
// name inside a well-formed ARN of the configured region; and an ARN built
// from a configured name with any 6-character suffix finds that secret.
func FuzzLookup(f *testing.F) {
	const arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:"
	for _, s := range []string{
		"/tenants/acme/openai-key",
		arn + "/tenants/acme/openai-key-AbCdEf",
		arn + "/tenants/acme/db-key-abcdef-123456",
		arn + "/tenants/acme/db-key-abcdef",
		arn + "/tenants/globex/pay/stripe-live-zzzzzz",
		"arn:aws-cn:secretsmanager:us-east-1:123456789012:secret:/tenants/acme/openai-key-AbCdEf",
		"arn:aws:secretsmanager:us-east-1:123456789012:secret:-AbCdEf",
		"arn:aws:secretsmanager:us-east-1:123456789012:secret:",
		"arn:aws:secretsmanager::123456789012:secret:/tenants/acme/openai-key-AbCdEf",
		"arn:::::::",
		"/tenants/acme/",
		"",
	} {
		f.Add(s, "AbCdEf")
	}
	cfg := fuzzConfig()
	names := map[string][2]string{}
	for _, ref := range cfg.Secrets {
		loc, err := cfg.locate(ref)
		if err != nil {
			f.Fatalf("locate %s: %v", ref, err)
		}
		names[loc.name] = [2]string{ref.Tenant, ref.Secret}
	}
	f.Fuzz(func(t *testing.T, id, suffix string) {
		tenant, secret, ok := cfg.Lookup(id)
		if ok {
			name := id
			if strings.HasPrefix(id, "arn:") {
				region, n, parsed := parseARN(id)
				if !parsed || region != cfg.Region {
					t.Fatalf("Lookup(%q) matched an ARN that does not parse", id)
				}
				if !strings.HasSuffix(id, ":secret:"+n+id[len(id)-7:]) {
					t.Fatalf("Lookup(%q): name %q is not the ARN's resource less its suffix", id, n)
				}
				name = n
			}
			if names[name] != [2]string{tenant, secret} {
				t.Fatalf("Lookup(%q) = %s/%s, but %q is %v", id, tenant, secret, name, names[name])
			}
		}
		if len(suffix) != 6 || !suffixRE.MatchString("-"+suffix) {
			return
		}
		for name, want := range names {
			tenant, secret, ok := cfg.Lookup(arn + name + "-" + suffix)
			if !ok || [2]string{tenant, secret} != want {
				t.Fatalf("the ARN of %q with suffix %q maps to %s/%s %v", name, suffix, tenant, secret, ok)
			}
		}
	})
}

// FuzzVersionID: whatever the token, its version id is a valid
// ClientRequestToken (32-64 characters) that rekey recognises as its own,
// distinct tokens get distinct ids, and the token read back from an id is
// the token or unknown.
func FuzzVersionID(f *testing.F) {
	for _, s := range []string{"01JX3Q9Z8K4T6W2R0M5N7P1B3C", "01JX3Q9Z8K4T6W2R0M5N7P1B3C-1-1", "h-0123456789012345678901234567", "", "short", strings.Repeat("x", 100), "../../x y"} {
		f.Add(s, "other")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		id := VersionID(a)
		if len(id) < 32 || len(id) > 64 || !madeByRekey(id) {
			t.Fatalf("VersionID(%q) = %q is not a rekey ClientRequestToken", a, id)
		}
		if tok := tokenOf(id); tok != "" && tok != a {
			t.Fatalf("tokenOf(VersionID(%q)) = %q", a, tok)
		}
		if a != b && VersionID(b) == id {
			t.Fatalf("VersionID(%q) == VersionID(%q) == %q", a, b, id)
		}
	})
}
