package api_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/api"
)

// fakeAuth knows a few tenant tokens; "expired" fails verification.
type fakeAuth map[string]api.Principal

func (f fakeAuth) Authenticate(r *http.Request) (api.Principal, error) {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if tok == "expired" {
		return api.Principal{}, fmt.Errorf("%w: JWT is expired", api.ErrInvalidToken)
	}
	if p, ok := f[tok]; ok {
		return p, nil
	}
	return api.Principal{}, api.ErrUnknownToken
}

// fakeLimiter refuses every reservation after the first per secret, and
// counts the ones given back.
type fakeLimiter struct {
	mu     sync.Mutex
	taken  map[string]bool
	undone int
}

func (l *fakeLimiter) Reserve(_ context.Context, tenant, secret string) (func(context.Context), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.taken[tenant+"/"+secret] {
		return nil, &api.TooSoonError{RetryAfter: 1500 * time.Millisecond}
	}
	l.taken[tenant+"/"+secret] = true
	return func(context.Context) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.undone++
		delete(l.taken, tenant+"/"+secret)
	}, nil
}

var tenantTokens = fakeAuth{
	"acme-token":   {Kind: api.PrincipalTenant, Tenant: "acme", TokenID: "acme-ci"},
	"globex-token": {Kind: api.PrincipalTenant, Tenant: "globex", TokenID: "globex-ci"},
}

// TestAdminBehaviour: the admin API's 400/401/404/413 cases are what they
// were before tenant tokens, with and without tenant access enabled.
func TestAdminBehaviour(t *testing.T) {
	for _, withTenants := range []bool{false, true} {
		t.Run(fmt.Sprintf("tenants=%v", withTenants), func(t *testing.T) {
			e := newEnv(t, orchestrator.NATSConfig{}, func(d *api.Deps) {
				if withTenants {
					d.Tenants, d.Limiter = tenantTokens, &fakeLimiter{taken: map[string]bool{}}
				}
			})
			rot := "/v1/tenants/acme/secrets/openai-key/rotate"
			for _, tc := range []struct {
				name, method, path, token, body string
				code                            int
				contains                        string
			}{
				{"no token", "POST", rot, "", "", 401, "missing Authorization"},
				{"wrong token", "POST", rot, "wrong-token-wrong-token", "", 401, "invalid admin token"},
				{"jwt-shaped unknown", "POST", rot, "eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "", 401, "invalid admin token"},
				{"unknown tenant", "POST", "/v1/tenants/initech/secrets/openai-key/rotate", adminToken, "", 404, `tenant "initech" is not configured`},
				{"unknown secret", "POST", "/v1/tenants/acme/secrets/stripe-key/rotate", adminToken, "", 404, `secret "stripe-key"`},
				{"unknown secret status", "GET", "/v1/tenants/acme/secrets/stripe-key", adminToken, "", 404, "not configured"},
				{"unknown tenant list", "GET", "/v1/tenants/initech/secrets", adminToken, "", 404, "not configured"},
				{"unknown tenant revoke", "POST", "/v1/tenants/initech/revoke", adminToken, "", 404, "not configured"},
				{"upper case tenant", "POST", "/v1/tenants/ACME/secrets/openai-key/rotate", adminToken, "", 400, "tenant id"},
				{"dot in secret", "POST", "/v1/tenants/acme/secrets/openai.key/rotate", adminToken, "", 400, "secret id"},
				{"wildcard tenant", "POST", "/v1/tenants/*/revoke", adminToken, "", 400, "tenant id"},
				{"gt wildcard", "POST", "/v1/tenants/acme/secrets/%3E/rotate", adminToken, "", 400, "secret id"},
				{"bad json", "POST", rot, adminToken, "{not json", 400, "invalid JSON body"},
				{"unknown field", "POST", rot, adminToken, `{"value":"x"}`, 400, "unknown field"},
				{"no token beats bad id", "POST", "/v1/tenants/ACME/revoke", "", "", 401, "missing Authorization"},
				{"too big", "POST", rot, adminToken, `{"reason":"` + strings.Repeat("x", 8192) + `"}`, 413, "body over 4096 bytes"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					r := e.call(tc.method, tc.path, tc.token, tc.body, nil)
					require.Equal(t, tc.code, r.Code, "%s", r.Raw)
					require.Contains(t, r.Body["error"], tc.contains)
					if tc.code == 401 {
						require.Equal(t, `Bearer realm="rekey"`, r.Header.Get("WWW-Authenticate"))
					}
				})
			}
			require.Zero(t, e.lastSeq(schemas.StreamRotate), "a refused request was published")
			require.Zero(t, e.lastSeq(schemas.StreamRevoke), "a refused request was published")

			// The admin token reaches every route, and is never limited.
			for range 2 {
				r := e.call("POST", rot, adminToken, `{"reason":"admin"}`, nil)
				require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)
			}
			for _, path := range []string{"/v1/tenants/acme", "/v1/tenants/acme/secrets", "/v1/tenants/globex/secrets/openai-key"} {
				r := e.call("GET", path, adminToken, "", nil)
				require.Equal(t, http.StatusOK, r.Code, "%s: %s", path, r.Raw)
			}
			r := e.call("POST", "/v1/tenants/globex/revoke", adminToken, `{"reason":"drill"}`, nil)
			require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)
			recs := e.audit("globex")
			require.NotEmpty(t, recs)
			require.Equal(t, "api:"+orchestrator.TokenID(adminToken), recs[len(recs)-1].Actor)
		})
	}
}

// TestTenantScope: with a (fake) Authenticator, a tenant principal reaches
// only its own tenant's rotate, list and status; everything else is 403
// and audited as refused in its own tenant's trail.
func TestTenantScope(t *testing.T) {
	lim := &fakeLimiter{taken: map[string]bool{}}
	e := newEnv(t, orchestrator.NATSConfig{}, func(d *api.Deps) {
		d.Tenants, d.Limiter = tenantTokens, lim
	})
	for _, tc := range []struct {
		name, method, path, token string
		code                      int
		contains                  string
	}{
		{"own rotate", "POST", "/v1/tenants/acme/secrets/openai-key/rotate", "acme-token", 202, ""},
		{"own status", "GET", "/v1/tenants/acme/secrets/openai-key", "acme-token", 200, ""},
		{"own list", "GET", "/v1/tenants/acme/secrets", "acme-token", 200, ""},
		{"own unknown secret", "GET", "/v1/tenants/acme/secrets/stripe-key", "acme-token", 404, "not configured"},
		{"other rotate", "POST", "/v1/tenants/globex/secrets/openai-key/rotate", "acme-token", 403, "only reaches its own tenant"},
		{"other status", "GET", "/v1/tenants/globex/secrets/openai-key", "acme-token", 403, "only reaches its own tenant"},
		{"other list", "GET", "/v1/tenants/globex/secrets", "acme-token", 403, "only reaches its own tenant"},
		{"unconfigured tenant", "GET", "/v1/tenants/initech/secrets", "acme-token", 403, "only reaches its own tenant"},
		{"invalid tenant", "GET", "/v1/tenants/ACME/secrets", "acme-token", 403, "only reaches its own tenant"},
		{"own revoke", "POST", "/v1/tenants/acme/revoke", "acme-token", 403, "may not call POST /v1/tenants/{tenant}/revoke"},
		{"own restore", "POST", "/v1/tenants/acme/restore", "acme-token", 403, "may not call"},
		{"own tenant status", "GET", "/v1/tenants/acme", "acme-token", 403, "may not call"},
		{"invalid tenant token", "GET", "/v1/tenants/acme/secrets", "expired", 401, "invalid tenant token: JWT is expired"},
		{"unknown token", "GET", "/v1/tenants/acme/secrets", "nobody", 401, "invalid admin token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.call(tc.method, tc.path, tc.token, "", nil)
			require.Equal(t, tc.code, r.Code, "%s", r.Raw)
			if tc.contains != "" {
				require.Contains(t, r.Body["error"], tc.contains)
			}
		})
	}
	require.EqualValues(t, 1, e.lastSeq(schemas.StreamRotate), "only the own rotation was queued")
	require.Zero(t, e.lastSeq(schemas.StreamRevoke))

	var refused []schemas.AuditRecord
	for _, rec := range e.audit("acme") {
		if rec.Outcome == schemas.OutcomeRefused {
			refused = append(refused, rec)
			require.Equal(t, "tenant:acme-ci", rec.Actor)
		}
	}
	require.Len(t, refused, 8)
	require.Equal(t, "globex", refused[0].Detail["target_tenant"])
	require.Equal(t, "openai-key", refused[0].Detail["target_secret"])
	require.Equal(t, "rotation.request", refused[0].Action)
	require.Equal(t, "(invalid)", refused[4].Detail["target_tenant"])
	require.Equal(t, "revocation.revoke.request", refused[5].Action)
	require.Empty(t, e.audit("globex"), "nothing was written to the other tenant's trail")

	// The limiter: a second tenant rotation is 429 with Retry-After
	// (rounded up), audited; the admin is not limited.
	r := e.call("POST", "/v1/tenants/acme/secrets/openai-key/rotate", "acme-token", "", nil)
	require.Equal(t, http.StatusTooManyRequests, r.Code, "%s", r.Raw)
	require.Equal(t, "2", r.Header.Get("Retry-After"))
	require.Contains(t, r.Body["error"], "minimum interval")
	recs := e.audit("acme")
	require.Equal(t, schemas.OutcomeRateLimited, recs[len(recs)-1].Outcome)
	r = e.call("POST", "/v1/tenants/acme/secrets/openai-key/rotate", adminToken, "", nil)
	require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)
	require.Zero(t, lim.undone)

	// A revoked tenant's tokens fail closed.
	require.NoError(t, e.state.SetTenantState(context.Background(), orchestrator.TenantState{Tenant: "acme", Revoked: true}))
	r = e.call("GET", "/v1/tenants/acme/secrets", "acme-token", "", nil)
	require.Equal(t, http.StatusForbidden, r.Code, "%s", r.Raw)
	require.Contains(t, r.Body["error"], `tenant "acme" is revoked`)
	r = e.call("GET", "/v1/tenants/globex/secrets", "globex-token", "", nil)
	require.Equal(t, http.StatusOK, r.Code, "%s", r.Raw)
}

// TestIdempotency: a retried call with the same Idempotency-Key gets the
// first answer back and queues nothing new, even after JetStream's
// duplicate window; errors are not kept; a key reused for another body
// is refused.
func TestIdempotency(t *testing.T) {
	e := newEnv(t, orchestrator.NATSConfig{DuplicateWindow: time.Second}, nil)
	rot := "/v1/tenants/acme/secrets/openai-key/rotate"
	key := map[string]string{"Idempotency-Key": "ticket-4711"}

	// An error first: not kept, the retry runs.
	r := e.call("POST", rot, adminToken, "{not json", key)
	require.Equal(t, http.StatusBadRequest, r.Code)

	first := e.call("POST", rot, adminToken, `{"reason":"leak"}`, key)
	require.Equal(t, http.StatusAccepted, first.Code, "%s", first.Raw)
	require.Nil(t, first.Body["duplicate"])
	require.Empty(t, first.Header.Get("Idempotent-Replayed"))

	time.Sleep(1500 * time.Millisecond) // past JetStream's duplicate window
	second := e.call("POST", rot, adminToken, `{"reason":"leak"}`, key)
	require.Equal(t, first.Code, second.Code)
	require.Equal(t, "true", second.Header.Get("Idempotent-Replayed"))
	require.Equal(t, first.Body["request_id"], second.Body["request_id"])
	require.Equal(t, first.Body["subject"], second.Body["subject"])
	require.Equal(t, true, second.Body["duplicate"])
	require.EqualValues(t, 1, e.lastSeq(schemas.StreamRotate), "the retry queued a second request")

	// Same key, another body: refused. Another path or key: a new request.
	r = e.call("POST", rot, adminToken, `{"reason":"other"}`, key)
	require.Equal(t, http.StatusUnprocessableEntity, r.Code, "%s", r.Raw)
	require.Equal(t, "Idempotency-Key", r.Body["field"])
	r = e.call("POST", "/v1/tenants/acme/secrets/billing-db/rotate", adminToken, `{"reason":"leak"}`, key)
	require.Equal(t, http.StatusAccepted, r.Code)
	require.NotEqual(t, first.Body["request_id"], r.Body["request_id"])
	r = e.call("POST", rot, adminToken, `{"reason":"leak"}`, map[string]string{"Idempotency-Key": "ticket-4712"})
	require.Equal(t, http.StatusAccepted, r.Code)
	require.NotEqual(t, first.Body["request_id"], r.Body["request_id"])
	require.EqualValues(t, 3, e.lastSeq(schemas.StreamRotate))

	r = e.call("POST", rot, adminToken, "", map[string]string{"Idempotency-Key": strings.Repeat("k", 201)})
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, r.Code)
	require.Equal(t, "Idempotency-Key", r.Body["field"])

	// Concurrent retries: one request queued, every answer carries its id.
	replies := make([]reply, 8)
	errs := make([]error, len(replies))
	var wg sync.WaitGroup
	for i := range replies {
		wg.Go(func() {
			for range 500 {
				replies[i], errs[i] = e.Do(e.url, "POST", "/v1/tenants/globex/revoke", adminToken, `{"reason":"storm"}`, map[string]string{"Idempotency-Key": "storm"})
				if errs[i] != nil || replies[i].Code != http.StatusConflict || replies[i].Header.Get("Retry-After") != "1" {
					return
				}
				time.Sleep(10 * time.Millisecond) // the first one is still running: ask again
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	for _, r := range replies {
		require.Equal(t, http.StatusAccepted, r.Code, "%s", r.Raw)
		require.Equal(t, replies[0].Body["request_id"], r.Body["request_id"])
	}
	require.EqualValues(t, 1, e.lastSeq(schemas.StreamRevoke))
}
