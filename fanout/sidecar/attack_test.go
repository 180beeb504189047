package sidecar_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/stretchr/testify/require"
)

// attack is one request that must be refused.
type attack struct {
	name    string
	method  string
	path    string
	headers map[string]string
	body    string
	code    int
	want    string // in the body
}

// runAttacks sends each attack and checks the refusal, that no value of
// acme or globex is in any reply, and that no stream or bucket changed.
func runAttacks(t *testing.T, e *env, base string, attacks []attack) {
	t.Helper()
	values := []string{e.value("openai-key").Value, e.value("billing-db").Value,
		e.otherValue("globex", "openai-key"), e.otherValue("globex", "billing-db")}
	before := e.settled() // the probes' use reports are stored
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			method := a.method
			if method == "" {
				method = "GET"
			}
			code, body := call(t, method, base+a.path, a.headers, a.body)
			requireRefused(t, code, body, a.code, a.want, values...)
		})
	}
	require.Equal(t, before, e.streams(), "an attack changed a stream or bucket")
	e.requireNoValue(values...)
}

// requireRefused checks a refusal's status and body, and that no value is
// in it.
func requireRefused(t *testing.T, code int, body string, wantCode int, want string, values ...string) {
	t.Helper()
	require.Equal(t, wantCode, code, body)
	require.Contains(t, body, want)
	for _, v := range values {
		require.NotContains(t, body, v)
	}
}

func TestAttackRekeyAPI(t *testing.T) {
	e := newEnv(t)
	auth := map[string]string{"Authorization": "Bearer " + rekeyToken}
	with := func(k, v string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + rekeyToken, k: v}
	}
	runAttacks(t, e, e.rekey, []attack{
		{name: "no token", path: "/v1/secrets/openai-key", code: 401, want: "unauthorized"},
		{name: "wrong token", path: "/v1/secrets/openai-key", headers: map[string]string{"Authorization": "Bearer " + rekeyToken + "x"}, code: 401, want: "unauthorized"},
		{name: "token not bearer", path: "/v1/secrets/openai-key", headers: map[string]string{"Authorization": rekeyToken}, code: 401, want: "unauthorized"},
		{name: "prefix of the token", path: "/v1/secrets/openai-key", headers: map[string]string{"Authorization": "Bearer " + rekeyToken[:10]}, code: 401, want: "unauthorized"},
		{name: "events without token", path: "/v1/events", code: 401, want: "unauthorized"},
		{name: "X-Forwarded-For", path: "/v1/secrets/openai-key", headers: with("X-Forwarded-For", "10.0.0.1"), code: 403, want: "forwarded"},
		{name: "Forwarded", path: "/v1/secrets/openai-key", headers: with("Forwarded", "for=10.0.0.1"), code: 403, want: "forwarded"},
		{name: "secret rekey does not manage", path: "/v1/secrets/nope", headers: auth, code: 404, want: "not_found"},
		{name: "another tenant's subject", path: "/v1/secrets/globex.openai-key", headers: auth, code: 404, want: "not_found"},
		{name: "wildcard", path: "/v1/secrets/*", headers: auth, code: 404, want: "not_found"},
		{name: "escaped traversal", path: "/v1/secrets/..%2Fglobex%2Fopenai-key", headers: auth, code: 404, want: "not_found"},
		{name: "write", method: "POST", path: "/v1/secrets/openai-key", headers: auth, code: 405},
	})
}

func TestAttackAWSAgent(t *testing.T) {
	e := newEnv(t)
	tok := map[string]string{"X-Aws-Parameters-Secrets-Token": awsAgentToken}
	with := func(k, v string) map[string]string {
		return map[string]string{"X-Aws-Parameters-Secrets-Token": awsAgentToken, k: v}
	}
	const own = "/secretsmanager/get?secretId=%2Ftenants%2Facme%2Fopenai-key"
	runAttacks(t, e, e.awsAgt, []attack{
		{name: "no token", path: own, code: 403, want: "Bad Token"},
		{name: "empty token", path: own, headers: map[string]string{"X-Aws-Parameters-Secrets-Token": ""}, code: 403, want: "Bad Token"},
		{name: "wrong token", path: own, headers: map[string]string{"X-Aws-Parameters-Secrets-Token": "x" + awsAgentToken}, code: 403, want: "Bad Token"},
		{name: "token in another header", path: own, headers: map[string]string{"Authorization": awsAgentToken}, code: 403, want: "Bad Token"},
		{name: "X-Forwarded-For", path: own, headers: with("X-Forwarded-For", "10.0.0.1"), code: 400, want: "Forwarded"},
		{name: "path form without token", path: "/v1//tenants/acme/openai-key", code: 403, want: "Bad Token"},
		{name: "another tenant's name", path: "/secretsmanager/get?secretId=%2Ftenants%2Fglobex%2Fopenai-key", headers: tok, code: 400, want: "ResourceNotFoundException"},
		{name: "another tenant's name, path form", path: "/v1//tenants/globex/openai-key", headers: tok, code: 400, want: "ResourceNotFoundException"},
		{name: "another tenant's ARN", path: "/secretsmanager/get?secretId=arn:aws:secretsmanager:us-east-1:000000000000:secret:/tenants/globex/openai-key", headers: tok, code: 400, want: "ResourceNotFoundException"},
		{name: "traversal into another tenant", path: "/secretsmanager/get?secretId=%2Ftenants%2Facme%2F..%2Fglobex%2Fopenai-key", headers: tok, code: 400, want: "ResourceNotFoundException"},
		{name: "name rekey does not manage", path: "/secretsmanager/get?secretId=%2Ftenants%2Facme%2Fnope", headers: tok, code: 400, want: "ResourceNotFoundException"},
		{name: "name outside the template", path: "/secretsmanager/get?secretId=openai-key", headers: tok, code: 400, want: "ResourceNotFoundException"},
		{name: "old version", path: own + "&versionId=v0", headers: tok, code: 400, want: "ResourceNotFoundException"},
		{name: "previous stage", path: own + "&versionStage=AWSPREVIOUS", headers: tok, code: 400, want: "ResourceNotFoundException"},
		{name: "unknown parameter", path: own + "&x=1", headers: tok, code: 400, want: "unknown parameter"},
		{name: "no secretId", path: "/secretsmanager/get", headers: tok, code: 400, want: "missing parameter secretId"},
		{name: "POST", method: "POST", path: own, headers: tok, code: 405, want: "Not allowed"},
	})
}

// signed builds a JSON 1.1 request signed with key/secret at t.
func signed(t *testing.T, base, target, body, key, secret string, at time.Time) *http.Request {
	t.Helper()
	req, err := http.NewRequest("POST", base+"/", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "secretsmanager."+target)
	sum := sha256.Sum256([]byte(body))
	require.NoError(t, v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: key, SecretAccessKey: secret},
		req, hex.EncodeToString(sum[:]), "secretsmanager", "us-east-1", at))
	return req
}

func do(t testing.TB, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func TestAttackAWSAPI(t *testing.T) {
	e := newEnv(t)
	values := []string{e.value("openai-key").Value, e.otherValue("globex", "openai-key")}
	before := e.streams()
	own := `{"SecretId":"/tenants/acme/openai-key"}`
	now := time.Now()

	// The right signature is served: the attacks below differ in one thing.
	code, body := do(t, signed(t, e.awsAPI, "GetSecretValue", own, accessKeyID, secretKey, now))
	require.Equal(t, 200, code, body)
	require.Contains(t, body, values[0])

	replayed := signed(t, e.awsAPI, "GetSecretValue", own, accessKeyID, secretKey, now.Add(-6*time.Minute))
	for _, c := range []struct {
		name string
		req  *http.Request
		code int
		want string
	}{
		{"unsigned", func() *http.Request {
			r := signed(t, e.awsAPI, "GetSecretValue", own, accessKeyID, secretKey, now)
			r.Header.Del("Authorization")
			return r
		}(), 400, "MissingAuthenticationTokenException"},
		{"wrong secret key", signed(t, e.awsAPI, "GetSecretValue", own, accessKeyID, secretKey+"x", now), 403, "InvalidSignatureException"},
		{"unknown access key", signed(t, e.awsAPI, "GetSecretValue", own, "AKIAOTHER", secretKey, now), 403, "UnrecognizedClientException"},
		{"body changed after signing", func() *http.Request {
			r := signed(t, e.awsAPI, "GetSecretValue", own, accessKeyID, secretKey, now)
			r.Body = io.NopCloser(strings.NewReader(`{"SecretId":"/tenants/acme/billing-db"}`))
			return r
		}(), 403, "InvalidSignatureException"},
		{"target changed after signing", func() *http.Request {
			r := signed(t, e.awsAPI, "DescribeSecret", own, accessKeyID, secretKey, now)
			r.Header.Set("X-Amz-Target", "secretsmanager.GetSecretValue")
			return r
		}(), 403, "InvalidSignatureException"},
		{"signature of another request", func() *http.Request {
			r := signed(t, e.awsAPI, "GetSecretValue", own, accessKeyID, secretKey, now)
			o := signed(t, e.awsAPI, "GetSecretValue", `{"SecretId":"/tenants/acme/billing-db"}`, accessKeyID, secretKey, now)
			r.Header.Set("Authorization", o.Header.Get("Authorization"))
			return r
		}(), 403, "InvalidSignatureException"},
		{"replayed after 6 minutes", replayed, 403, "Signature expired"},
		{"dated in the future", signed(t, e.awsAPI, "GetSecretValue", own, accessKeyID, secretKey, now.Add(6*time.Minute)), 403, "Signature expired"},
		{"X-Forwarded-For", func() *http.Request {
			r := signed(t, e.awsAPI, "GetSecretValue", own, accessKeyID, secretKey, now)
			r.Header.Set("X-Forwarded-For", "10.0.0.1")
			return r
		}(), 403, "AccessDeniedException"},
		{"another tenant's name", signed(t, e.awsAPI, "GetSecretValue", `{"SecretId":"/tenants/globex/openai-key"}`, accessKeyID, secretKey, now), 400, "ResourceNotFoundException"},
		{"another tenant's ARN", signed(t, e.awsAPI, "GetSecretValue", `{"SecretId":"arn:aws:secretsmanager:us-east-1:000000000000:secret:/tenants/globex/openai-key"}`, accessKeyID, secretKey, now), 400, "ResourceNotFoundException"},
		{"another account's ARN", signed(t, e.awsAPI, "GetSecretValue", `{"SecretId":"arn:aws:secretsmanager:us-east-1:111111111111:secret:/tenants/acme/openai-key"}`, accessKeyID, secretKey, now), 400, "ResourceNotFoundException"},
		{"another tenant in a batch", signed(t, e.awsAPI, "BatchGetSecretValue", `{"SecretIdList":["/tenants/globex/openai-key"]}`, accessKeyID, secretKey, now), 200, `"ErrorCode":"ResourceNotFoundException"`},
		{"describe another tenant's", signed(t, e.awsAPI, "DescribeSecret", `{"SecretId":"/tenants/globex/openai-key"}`, accessKeyID, secretKey, now), 400, "ResourceNotFoundException"},
		{"a write", signed(t, e.awsAPI, "PutSecretValue", `{"SecretId":"/tenants/acme/openai-key","SecretString":"x"}`, accessKeyID, secretKey, now), 400, "UnknownOperationException"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := do(t, c.req)
			requireRefused(t, code, body, c.code, c.want, values...)
		})
	}
	require.Equal(t, before, e.streams(), "an attack changed a stream or bucket")
	e.requireNoValue(values...)
}

func TestAttackVault(t *testing.T) {
	e := newEnv(t)
	tok := map[string]string{"X-Vault-Token": vaultToken}
	with := func(k, v string) map[string]string { return map[string]string{"X-Vault-Token": vaultToken, k: v} }
	const own = "/v1/secret/data/tenants/acme/openai-key"
	runAttacks(t, e, e.vault, []attack{
		{name: "no token", path: own, code: 403, want: "permission denied"},
		{name: "wrong token", path: own, headers: map[string]string{"X-Vault-Token": vaultToken + "x"}, code: 403, want: "permission denied"},
		{name: "wrong bearer", path: own, headers: map[string]string{"Authorization": "Bearer x" + vaultToken}, code: 403, want: "permission denied"},
		{name: "lookup-self without token", path: "/v1/auth/token/lookup-self", code: 403, want: "permission denied"},
		{name: "X-Forwarded-For", path: own, headers: with("X-Forwarded-For", "10.0.0.1"), code: 403, want: "refused"},
		{name: "another tenant's path", path: "/v1/secret/data/tenants/globex/openai-key", headers: tok, code: 404, want: `"errors":[]`},
		{name: "another tenant's metadata", path: "/v1/secret/metadata/tenants/globex/openai-key", headers: tok, code: 404, want: `"errors":[]`},
		{name: "traversal", path: "/v1/secret/data/tenants/acme/../globex/openai-key", headers: tok, code: 404, want: `"errors":[]`},
		{name: "another tenant's static role", path: "/v1/database/static-creds/globex-app-db", headers: tok, code: 404, want: `"errors":[]`},
		{name: "another mount", path: "/v1/kv/data/tenants/acme/openai-key", headers: tok, code: 404, want: `"errors":[]`},
		{name: "path rekey does not manage", path: "/v1/secret/data/tenants/acme/nope", headers: tok, code: 404, want: `"errors":[]`},
		{name: "old version", path: own + "?version=999", headers: tok, code: 404, want: `"errors":[]`},
		{name: "write", method: "POST", path: own, headers: tok, body: `{"data":{"value":"x"}}`, code: 405, want: "reads only"},
		{name: "another mount's type", path: "/v1/sys/internal/ui/mounts/sys", headers: tok, code: 403, want: "permission denied"},
	})
}

// TestRevokedTenantEveryAPI: once acme is revoked every API refuses with
// its access-denied error and serves no value, old or new; once restored,
// each serves the new value.
func TestRevokedTenantEveryAPI(t *testing.T) {
	e := newEnv(t)
	old := e.value("openai-key")
	e.revoke("revoke", true)
	now := time.Now()
	for _, c := range []struct {
		name string
		req  func() *http.Request
		code int
		want string
	}{
		{"rekey", func() *http.Request {
			return get(t, e.rekey+"/v1/secrets/openai-key", "Authorization", "Bearer "+rekeyToken)
		}, 403, `"revoked"`},
		{"aws agent", func() *http.Request {
			return get(t, e.awsAgt+"/secretsmanager/get?secretId=%2Ftenants%2Facme%2Fopenai-key", "X-Aws-Parameters-Secrets-Token", awsAgentToken)
		}, 400, "AccessDeniedException"},
		{"aws api", func() *http.Request {
			return signed(t, e.awsAPI, "GetSecretValue", `{"SecretId":"/tenants/acme/openai-key"}`, accessKeyID, secretKey, now)
		}, 400, "AccessDeniedException"},
		{"aws api batch", func() *http.Request {
			return signed(t, e.awsAPI, "BatchGetSecretValue", `{"SecretIdList":["/tenants/acme/openai-key","/tenants/acme/billing-db"]}`, accessKeyID, secretKey, now)
		}, 400, "AccessDeniedException"},
		{"vault", func() *http.Request {
			return get(t, e.vault+"/v1/secret/data/tenants/acme/openai-key", "X-Vault-Token", vaultToken)
		}, 403, "permission denied"},
		{"vault health", func() *http.Request { return get(t, e.vault+"/v1/sys/health") }, 503, `"sealed":true`},
		{"readyz", func() *http.Request { return get(t, e.rekey+"/readyz") }, 503, "revoked"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := do(t, c.req())
			requireRefused(t, code, body, c.code, c.want, old.Value)
		})
	}
	e.revoke("restore", false)
	require.Eventually(t, func() bool {
		code, _ := do(t, get(t, e.rekey+"/v1/secrets/openai-key", "Authorization", "Bearer "+rekeyToken))
		return code == 200
	}, 20*time.Second, 10*time.Millisecond)
	fresh := e.value("openai-key")
	require.NotEqual(t, old.Version, fresh.Version, "revocation rotates the tenant's secrets")
	code, body := do(t, get(t, e.awsAgt+"/v1//tenants/acme/openai-key", "X-Aws-Parameters-Secrets-Token", awsAgentToken))
	require.Equal(t, 200, code, body)
	require.Contains(t, body, fresh.Version)
	e.requireNoValue(old.Value, fresh.Value)
}

func get(t *testing.T, url string, kv ...string) *http.Request {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	return req
}
