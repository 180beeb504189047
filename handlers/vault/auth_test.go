package vault_test

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/backendtest"
	"github.com/rekey-dev/rekey/handlers/vault"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
)

var approleOnce sync.Once

// rekeyPolicy installs cfg.RekeyPolicy() as policy name.
func rekeyPolicy(t *testing.T, name string, cfg vault.Config) {
	t.Helper()
	v := vaulttest.NeedVault(t)
	require.NoError(t, v.Client.Sys().PutPolicyWithContext(t.Context(), name, cfg.RekeyPolicy()))
}

// TestAuthToken: method token with a short-lived renewable token; Run
// renews it, so the backend keeps working after several TTLs.
func TestAuthToken(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	ref := kvRef("acme", testutil.Uniq("tokenauth"))
	cfg := baseConfig(t, "")
	cfg.Secrets = []handlers.SecretRef{ref}
	cfg.Tenants = []string{"acme"}
	rekeyPolicy(t, "rekey-token-test", cfg)
	renewable := true
	sec, err := v.Client.Auth().Token().CreateWithContext(t.Context(), &api.TokenCreateRequest{
		Policies: []string{"rekey-token-test"}, TTL: "2s", Renewable: &renewable, NoParent: true,
	})
	require.NoError(t, err)
	token := sec.Auth.ClientToken
	setenv(t, "REKEY_TEST_TOKEN", token)
	cfg.Auth = vault.AuthConfig{Method: vault.AuthToken, TokenEnv: "REKEY_TEST_TOKEN"}

	logs := &backendtest.LogBuffer{}
	b := newBackend(t, cfg, logs.Logger())
	deadline := time.Now().Add(6 * time.Second) // three TTLs
	for time.Now().Before(deadline) {
		rotate(t, t.Context(), b, ref)
		time.Sleep(500 * time.Millisecond)
	}
	require.Contains(t, logs.String(), "Vault token renewed")
	require.NotContains(t, logs.String(), token, "the token was logged")
}

// TestAuthTokenRefused: a missing or invalid token fails New for good.
func TestAuthTokenRefused(t *testing.T) {
	cfg := baseConfig(t, "")
	t.Setenv("REKEY_TEST_EMPTY", "")
	cfg.Auth.TokenEnv = "REKEY_TEST_EMPTY"
	_, err := vault.New(t.Context(), cfg, nil)
	require.ErrorIs(t, err, handlers.ErrPermanent)
	require.ErrorContains(t, err, "REKEY_TEST_EMPTY")

	t.Setenv("REKEY_TEST_BAD", "hvs.not-a-token")
	cfg.Auth.TokenEnv = "REKEY_TEST_BAD"
	_, err = vault.New(t.Context(), cfg, nil)
	require.ErrorIs(t, err, handlers.ErrPermanent)
	require.NotContains(t, err.Error(), "hvs.not-a-token")
}

// approle enables AppRole, installs RekeyPolicy for ref as a policy, makes
// a role with those token TTLs, and returns a config logging in with it.
func approle(t *testing.T, ref handlers.SecretRef, ttl, maxTTL string) (cfg vault.Config, secretID, role string) {
	t.Helper()
	v := vaulttest.NeedVault(t)
	ctx := t.Context()
	approleOnce.Do(func() {
		require.NoError(t, v.Client.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &api.EnableAuthOptions{Type: "approle"}))
	})
	cfg = baseConfig(t, "")
	cfg.Secrets = []handlers.SecretRef{ref}
	cfg.Tenants = []string{"acme", "globex"}
	role = testutil.Uniq("rekey")
	rekeyPolicy(t, role, cfg)
	_, err := v.Client.Logical().WriteWithContext(ctx, "auth/approle/role/"+role, map[string]any{
		"token_policies": role, "token_ttl": ttl, "token_max_ttl": maxTTL,
	})
	require.NoError(t, err)
	sec, err := v.Client.Logical().ReadWithContext(ctx, "auth/approle/role/"+role+"/role-id")
	require.NoError(t, err)
	roleID := sec.Data["role_id"].(string)
	sec, err = v.Client.Logical().WriteWithContext(ctx, "auth/approle/role/"+role+"/secret-id", nil)
	require.NoError(t, err)
	secretID = sec.Data["secret_id"].(string)
	env := "REKEY_TEST_SECRET_ID_" + strings.ReplaceAll(strings.ToUpper(role), "-", "_")
	setenv(t, env, secretID)
	cfg.Auth = vault.AuthConfig{Method: vault.AuthAppRole, RoleID: roleID, SecretIDEnv: env}
	return cfg, secretID, role
}

// TestReloginAfterRevokedToken: the backend's token is revoked behind its
// back (long TTL, so the watcher would not notice for an hour); the next
// request is refused, the backend logs in again and the request succeeds.
func TestReloginAfterRevokedToken(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	ctx := t.Context()
	ref := kvRef("acme", testutil.Uniq("revoked"))
	cfg, _, role := approle(t, ref, "1h", "2h")
	logs := &backendtest.LogBuffer{}
	b := newBackend(t, cfg, logs.Logger())
	rotate(t, ctx, b, ref)

	// Revoke the tokens of the role: the one the backend holds.
	sec, err := v.Client.Logical().ListWithContext(ctx, "auth/token/accessors")
	require.NoError(t, err)
	revoked := 0
	for _, a := range sec.Data["keys"].([]any) {
		info, err := v.Client.Auth().Token().LookupAccessorWithContext(ctx, a.(string))
		require.NoError(t, err)
		if meta, _ := info.Data["meta"].(map[string]any); meta["role_name"] == role {
			require.NoError(t, v.Client.Auth().Token().RevokeAccessorWithContext(ctx, a.(string)))
			revoked++
		}
	}
	require.Equal(t, 1, revoked, "tokens of the role")

	rotate(t, ctx, b, ref)
	require.Contains(t, logs.String(), "no longer valid; logged in again")
	require.Equal(t, 2, strings.Count(logs.String(), "logged in to Vault"))
}

// TestAuthAppRole: method approle with tokens that live 2s and may be
// renewed up to 4s; Run renews them, logs in again when the max TTL is
// reached, and rotations and revocations keep working under the policy
// that RekeyPolicy prints.
func TestAuthAppRole(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	ref := kvRef("acme", testutil.Uniq("approle"))
	cfg, secretID, _ := approle(t, ref, "2s", "4s")

	logs := &backendtest.LogBuffer{}
	b := newBackend(t, cfg, logs.Logger())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("backend logs:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(13 * time.Second) // past three max TTLs
	for time.Now().Before(deadline) {
		rotate(t, ctx, b, ref)
		_, err := b.RevokeTenant(ctx, "globex")
		require.NoError(t, err, "RevokeTenant under RekeyPolicy")
		time.Sleep(300 * time.Millisecond)
	}
	text := logs.String()
	t.Logf("logins: %d (watcher gave up: %d, refused request: %d), renewals: %d",
		strings.Count(text, "logged in to Vault"), strings.Count(text, "can no longer be renewed"),
		strings.Count(text, "no longer valid; logged in again"), strings.Count(text, "Vault token renewed"))
	require.GreaterOrEqual(t, strings.Count(text, "logged in to Vault"), 3, "no new login after the max TTL:\n%s", text)
	// Which path logs in again (the watcher noticing the max TTL, or a
	// request refused with a dead token) depends on timing on a loaded
	// machine; together they must have happened at least twice.
	require.GreaterOrEqual(t, strings.Count(text, "can no longer be renewed; logging in again")+
		strings.Count(text, "no longer valid; logged in again"), 2, "re-logins:\n%s", text)
	require.Contains(t, text, "Vault token renewed")
	require.NotContains(t, text, secretID, "the secret id was logged")

	// A wrong secret id fails New for good.
	setenv(t, cfg.Auth.SecretIDEnv, "wrong-"+secretID[6:])
	_, err := vault.New(ctx, cfg, nil)
	require.ErrorIs(t, err, handlers.ErrPermanent)
	require.NotContains(t, err.Error(), secretID[6:])
}

// TestStartWithoutVault: New does not fail when Vault cannot be reached
// (only when credentials are refused); Run logs in once Vault answers.
func TestStartWithoutVault(t *testing.T) {
	t.Parallel()
	v := vaulttest.NeedVault(t)
	p := testutil.StartProxy(t, strings.TrimPrefix(v.Addr, "http://"))
	p.Cut()
	cfg := baseConfig(t, "http://"+p.Addr())
	cfg.Timeout = 2 * time.Second
	logs := &backendtest.LogBuffer{}
	b := newBackend(t, cfg, logs.Logger())
	ref := kvRef("acme", testutil.Uniq("late"))
	_, err := b.Create(t.Context(), ref, "tok-late")
	require.Error(t, err)
	require.NotErrorIs(t, err, handlers.ErrPermanent, "an unreachable Vault is temporary")
	p.Restore()
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "logged in to Vault") }, 20*time.Second, 50*time.Millisecond)
	rotate(t, t.Context(), b, ref)
}

// setenv is t.Setenv for parallel tests: each test uses names of its own.
func setenv(t *testing.T, name, value string) {
	t.Helper()
	require.NoError(t, os.Setenv(name, value))
	t.Cleanup(func() { _ = os.Unsetenv(name) })
}
