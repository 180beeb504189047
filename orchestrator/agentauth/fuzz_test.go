package agentauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// FuzzIdentityFromClaims: whatever claims a signed token carries, an
// accepted identity names a configured tenant and an instance that is a
// single subject token, so that its user's subjects stay its own.
func FuzzIdentityFromClaims(f *testing.F) {
	f.Add([]byte(`{"kubernetes.io":{"namespace":"acme","pod":{"name":"planner-1"},"serviceaccount":{"name":"planner"}}}`))
	f.Add([]byte(`{"kubernetes.io":{"namespace":"acme","pod":{"name":"planner.v2"}}}`))
	f.Add([]byte(`{"kubernetes.io.namespace":"globex","kubernetes.io":{"pod":{"name":"a"},"serviceaccount":{"name":"x.y"}}}`))
	f.Add([]byte(`{"kubernetes":{"io":{"namespace":"acme"}},"kubernetes.io":{"namespace":"initech","pod":{"name":"*"}}}`))
	f.Add([]byte(`{"kubernetes.io":{"namespace":["acme"],"pod":{"name":">"}}}`))
	f.Add([]byte(`{"kubernetes.io":{"namespace":"acme","pod":{"name":"p\u0000"}}}`))
	f.Add([]byte(`{}`))
	paths := orchestrator.AgentAuthConfig{}.WithDefaults().Claims
	paths.Tool = "kubernetes.io.serviceaccount.name"
	tenants := map[string]bool{"acme": true, "globex": true}
	f.Fuzz(func(t *testing.T, data []byte) {
		var claims map[string]any
		if json.Unmarshal(data, &claims) != nil {
			return
		}
		id, err := identityFromClaims(claims, paths, tenants)
		if err != nil {
			return
		}
		if !tenants[id.Tenant] {
			t.Fatalf("accepted tenant %q", id.Tenant)
		}
		if schemas.ValidateInstance(id.Instance) != nil || strings.ContainsAny(id.Instance, ".*> \t\r\n") {
			t.Fatalf("accepted instance %q", id.Instance)
		}
		if !validTool(id.Tool) {
			t.Fatalf("accepted tool %q", id.Tool)
		}
		for _, s := range InstancePermissions(id.Tenant, id.Instance).Publish.Allow {
			if !strings.Contains(s, "."+id.Tenant+".") {
				t.Fatalf("permission %q outside tenant %q", s, id.Tenant)
			}
		}
	})
}

// FuzzParseJWKS: a JWKS document read from the issuer yields only public
// signing keys of an allowed kind, or an error.
func FuzzParseJWKS(f *testing.F) {
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","use":"sig"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","use":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseJWKS(data)
		if err != nil {
			if len(keys) != 0 {
				t.Fatal("keys with an error")
			}
			return
		}
		if len(keys) == 0 {
			t.Fatal("no keys and no error")
		}
		for _, k := range keys {
			if !k.IsPublic() || (k.Use != "" && k.Use != "sig") {
				t.Fatalf("accepted key %+v", k)
			}
			switch pub := k.Key.(type) {
			case *rsa.PublicKey:
				if pub.N.BitLen() < minRSABits {
					t.Fatalf("accepted a %d-bit RSA key", pub.N.BitLen())
				}
			case *ecdsa.PublicKey, ed25519.PublicKey:
			default:
				t.Fatalf("accepted a %T", pub)
			}
		}
	})
}
