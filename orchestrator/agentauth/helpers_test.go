package agentauth_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/agentauth"
)

const (
	testIssuer   = "https://kubernetes.default.svc.cluster.local"
	testAudience = "rekey"
)

var testTenants = []string{"acme", "globex"}

// Test keys are made once: an RSA key takes a while.
var (
	keysOnce                sync.Once
	rsaKey, rsaKey2, rsaBad *rsa.PrivateKey
	ecKey                   *ecdsa.PrivateKey
	edKey                   ed25519.PrivateKey
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		rsaKey, err = rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		rsaBad, err = rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		_, edKey, err = ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
	})
}

// issuer serves a JWKS over loopback HTTP and signs tokens.
type issuer struct {
	srv   *httptest.Server
	reads atomic.Int64
	mu    sync.Mutex
	jwks  []byte
}

// newIssuer serves the public keys "rsa-1" (RS256), "ec-1" (ES256) and
// "ed-1" (EdDSA).
func newIssuer(t testing.TB) *issuer {
	t.Helper()
	testKeys(t)
	iss := &issuer{}
	iss.setKeys(t, map[string]crypto.Signer{"rsa-1": rsaKey, "ec-1": ecKey, "ed-1": edKey})
	iss.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		iss.reads.Add(1)
		iss.mu.Lock()
		defer iss.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(iss.jwks)
	}))
	t.Cleanup(iss.srv.Close)
	return iss
}

func (i *issuer) setKeys(t testing.TB, keys map[string]crypto.Signer) {
	t.Helper()
	var set jose.JSONWebKeySet
	for kid, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public(), KeyID: kid, Use: "sig"})
	}
	b, err := json.Marshal(set)
	require.NoError(t, err)
	i.mu.Lock()
	i.jwks = b
	i.mu.Unlock()
}

func (i *issuer) config() orchestrator.AgentAuthConfig {
	return orchestrator.AgentAuthConfig{
		Issuer: testIssuer, Audiences: []string{"other", testAudience}, JWKSURL: i.srv.URL + "/openid/v1/jwks",
		JWKSRefreshMin: time.Hour,
		Claims:         orchestrator.AgentClaimsConfig{Tool: "kubernetes.io.serviceaccount.name"},
	}
}

func (i *issuer) verifier(t testing.TB) *agentauth.Verifier {
	t.Helper()
	v, err := agentauth.New(i.config(), testTenants)
	require.NoError(t, err)
	return v
}

// k8sClaims are the claims of a Kubernetes projected service-account
// token of pod in namespace ns, valid for ten minutes.
func k8sClaims(ns, pod string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": testIssuer, "aud": []string{testAudience}, "sub": "system:serviceaccount:" + ns + ":planner",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      ns,
			"pod":            map[string]any{"name": pod, "uid": "4d1f0c1e-0000-4000-8000-000000000001"},
			"serviceaccount": map[string]any{"name": "planner", "uid": "4d1f0c1e-0000-4000-8000-000000000002"},
		},
	}
}

// sign makes a JWT of claims signed with key under alg and key id kid.
func sign(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	require.NoError(t, err)
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	require.NoError(t, err)
	return tok
}

func rsaToken(t testing.TB, ns, pod string) string {
	return sign(t, jose.RS256, rsaKey, "rsa-1", k8sClaims(ns, pod))
}
