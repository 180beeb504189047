package vault_test

import (
	"errors"
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// TestPolicyIsolation installs Config.Policy of two tenants in the dev
// server and shows that Vault itself lets a token of tenant A read A's
// secrets and denies it B's secrets, B's database credentials and A's own
// staged (not yet live) versions.
func TestPolicyIsolation(t *testing.T) {
	t.Parallel()
	v, _ := vaulttest.NeedDatabase(t)
	ctx := t.Context()
	a, bt := testutil.Uniq("pa"), testutil.Uniq("pb")
	dynamicRole(t, a+"-ro")
	dynamicRole(t, bt+"-ro")
	refs := []handlers.SecretRef{kvRef(a, "openai-key"), kvRef(a, "search-key"), kvRef(bt, "openai-key")}
	cfg := baseConfig(t, "")
	cfg.Tenants = []string{a, bt}
	cfg.Secrets = refs
	require.NoError(t, cfg.Validate())
	b := newBackend(t, cfg, nil)
	for _, ref := range refs {
		rotate(t, ctx, b, ref)
	}
	staged, err := b.Create(ctx, refs[0], schemas.NewULID())
	require.NoError(t, err)

	policyA := cfg.Policy(a)
	t.Logf("vault policy of tenant %s:\n%s", a, policyA)
	require.NoError(t, v.Client.Sys().PutPolicyWithContext(ctx, "agents-"+a, policyA))
	require.NoError(t, v.Client.Sys().PutPolicyWithContext(ctx, "agents-"+bt, cfg.Policy(bt)))
	agentA := tokenClient(t, v.Client, "agents-"+a)

	allowed := []string{
		"secret/data/tenants/" + a + "/openai-key",
		"secret/data/tenants/" + a + "/search-key",
		"secret/metadata/tenants/" + a + "/openai-key",
		"database/creds/" + a + "-ro",
	}
	denied := []string{
		"secret/data/tenants/" + bt + "/openai-key",
		"secret/metadata/tenants/" + bt + "/openai-key",
		"secret/data/tenants/" + a + "/openai-key/_staged/" + staged.ID,
		"database/creds/" + bt + "-ro",
		"database/static-creds/" + bt + "-app",
		"sys/policies/acl/agents-" + a,
	}
	for _, p := range allowed {
		sec, err := agentA.Logical().ReadWithContext(ctx, p)
		require.NoError(t, err, "tenant %s reading its own %s", a, p)
		require.NotNil(t, sec, p)
	}
	for _, p := range denied {
		_, err := agentA.Logical().ReadWithContext(ctx, p)
		requireDenied(t, err, p)
	}
	_, err = agentA.Logical().WriteWithContext(ctx, "secret/data/tenants/"+a+"/openai-key", map[string]any{"data": map[string]any{"value": "x"}})
	requireDenied(t, err, "write of its own secret")
	_, err = agentA.Logical().ListWithContext(ctx, "secret/metadata/tenants/")
	requireDenied(t, err, "list of every tenant")

	// The token of tenant B, symmetrically.
	agentB := tokenClient(t, v.Client, "agents-"+bt)
	_, err = agentB.Logical().ReadWithContext(ctx, "secret/data/tenants/"+bt+"/openai-key")
	require.NoError(t, err)
	_, err = agentB.Logical().ReadWithContext(ctx, "secret/data/tenants/"+a+"/openai-key")
	requireDenied(t, err, "B reading A")
	require.NoError(t, b.Rollback(ctx, refs[0], staged))
}

// tokenClient is a client with a new token carrying only policy (and
// Vault's default policy).
func tokenClient(t *testing.T, root *api.Client, policy string) *api.Client {
	t.Helper()
	sec, err := root.Auth().Token().CreateWithContext(t.Context(), &api.TokenCreateRequest{Policies: []string{policy}, TTL: "10m"})
	require.NoError(t, err)
	c, err := root.Clone()
	require.NoError(t, err)
	c.SetToken(sec.Auth.ClientToken)
	return c
}

func requireDenied(t *testing.T, err error, what string) {
	t.Helper()
	var re *api.ResponseError
	require.True(t, errors.As(err, &re), "%s: want Vault's 403, got %v", what, err)
	require.Equal(t, 403, re.StatusCode, "%s: %v", what, err)
}

// TestRekeyPolicySufficesForStaticRoles rotates a static role and revokes
// a tenant with a token that has only RekeyPolicy.
func TestRekeyPolicySufficesForStaticRoles(t *testing.T) {
	t.Parallel()
	v, _ := vaulttest.NeedDatabase(t)
	ctx := t.Context()
	ref := staticRole(t, "acme")
	tenant := testutil.Uniq("tr")
	dynamicRole(t, tenant+"-ro")
	issue(t, tenant+"-ro", 3)
	cfg := baseConfig(t, "")
	cfg.Secrets = []handlers.SecretRef{ref}
	cfg.Tenants = []string{"acme", tenant}
	name := testutil.Uniq("rekey-static")
	require.NoError(t, v.Client.Sys().PutPolicyWithContext(ctx, name, cfg.RekeyPolicy()))
	c := tokenClient(t, v.Client, name)
	setenv(t, "REKEY_TEST_POLICY_TOKEN", c.Token())
	cfg.Auth.TokenEnv = "REKEY_TEST_POLICY_TOKEN"
	b := newBackend(t, cfg, nil)
	ver := rotate(t, ctx, b, ref)
	cur, err := b.Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, ver.ID, cur.ID)
	n, err := b.RevokeTenant(ctx, tenant)
	require.NoError(t, err)
	require.Equal(t, 3, n)
}
