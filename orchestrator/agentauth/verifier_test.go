package agentauth_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/agentauth"
)

// signingCases are the accepted algorithms with the issuer's key of each.
func signingCases() []struct {
	name string
	alg  jose.SignatureAlgorithm
	key  any
	kid  string
} {
	return []struct {
		name string
		alg  jose.SignatureAlgorithm
		key  any
		kid  string
	}{
		{"RS256", jose.RS256, rsaKey, "rsa-1"},
		{"ES256", jose.ES256, ecKey, "ec-1"},
		{"EdDSA", jose.EdDSA, edKey, "ed-1"},
	}
}

func TestVerifyAccepts(t *testing.T) {
	iss := newIssuer(t)
	v := iss.verifier(t)
	for _, tc := range signingCases() {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.Verify(context.Background(), sign(t, tc.alg, tc.key, tc.kid, k8sClaims("acme", "planner-7d9f-abc12")))
			require.NoError(t, err)
			require.Equal(t, "acme", id.Tenant)
			require.Equal(t, "planner-7d9f-abc12", id.Instance)
			require.Equal(t, "planner", id.Tool)
			require.Equal(t, "system:serviceaccount:acme:planner", id.Subject)
			require.Equal(t, "agent-acme.planner-7d9f-abc12", id.Username())
			require.True(t, orchestrator.IsAgentOf(id.Username(), "acme"))
		})
	}
	require.Equal(t, int64(1), iss.reads.Load(), "the JWKS is read once and cached")
}

// TestVerifyRefuses: every token an attacker could present is refused,
// with a reason that does not hold the token.
func TestVerifyRefuses(t *testing.T) {
	iss := newIssuer(t)
	v := iss.verifier(t)
	with := func(ns, pod string, edit func(map[string]any)) map[string]any {
		c := k8sClaims(ns, pod)
		edit(c)
		return c
	}
	now := time.Now()
	pubDER, err := x509.MarshalPKIXPublicKey(rsaKey.Public())
	require.NoError(t, err)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	b64 := base64.RawURLEncoding.EncodeToString
	payload, err := json.Marshal(k8sClaims("acme", "p1"))
	require.NoError(t, err)

	for _, tc := range []struct {
		name, token, reason string
	}{
		{"expired", sign(t, jose.RS256, rsaKey, "rsa-1", with("acme", "p1", func(c map[string]any) {
			c["exp"] = now.Add(-time.Minute).Unix()
			c["iat"] = now.Add(-time.Hour).Unix()
			c["nbf"] = now.Add(-time.Hour).Unix()
		})), "expired"},
		{"not yet valid", sign(t, jose.RS256, rsaKey, "rsa-1", with("acme", "p1", func(c map[string]any) { c["nbf"] = now.Add(5 * time.Minute).Unix() })), "not valid yet"},
		{"issued in the future", sign(t, jose.RS256, rsaKey, "rsa-1", with("acme", "p1", func(c map[string]any) { c["iat"] = now.Add(5 * time.Minute).Unix() })), "issued in the future"},
		{"no exp", sign(t, jose.RS256, rsaKey, "rsa-1", with("acme", "p1", func(c map[string]any) { delete(c, "exp") })), "no exp"},
		{"wrong aud", sign(t, jose.RS256, rsaKey, "rsa-1", with("acme", "p1", func(c map[string]any) { c["aud"] = []string{"vault"} })), "audience"},
		{"wrong iss", sign(t, jose.RS256, rsaKey, "rsa-1", with("acme", "p1", func(c map[string]any) { c["iss"] = "https://evil.example" })), "issuer"},
		{"alg none", b64([]byte(`{"alg":"none","typ":"JWT","kid":"rsa-1"}`)) + "." + b64(payload) + ".", "RS256, ES256 or EdDSA"},
		{"HS256 keyed with the public key", sign(t, jose.HS256, pubPEM, "rsa-1", k8sClaims("acme", "p1")), "RS256, ES256 or EdDSA"},
		{"HS256 keyed with the DER public key", sign(t, jose.HS256, pubDER, "rsa-1", k8sClaims("acme", "p1")), "RS256, ES256 or EdDSA"},
		{"RS384", sign(t, jose.RS384, rsaKey, "rsa-1", k8sClaims("acme", "p1")), "RS256, ES256 or EdDSA"},
		{"unknown kid", sign(t, jose.RS256, rsaBad, "rsa-9", k8sClaims("acme", "p1")), "unknown key id"},
		{"known kid, other key", sign(t, jose.RS256, rsaBad, "rsa-1", k8sClaims("acme", "p1")), "does not verify"},
		{"kid of another key type", sign(t, jose.ES256, ecKey, "rsa-1", k8sClaims("acme", "p1")), "does not verify"},
		{"tenant not configured", sign(t, jose.RS256, rsaKey, "rsa-1", k8sClaims("initech", "p1")), "not a configured tenant"},
		{"tenant not an ID", sign(t, jose.RS256, rsaKey, "rsa-1", k8sClaims("acme.>", "p1")), "tenant id"},
		{"pod name with a dot", sign(t, jose.RS256, rsaKey, "rsa-1", k8sClaims("acme", "planner.v2-abc")), "holds a dot"},
		{"instance with a wildcard", sign(t, jose.RS256, rsaKey, "rsa-1", k8sClaims("acme", "*")), "instance id"},
		{"instance claim missing", sign(t, jose.RS256, rsaKey, "rsa-1", with("acme", "p1", func(c map[string]any) {
			c["kubernetes.io"].(map[string]any)["pod"] = "p1"
		})), "no instance claim"},
		{"tenant claim not a string", sign(t, jose.RS256, rsaKey, "rsa-1", with("acme", "p1", func(c map[string]any) {
			c["kubernetes.io"].(map[string]any)["namespace"] = []string{"acme"}
		})), "not a string"},
		{"not a JWT", "acme", "RS256, ES256 or EdDSA"},
		{"too large", strings.Repeat("a", 17<<10), "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tc.token)
			require.ErrorIs(t, err, agentauth.ErrRefused)
			require.ErrorContains(t, err, tc.reason)
			if len(tc.token) > 20 {
				require.NotContains(t, err.Error(), tc.token[len(tc.token)-20:], "the error holds the token")
			}
		})
	}
}

// TestJWKSRefresh: an unknown key id reads the JWKS again, at most once
// per jwks_refresh_min, and a key the issuer added is then accepted.
func TestJWKSRefresh(t *testing.T) {
	iss := newIssuer(t)
	cfg := iss.config()
	cfg.JWKSRefreshMin = time.Second
	v, err := agentauth.New(cfg, testTenants)
	require.NoError(t, err)
	ctx := context.Background()
	_, err = v.Verify(ctx, rsaToken(t, "acme", "p1"))
	require.NoError(t, err)
	require.Equal(t, int64(1), iss.reads.Load())

	// The issuer rotates to a new key: tokens of the new key id.
	iss.setKeys(t, map[string]crypto.Signer{"rsa-2": rsaKey2})
	newTok := sign(t, jose.RS256, rsaKey2, "rsa-2", k8sClaims("acme", "p1"))
	bogus := sign(t, jose.RS256, rsaBad, "made-up", k8sClaims("acme", "p1"))
	for range 20 { // a flood of unknown key ids: refused, one read at most
		_, err = v.Verify(ctx, bogus)
		require.ErrorContains(t, err, "unknown key id")
	}
	require.LessOrEqual(t, iss.reads.Load(), int64(2), "unknown key ids are rate limited")
	require.Eventually(t, func() bool {
		_, err := v.Verify(ctx, newTok)
		return err == nil
	}, 5*time.Second, 50*time.Millisecond, "the issuer's new key is read after jwks_refresh_min")
}

// TestPublicKeysFile: static keys, as PEM or as a JWKS document.
func TestPublicKeysFile(t *testing.T) {
	testKeys(t)
	dir := t.TempDir()
	var pemKeys []byte
	for _, k := range []any{rsaKey.Public(), ecKey.Public(), edKey.Public()} {
		der, err := x509.MarshalPKIXPublicKey(k)
		require.NoError(t, err)
		pemKeys = append(pemKeys, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})...)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: rsaKey.Public(), KeyID: "rsa-1"}}})
	require.NoError(t, err)
	for name, content := range map[string][]byte{"keys.pem": pemKeys, "jwks.json": jwks} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(path, content, 0o600))
			v, err := agentauth.New(orchestrator.AgentAuthConfig{Issuer: testIssuer, Audiences: []string{testAudience}, PublicKeysFile: path}, testTenants)
			require.NoError(t, err)
			id, err := v.Verify(context.Background(), rsaToken(t, "globex", "p1"))
			require.NoError(t, err)
			require.Equal(t, "globex", id.Tenant)
			_, err = v.Verify(context.Background(), sign(t, jose.RS256, rsaBad, "rsa-1", k8sClaims("globex", "p1")))
			require.ErrorIs(t, err, agentauth.ErrRefused)
			if name == "keys.pem" {
				_, err = v.Verify(context.Background(), sign(t, jose.EdDSA, edKey, "", k8sClaims("globex", "p1")))
				require.NoError(t, err)
			}
		})
	}
	// A private key file is refused at start.
	der, err := x509.MarshalPKCS8PrivateKey(ecKey)
	require.NoError(t, err)
	path := filepath.Join(dir, "private.pem")
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	_, err = agentauth.New(orchestrator.AgentAuthConfig{Issuer: testIssuer, Audiences: []string{testAudience}, PublicKeysFile: path}, testTenants)
	require.ErrorContains(t, err, "only PUBLIC KEY blocks")
}

func TestConfigValidate(t *testing.T) {
	ok := orchestrator.AgentAuthConfig{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSURL: "https://issuer.example/keys"}
	require.NoError(t, ok.Validate())
	for _, tc := range []struct {
		field string
		edit  func(*orchestrator.AgentAuthConfig)
	}{
		{"nats.agent_auth.issuer", func(c *orchestrator.AgentAuthConfig) { c.Issuer = "" }},
		{"nats.agent_auth.audiences", func(c *orchestrator.AgentAuthConfig) { c.Audiences = nil }},
		{"nats.agent_auth.audiences", func(c *orchestrator.AgentAuthConfig) { c.Audiences = []string{" "} }},
		{"nats.agent_auth.jwks_url", func(c *orchestrator.AgentAuthConfig) { c.JWKSURL = "" }},
		{"nats.agent_auth.jwks_url", func(c *orchestrator.AgentAuthConfig) { c.JWKSURL = "http://issuer.example/keys" }},
		{"nats.agent_auth.public_keys_file", func(c *orchestrator.AgentAuthConfig) { c.PublicKeysFile = "/k.pem" }},
		{"nats.agent_auth.leeway", func(c *orchestrator.AgentAuthConfig) { c.Leeway = time.Hour }},
		{"nats.agent_auth.claims.instance", func(c *orchestrator.AgentAuthConfig) { c.Claims.Instance = "pod..name" }},
	} {
		c := ok
		tc.edit(&c)
		require.ErrorContains(t, c.Validate(), tc.field+":")
	}
	cfg, err := orchestrator.Parse([]byte(`
nats:
  agent_auth:
    issuer: https://kubernetes.default.svc.cluster.local
    audiences: [rekey]
    jwks_url: http://127.0.0.1:1/openid/v1/jwks
    leeway: 10s
tenants:
  acme: {secrets: {k: {backend: local}}}
`))
	require.NoError(t, err)
	require.Equal(t, 10*time.Second, cfg.NATS.AgentAuth.Leeway)
	require.Equal(t, "kubernetes.io.namespace", cfg.NATS.AgentAuth.WithDefaults().Claims.Tenant)
	withSeed := "nats:\n  %s\n  agent_auth:\n    issuer: x\n    audiences: [a]\n    public_keys_file: k\n    callout_issuer_seed_file: s\ntenants:\n  acme: {secrets: {k: {backend: local}}}\n"
	_, err = orchestrator.Parse(fmt.Appendf(nil, withSeed, "url: nats://127.0.0.1:4222"))
	require.NoError(t, err)
	_, err = orchestrator.Parse(fmt.Appendf(nil, withSeed, "replicas: 1"))
	require.ErrorContains(t, err, "nats.agent_auth.callout_issuer_seed_file: is only used with nats.url")
	_, err = orchestrator.Parse([]byte("nats:\n  url: nats://127.0.0.1:4222\n  agent_auth:\n    issuer: x\n    audiences: [a]\n    public_keys_file: k\ntenants:\n  acme: {secrets: {k: {backend: local}}}\n"))
	require.ErrorContains(t, err, "nats.agent_auth.callout_issuer_seed_file: must be set with nats.url")
	_, err = orchestrator.Parse([]byte("nats:\n  agent_auth:\n    issuer: x\n    audiences: [a]\n    public_keys_file: k\n    jwks: y\ntenants:\n  acme: {secrets: {k: {backend: local}}}\n"))
	require.ErrorContains(t, err, "jwks")
}

func BenchmarkLogin(b *testing.B) {
	iss := newIssuer(b)
	v := iss.verifier(b)
	for _, tc := range signingCases() {
		tok := sign(b, tc.alg, tc.key, tc.kid, k8sClaims("acme", "planner-1"))
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, ok := v.Login(&server.ClientOpts{Token: tok}); !ok {
					b.Fatal("login refused")
				}
			}
		})
	}
}
