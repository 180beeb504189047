package tenantauth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

const (
	rotAcme   = "/v1/tenants/acme/secrets/openai-key/rotate"
	rotGlobex = "/v1/tenants/globex/secrets/openai-key/rotate"
)

// TestHashedTokens: a configured token reaches its own tenant; a wrong one
// is the admin API's 401; another tenant's paths and the kill switch are
// 403, audited as refused, and queue nothing.
func TestHashedTokens(t *testing.T) {
	e := newEnv(t, tokensYAML())

	r := e.call("POST", rotAcme, acmeToken, "", nil)
	require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)
	rots := e.rotations()
	require.Len(t, rots, 1)
	require.Equal(t, schemas.Trigger{Kind: schemas.TriggerTenant, Source: "selfservice", Actor: "acme-ci"}, rots[0].Trigger)
	require.Equal(t, "requested through the self-service API", rots[0].Reason)
	recs := e.audit("acme")
	require.Equal(t, "tenant:acme-ci", recs[len(recs)-1].Actor)
	require.Equal(t, schemas.OutcomeAccepted, recs[len(recs)-1].Outcome)

	// The globex hash was configured in upper case.
	r = e.call("GET", "/v1/tenants/globex/secrets/openai-key", globexToken, "", nil)
	require.Equal(t, http.StatusOK, r.Code, "%s", r.Raw)

	for _, tc := range []struct {
		name, method, path, token string
		code                      int
		contains                  string
	}{
		{"wrong token", "POST", rotAcme, acmeToken + "x", 401, "invalid admin token"},
		{"other tenant rotate", "POST", rotGlobex, acmeToken, 403, "only reaches its own tenant"},
		{"other tenant list", "GET", "/v1/tenants/globex/secrets", acmeToken, 403, "only reaches its own tenant"},
		{"other tenant status", "GET", "/v1/tenants/globex/secrets/openai-key", acmeToken, 403, "only reaches its own tenant"},
		{"own revoke", "POST", "/v1/tenants/acme/revoke", acmeToken, 403, "may not call"},
		{"own restore", "POST", "/v1/tenants/acme/restore", acmeToken, 403, "may not call"},
		{"other revoke", "POST", "/v1/tenants/globex/revoke", acmeToken, 403, "may not call"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.call(tc.method, tc.path, tc.token, `{"reason":"try"}`, nil)
			require.Equal(t, tc.code, r.Code, "%s", r.Raw)
			require.Contains(t, r.Body["error"], tc.contains)
		})
	}
	require.Len(t, e.rotations(), 1, "a refused request was queued")
	require.Empty(t, e.msgs(schemas.StreamRevoke), "a tenant token reached the kill switch")

	var refused []schemas.AuditRecord
	for _, rec := range e.audit("acme") {
		if rec.Outcome == schemas.OutcomeRefused {
			refused = append(refused, rec)
		}
	}
	require.Len(t, refused, 6)
	for _, rec := range refused {
		require.Equal(t, "tenant:acme-ci", rec.Actor)
		require.Equal(t, "httpapi", rec.Component)
	}
	require.Equal(t, "globex", refused[0].Detail["target_tenant"])
	require.Equal(t, "rotation.request", refused[0].Action)
	require.Equal(t, "revocation.revoke.request", refused[3].Action)
	for _, rec := range e.audit("globex") {
		require.NotEqual(t, schemas.OutcomeRefused, rec.Outcome)
	}
	e.checkNoLeaks()
}

// jwtKeys are one algorithm's keys: the configured one and another.
type jwtKeys struct {
	alg          string
	method       jwt.SigningMethod
	sign, wrong  any
	section      string
	tenantClaim  string
	otherAlgSign func(t *testing.T, claims jwt.MapClaims) string
}

func keysFor(t *testing.T, alg string) jwtKeys {
	t.Helper()
	dir := t.TempDir()
	writePEM := func(pub any) string {
		der, err := x509.MarshalPKIXPublicKey(pub)
		require.NoError(t, err)
		path := filepath.Join(dir, "jwt.pub.pem")
		require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600))
		return path
	}
	hs := func(t *testing.T, claims jwt.MapClaims) string {
		return signJWT(t, jwt.SigningMethodHS256, []byte(hsKey), claims)
	}
	common := "  issuer: https://auth.example.test\n  audience: rekey\n"
	switch alg {
	case "RS256":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		w, err := rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		path := writePEM(&k.PublicKey)
		pemBytes, err := os.ReadFile(path)
		require.NoError(t, err)
		return jwtKeys{alg: alg, method: jwt.SigningMethodRS256, sign: k, wrong: w, tenantClaim: "tenant",
			section: "jwt:\n  algorithm: RS256\n  public_key_file: " + path + "\n" + common,
			// The classic confusion: HS256 "signed" with the public key.
			otherAlgSign: func(t *testing.T, c jwt.MapClaims) string {
				return signJWT(t, jwt.SigningMethodHS256, pemBytes, c)
			}}
	case "ES256":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		w, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return jwtKeys{alg: alg, method: jwt.SigningMethodES256, sign: k, wrong: w, tenantClaim: "org",
			section:      "jwt:\n  algorithm: ES256\n  tenant_claim: org\n  public_key_file: " + writePEM(&k.PublicKey) + "\n" + common,
			otherAlgSign: hs}
	default:
		rk, err := rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		return jwtKeys{alg: alg, method: jwt.SigningMethodHS256, sign: []byte(hsKey), wrong: []byte(hsKey + "-other"), tenantClaim: "tenant",
			section: "jwt:\n  algorithm: HS256\n  hs256_key_env: " + hsKeyEnv + "\n" + common,
			otherAlgSign: func(t *testing.T, c jwt.MapClaims) string {
				return signJWT(t, jwt.SigningMethodRS256, rk, c)
			}}
	}
}

func signJWT(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	require.NoError(t, err)
	return s
}

// TestJWT: valid, expired, not yet valid, without exp, wrong key, alg
// none, another algorithm, missing or bad tenant claim, wrong issuer or
// audience; for HS256, RS256 and ES256.
func TestJWT(t *testing.T) {
	for _, alg := range []string{"HS256", "RS256", "ES256"} {
		t.Run(alg, func(t *testing.T) {
			k := keysFor(t, alg)
			e := newEnv(t, tokensYAML()+k.section)
			now := time.Now()
			claims := func(edit func(jwt.MapClaims)) jwt.MapClaims {
				c := jwt.MapClaims{k.tenantClaim: "acme", "sub": "alice", "iss": "https://auth.example.test",
					"aud": "rekey", "exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix()}
				if edit != nil {
					edit(c)
				}
				return c
			}
			none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
			require.NoError(t, err)
			valid := signJWT(t, k.method, k.sign, claims(nil))
			for _, tc := range []struct {
				name, token, path string
				code              int
				contains          string
			}{
				{"valid", valid, "/v1/tenants/acme/secrets", 200, ""},
				{"valid status", valid, "/v1/tenants/acme/secrets/openai-key", 200, ""},
				{"audience list", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { c["aud"] = []string{"other", "rekey"} })), "/v1/tenants/acme/secrets", 200, ""},
				{"within leeway", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-5 * time.Second).Unix() })), "/v1/tenants/acme/secrets", 200, ""},
				{"other tenant's path", valid, "/v1/tenants/globex/secrets", 403, "only reaches its own tenant"},
				{"expired", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Hour).Unix() })), "/v1/tenants/acme/secrets", 401, "invalid tenant token: JWT is expired"},
				{"not yet valid", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() })), "/v1/tenants/acme/secrets", 401, "JWT is not valid yet"},
				{"no exp", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { delete(c, "exp") })), "/v1/tenants/acme/secrets", 401, "JWT has no exp claim"},
				{"wrong key", signJWT(t, k.method, k.wrong, claims(nil)), "/v1/tenants/acme/secrets", 401, "JWT signature is invalid"},
				{"alg none", none, "/v1/tenants/acme/secrets", 401, "JWT algorithm is not " + alg},
				{"other alg", k.otherAlgSign(t, claims(nil)), "/v1/tenants/acme/secrets", 401, "JWT algorithm is not " + alg},
				{"missing tenant claim", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { delete(c, k.tenantClaim) })), "/v1/tenants/acme/secrets", 401, "JWT has no " + k.tenantClaim + " claim"},
				{"tenant claim not a string", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { c[k.tenantClaim] = 42 })), "/v1/tenants/acme/secrets", 401, "is not a tenant id"},
				{"tenant claim not an id", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { c[k.tenantClaim] = "acme.>" })), "/v1/tenants/acme/secrets", 401, "is not a tenant id"},
				{"unknown tenant", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { c[k.tenantClaim] = "initech" })), "/v1/tenants/initech/secrets", 401, `names tenant "initech", which is not configured`},
				{"wrong issuer", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { c["iss"] = "https://evil.test" })), "/v1/tenants/acme/secrets", 401, "JWT issuer is not accepted"},
				{"wrong audience", signJWT(t, k.method, k.sign, claims(func(c jwt.MapClaims) { c["aud"] = "vault" })), "/v1/tenants/acme/secrets", 401, "JWT audience is not accepted"},
				{"tampered", valid[:len(valid)-4] + "AAAA", "/v1/tenants/acme/secrets", 401, "invalid tenant token"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					e.secrets = append(e.secrets, tc.token)
					r := e.call("GET", tc.path, tc.token, "", nil)
					require.Equal(t, tc.code, r.Code, "%s", r.Raw)
					if tc.contains != "" {
						require.Contains(t, r.Body["error"], tc.contains)
					}
				})
			}
			// A JWT's rotation names its token id, never the token.
			r := e.call("POST", rotAcme, valid, "", nil)
			require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)
			rots := e.rotations()
			require.Len(t, rots, 1)
			require.Equal(t, orchestrator.TokenID(valid), rots[0].Trigger.Actor)
			// Hashed tokens still work beside JWTs.
			r = e.call("GET", "/v1/tenants/globex/secrets", globexToken, "", nil)
			require.Equal(t, http.StatusOK, r.Code, "%s", r.Raw)
			e.checkNoLeaks()
		})
	}
}

// TestTenantIdempotency: a tenant's retry with the same Idempotency-Key
// gets the first answer and queues nothing, not even a 429 from the
// minimum interval; keys are scoped per tenant and apart from the admin's.
func TestTenantIdempotency(t *testing.T) {
	e := newEnv(t, tokensYAML()+"min_interval: 1h\n")
	key := map[string]string{"Idempotency-Key": "deploy-42"}
	first := e.call("POST", rotAcme, acmeToken, `{"reason":"deploy"}`, key)
	require.Equal(t, http.StatusAccepted, first.Code, "%s", first.Raw)
	second := e.call("POST", rotAcme, acmeToken, `{"reason":"deploy"}`, key)
	require.Equal(t, first.Code, second.Code, "%s", second.Raw)
	require.Equal(t, first.Body["request_id"], second.Body["request_id"])
	require.Equal(t, first.Body["subject"], second.Body["subject"])
	require.Equal(t, true, second.Body["duplicate"])
	require.Equal(t, "true", second.Header.Get("Idempotent-Replayed"))
	require.Len(t, e.msgs(schemas.StreamRotate), 1, "the retry queued a request")

	// Without the key: the minimum interval applies.
	r := e.call("POST", rotAcme, acmeToken, `{"reason":"deploy"}`, nil)
	require.Equal(t, http.StatusTooManyRequests, r.Code, "%s", r.Raw)
	// The admin's call with the same key is its own request.
	r = e.call("POST", rotAcme, adminToken, `{"reason":"deploy"}`, key)
	require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)
	require.NotEqual(t, first.Body["request_id"], r.Body["request_id"])
	require.Nil(t, r.Body["duplicate"])
	// Another tenant with the same key: its own request.
	r = e.call("POST", rotGlobex, globexToken, `{"reason":"deploy"}`, key)
	require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)
	require.Nil(t, r.Body["duplicate"])
	require.Len(t, e.msgs(schemas.StreamRotate), 3)
	e.checkNoLeaks()
}

// TestMinInterval: a tenant's second rotation of a secret within
// min_interval is 429 with Retry-After, on every replica; allowed again
// after the interval; the admin, other secrets and other tenants are not
// held back; of concurrent requests exactly one wins.
func TestMinInterval(t *testing.T) {
	const interval = time.Second
	self := tokensYAML() + "min_interval: 1s\n"
	e := newEnv(t, self)
	replica := e.serve(self)

	r := e.call("POST", rotAcme, acmeToken, "", nil)
	require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)
	accepted := time.Now()
	for _, base := range []string{e.url, replica} {
		r = e.callAt(base, "POST", rotAcme, acmeToken, "", nil)
		require.Equal(t, http.StatusTooManyRequests, r.Code, "%s", r.Raw)
		require.Equal(t, "1", r.Header.Get("Retry-After"))
		require.Contains(t, r.Body["error"], "minimum interval")
	}
	recs := e.audit("acme")
	require.Equal(t, schemas.OutcomeRateLimited, recs[len(recs)-1].Outcome)
	require.Equal(t, "tenant:acme-ci", recs[len(recs)-1].Actor)

	for _, c := range []struct{ path, token string }{
		{rotAcme, adminToken}, // admin calls are not limited
		{"/v1/tenants/acme/secrets/billing-db/rotate", acmeToken},
		{rotGlobex, globexToken},
	} {
		r = e.call("POST", c.path, c.token, "", nil)
		require.Equal(t, http.StatusAccepted, r.Code, "%s %s", c.path, r.Raw)
	}

	time.Sleep(time.Until(accepted.Add(interval + 50*time.Millisecond)))
	r = e.callAt(replica, "POST", rotAcme, acmeToken, "", nil)
	require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)

	// Concurrent requests on both replicas: one wins.
	time.Sleep(interval + 50*time.Millisecond)
	codes := make([]int, 8)
	var wg sync.WaitGroup
	for i := range codes {
		base := []string{e.url, replica}[i%2]
		wg.Go(func() {
			r, err := e.Do(base, "POST", rotGlobex, globexToken, "", nil)
			codes[i] = r.Code
			if err != nil {
				codes[i] = -1
				t.Errorf("concurrent call %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	count := map[int]int{}
	for _, c := range codes {
		count[c]++
	}
	require.Equal(t, map[int]int{http.StatusAccepted: 1, http.StatusTooManyRequests: 7}, count)
	e.checkNoLeaks()
}

// TestListStatuses: GET /v1/tenants/{t}/secrets lists the tenant's secrets
// with their status, never a value; a revoked tenant's tokens fail closed.
func TestListStatuses(t *testing.T) {
	e := newEnv(t, tokensYAML())
	ctx := context.Background()
	done := time.Now().UTC().Truncate(time.Second)
	_, err := e.state.UpdateSecretStatus(ctx, "acme", "openai-key", func(st *orchestrator.SecretStatus) error {
		st.Backend, st.State, st.Version, st.PreviousVersion, st.Rotations = "local", orchestrator.SecretIdle, "3", "2", 2
		st.LastRequestID, st.LastReason, st.LastTrigger = "req-1", "leak", schemas.Trigger{Kind: schemas.TriggerTenant, Actor: "acme-ci"}
		st.LastStartedAt, st.LastCompletedAt = done.Add(-time.Second), done
		return nil
	})
	require.NoError(t, err)
	_, err = e.state.UpdateSecretStatus(ctx, "acme", "billing-db", func(st *orchestrator.SecretStatus) error {
		st.State, st.LastError, st.LastFailedAt = orchestrator.SecretFailed, "vault unreachable", done
		return nil
	})
	require.NoError(t, err)

	r := e.call("GET", "/v1/tenants/acme/secrets", acmeToken, "", nil)
	require.Equal(t, http.StatusOK, r.Code, "%s", r.Raw)
	require.Equal(t, "acme", r.Body["tenant"])
	require.Equal(t, false, r.Body["tenant_revoked"])
	secrets := r.Body["secrets"].([]any)
	require.Len(t, secrets, 2)
	billing, openai := secrets[0].(map[string]any), secrets[1].(map[string]any)
	require.Equal(t, "billing-db", billing["secret"])
	require.Equal(t, "vault", billing["backend"], "backend from the config when never rotated")
	require.Equal(t, "failed", billing["state"])
	require.Equal(t, "vault unreachable", billing["last_error"])
	require.Equal(t, "openai-key", openai["secret"])
	require.Equal(t, "idle", openai["state"])
	require.Equal(t, "3", openai["version"])
	require.Equal(t, "2", openai["previous_version"])
	require.EqualValues(t, 2, openai["rotations"])
	require.Equal(t, "req-1", openai["last_rotation"].(map[string]any)["request_id"])
	require.NotContains(t, string(r.Raw), `"value"`)

	r = e.call("GET", "/v1/tenants/acme/secrets/openai-key", acmeToken, "", nil)
	require.Equal(t, http.StatusOK, r.Code, "%s", r.Raw)
	require.Equal(t, "3", r.Body["version"])

	require.NoError(t, e.state.SetTenantState(ctx, orchestrator.TenantState{Tenant: "acme", Revoked: true, Since: done}))
	for _, path := range []string{"/v1/tenants/acme/secrets", "/v1/tenants/acme/secrets/openai-key"} {
		r = e.call("GET", path, acmeToken, "", nil)
		require.Equal(t, http.StatusForbidden, r.Code, "%s", r.Raw)
		require.Contains(t, r.Body["error"], `tenant "acme" is revoked`)
	}
	r = e.call("POST", rotAcme, acmeToken, "", nil)
	require.Equal(t, http.StatusForbidden, r.Code, "%s", r.Raw)
	r = e.call("GET", "/v1/tenants/acme/secrets", adminToken, "", nil)
	require.Equal(t, http.StatusOK, r.Code, "the admin still sees a revoked tenant")
	require.Equal(t, true, r.Body["tenant_revoked"])
	require.Empty(t, e.rotations())
	e.checkNoLeaks()
}
