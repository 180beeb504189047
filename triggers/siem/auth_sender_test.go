package siem_test

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"
)

const (
	urlSecret1 = "us-9c2e7a1f4b8d6e0a3c5f7b9d"
	urlSecret2 = "us-rotated-1a3c5e7f9b2d4f6a"
	urlSecret3 = "us-from-env-8e6c4a2f0d1b3f5a"
	urlEnvVar  = "REKEY_TEST_SIEM_URL_SECRET"
)

const urlSecretYAML = `
sources:
  splunk-url:
    format: alertmanager
    tenants: [acme]
    auth:
      url_secret:
        secrets: [` + urlSecret1 + `, ` + urlSecret2 + `]
        secrets_env: [` + urlEnvVar + `]
    rules:
      - match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
  am-bearer:
    format: alertmanager
    tenants: [acme]
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
`

func leaked(fp string) []byte {
	return alertmanager(fp, map[string]string{"alertname": "LeakedCredential", "tenant": "acme", "secret": "openai-key"})
}

// TestAttackURLSecret (issue 16, item 1): a wrong, missing, truncated or
// misplaced URL secret is refused with 401 and changes nothing; the
// secrets never reach a log, a reply, an event or an audit record.
func TestAttackURLSecret(t *testing.T) {
	t.Setenv(urlEnvVar, urlSecret3)
	e := newEnvWith(t, urlSecretYAML, urlSecret1, urlSecret2, urlSecret3)
	for _, tc := range []struct{ name, path string }{
		{"none", "splunk-url"},
		{"wrong path", "splunk-url/us-0000000000000000000000"},
		{"truncated", "splunk-url/" + urlSecret1[:len(urlSecret1)-1]},
		{"longer", "splunk-url/" + urlSecret1 + "x"},
		{"wrong query", "splunk-url?key=us-0000000000000000000000"},
		{"other param", "splunk-url?token=" + urlSecret1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, resp := e.post(e.url, tc.path, leaked("fp-"+tc.name), noAuth)
			require.Equal(t, http.StatusUnauthorized, code, "%+v", resp)
			require.Contains(t, resp.Error, "URL secret")
			e.nothingQueued()
		})
	}
	// A source with another method has no secret path segment; its bearer
	// token in the path is not accepted either.
	code, _, _ := e.post(e.url, "am-bearer/"+bearerToken, leaked("fp-x"), noAuth)
	require.Equal(t, http.StatusNotFound, code)
	code, _, _ = e.post(e.url, "am-bearer/"+bearerToken, leaked("fp-x"), bearer(bearerToken))
	require.Equal(t, http.StatusNotFound, code)
	e.nothingQueued()

	// Each accepted secret, in the path or the query.
	for i, path := range []string{"splunk-url/" + urlSecret1, "splunk-url?key=" + urlSecret2, "splunk-url/" + urlSecret3} {
		code, _, resp := e.post(e.url, path, leaked("fp-ok-"+string(rune('a'+i))), noAuth)
		require.Equal(t, http.StatusAccepted, code, "%+v", resp)
	}
	require.Len(t, e.rotations(), 3)
}

// entra is an Entra ID stand-in: an RSA key and its JWKS over loopback.
type entra struct {
	key, other *rsa.PrivateKey
	jwks       *httptest.Server
}

const (
	entraTenant   = "8f3e2d1c-0b9a-4c7d-8e6f-5a4b3c2d1e0f"
	entraAudience = "api://rekey-webhooks"
	entraAppID    = "461e8683-5575-4561-ac7f-899cc907d62a"
)

func newEntra(t *testing.T) *entra {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	doc, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	}))
	t.Cleanup(srv.Close)
	return &entra{key: key, other: other, jwks: srv}
}

type entraToken struct {
	jwt.Claims
	TenantID string `json:"tid,omitempty"`
	AppID    string `json:"appid,omitempty"`
}

// token signs claims with key under key id kid.
func (x *entra) token(t *testing.T, key *rsa.PrivateKey, kid string, edit func(*entraToken)) string {
	t.Helper()
	now := time.Now()
	c := entraToken{Claims: jwt.Claims{Issuer: "https://sts.windows.net/" + entraTenant + "/", Audience: jwt.Audience{entraAudience},
		Subject: "azns", IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Hour))},
		TenantID: entraTenant, AppID: entraAppID}
	if edit != nil {
		edit(&c)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	require.NoError(t, err)
	s, err := jwt.Signed(sig).Claims(c).Serialize()
	require.NoError(t, err)
	return s
}

func (x *entra) yaml() string {
	return `
sources:
  azure:
    format: alertmanager
    tenants: [acme]
    auth:
      entra_id:
        tenant_id: ` + entraTenant + `
        audiences: [` + entraAudience + `]
        jwks_url: ` + x.jwks.URL + `
        app_ids: [` + entraAppID + `]
    rules:
      - match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
`
}

// TestAttackEntraIDToken (issue 16, item 1): Azure Monitor's secure
// webhook. A token of another issuer, audience, tenant or app, signed by
// another key, expired, not yet valid, without exp, HS256 with the public
// key as secret, or none at all, is refused with 401 and changes nothing.
func TestAttackEntraIDToken(t *testing.T) {
	x := newEntra(t)
	e := newEnvWith(t, x.yaml())
	hs := func() string {
		sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")}, nil)
		require.NoError(t, err)
		s, err := jwt.Signed(sig).Claims(jwt.Claims{Issuer: "https://sts.windows.net/" + entraTenant + "/", Audience: jwt.Audience{entraAudience},
			Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}).Serialize()
		require.NoError(t, err)
		return s
	}
	for _, tc := range []struct{ name, token, reason string }{
		{"wrong issuer", x.token(t, x.key, "k1", func(c *entraToken) { c.Issuer = "https://sts.windows.net/00000000-0000-0000-0000-000000000000/" }), "issuer"},
		{"wrong audience", x.token(t, x.key, "k1", func(c *entraToken) { c.Audience = jwt.Audience{"api://other"} }), "audience"},
		{"wrong tenant", x.token(t, x.key, "k1", func(c *entraToken) { c.TenantID = "00000000-0000-0000-0000-000000000000" }), "tid"},
		{"wrong app", x.token(t, x.key, "k1", func(c *entraToken) { c.AppID = "00000000-0000-0000-0000-000000000000" }), "appid"},
		{"other key", x.token(t, x.other, "k1", nil), "signature"},
		{"unknown kid", x.token(t, x.other, "k2", nil), "signature"},
		{"expired", x.token(t, x.key, "k1", func(c *entraToken) {
			c.Expiry = jwt.NewNumericDate(time.Now().Add(-10 * time.Minute))
			c.NotBefore = jwt.NewNumericDate(time.Now().Add(-time.Hour))
		}), "expired"},
		{"not yet valid", x.token(t, x.key, "k1", func(c *entraToken) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(10 * time.Minute)) }), "not valid yet"},
		{"no exp", x.token(t, x.key, "k1", func(c *entraToken) { c.Expiry = nil }), "no exp"},
		{"hs256", hs(), "RS256"},
		{"garbage", "not-a-jwt", "RS256"},
		{"none", "", "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sign := noAuth
			if tc.token != "" {
				sign = bearer(tc.token)
			}
			code, h, resp := e.post(e.url, "azure", leaked("fp-"+tc.name), sign)
			require.Equal(t, http.StatusUnauthorized, code, "%+v", resp)
			require.Contains(t, resp.Error, tc.reason)
			require.Equal(t, `Bearer realm="rekey"`, h.Get("WWW-Authenticate"))
			if tc.token != "" {
				require.NotContains(t, e.logs.String()+e.bodies.String(), tc.token, "the token is not repeated")
			}
			e.nothingQueued()
		})
	}
	code, _, resp := e.post(e.url, "azure", leaked("fp-ok"), bearer(x.token(t, x.key, "k1", nil)))
	require.Equal(t, http.StatusAccepted, code, "%+v", resp)
	require.Len(t, e.rotations(), 1)
	// The v2 issuer is accepted by default too.
	code, _, resp = e.post(e.url, "azure", leaked("fp-ok2"), bearer(x.token(t, x.key, "k1", func(c *entraToken) {
		c.Issuer = "https://login.microsoftonline.com/" + entraTenant + "/v2.0"
	})))
	require.Equal(t, http.StatusAccepted, code, "%+v", resp)
	require.Len(t, e.rotations(), 2)
}
