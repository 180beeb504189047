package adversarial_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

// TestTenantTokenAttacks: holding acme's tenant token, an attacker tries
// globex's routes, the admin-only routes, and path and encoding tricks to
// reach globex. Every call is refused (401/403/404/400, or a redirect that
// the server does not follow itself), and no request is queued, no state
// of either tenant changes; acme's own rotation still works.
func TestTenantTokenAttacks(t *testing.T) {
	r := newRig(t)
	r.rotate("globex", "openai-key")
	before := r.quiet()
	tok := tenantTokens["acme"]
	cases := []struct{ method, path, body string }{
		{"POST", "/v1/tenants/globex/secrets/openai-key/rotate", `{}`},
		{"GET", "/v1/tenants/globex/secrets/openai-key", ""},
		{"GET", "/v1/tenants/globex/secrets", ""},
		{"GET", "/v1/tenants/globex", ""},
		{"GET", "/v1/tenants/acme", ""},
		{"POST", "/v1/tenants/globex/revoke", `{"reason":"x"}`},
		{"POST", "/v1/tenants/acme/revoke", `{"reason":"x"}`},
		{"POST", "/v1/tenants/acme/restore", `{"reason":"x"}`},
		{"POST", "/v1/tenants/acme/../globex/secrets/openai-key/rotate", `{}`},
		{"POST", "/v1/tenants/acme%2F..%2Fglobex/secrets/openai-key/rotate", `{}`},
		{"POST", "/v1/tenants/GLOBEX/secrets/openai-key/rotate", `{}`},
		{"POST", "/v1/tenants/globex%00/secrets/openai-key/rotate", `{}`},
		{"POST", "/v1/tenants/%67lobex/secrets/openai-key/rotate", `{}`},
		{"POST", "/v1/tenants/*/secrets/openai-key/rotate", `{}`},
		{"POST", "/v1/tenants/globex.openai-key/secrets/x/rotate", `{}`},
		{"POST", "/v1/tenants/acme/secrets/openai-key.>/rotate", `{}`},
		{"POST", "/v1/tenants/acme/secrets/../../globex/secrets/openai-key/rotate", `{}`},
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, c := range cases {
		req, err := http.NewRequest(c.method, r.http+c.path, strings.NewReader(c.body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Contains(t, []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound,
			http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect, http.StatusMethodNotAllowed},
			resp.StatusCode, "%s %s answered %d", c.method, c.path, resp.StatusCode)
	}
	// Another tenant's token, a truncated or padded token: refused.
	for _, bad := range []string{tok[:len(tok)-1], tok + "x", strings.ToUpper(tok), "", "Bearer " + tok} {
		status, _ := r.call("POST", "/v1/tenants/acme/secrets/openai-key/rotate", bad, `{}`)
		require.Equal(t, http.StatusUnauthorized, status, "token %q", bad)
	}
	require.Empty(t, r.changed(before, r.snapshot(), map[string]func(jetstream.RawStreamMsg) bool{
		schemas.StreamAudit: func(m jetstream.RawStreamMsg) bool { return auditBy("acme")(m) || auditBy("globex")(m) },
	}), "refused calls changed stored state")
	require.False(t, r.revoked("globex"))
	require.False(t, r.revoked("acme"))

	// The token's own tenant works.
	status, body := r.call("POST", "/v1/tenants/acme/secrets/openai-key/rotate", tok, `{"reason":"own"}`)
	require.Equal(t, http.StatusAccepted, status, body)
}
