package vault_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/backendtest"
	"github.com/rekey-dev/rekey/handlers/vault"
	"github.com/rekey-dev/rekey/orchestrator"
)

// parse parses a rekey.yaml made of the vault section and tenants.
func parse(t *testing.T, section, tenants string) (vault.Config, error) {
	t.Helper()
	rekey := backendtest.ParseRekey(t, vault.Name, section, tenants)
	return vault.ParseConfig(rekey.Backends.Vault, rekey)
}

const twoTenants = `
acme:
  secrets:
    openai-key: {backend: vault}
    billing-db: {backend: vault, options: {kind: static-role}}
    other: {backend: local}
globex:
  secrets:
    openai-key: {backend: vault, options: {path: "tenants/{tenant}/llm/openai", field: api_key}}
`

func TestParseConfig(t *testing.T) {
	cfg, err := parse(t, `
address: https://vault.internal:8200
auth: {method: approle, role_id: 1234-abcd, secret_id_env: REKEY_VAULT_SECRET_ID}
kv_mount: kv
path_template: "teams/{tenant}/{secret}"
database_mount: db
dynamic_role_template: "{tenant}."
namespace_template: "tenants/{tenant}"
timeout: 5s
revoke_timeout: 2m
`, twoTenants)
	require.NoError(t, err)
	require.Equal(t, "https://vault.internal:8200", cfg.Address)
	require.Equal(t, vault.AuthConfig{Method: "approle", TokenEnv: "VAULT_TOKEN", RoleID: "1234-abcd", SecretIDEnv: "REKEY_VAULT_SECRET_ID", Mount: "approle"}, cfg.Auth)
	require.Equal(t, "kv", cfg.KVMount)
	require.Equal(t, "teams/{tenant}/{secret}", cfg.PathTemplate)
	require.Equal(t, 5*time.Second, cfg.Timeout)
	require.Equal(t, 2*time.Minute, cfg.RevokeTimeout)
	require.Equal(t, []string{"acme", "globex"}, cfg.Tenants)
	require.Len(t, cfg.Secrets, 3, "only the vault secrets")
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := parse(t, "", twoTenants) // no backends.vault section
	require.NoError(t, err)
	require.Equal(t, vault.Config{
		Address: "http://127.0.0.1:8200",
		Auth:    vault.AuthConfig{Method: "token", TokenEnv: "VAULT_TOKEN", SecretIDEnv: "VAULT_SECRET_ID", Mount: "approle"},
		KVMount: "secret", PathTemplate: "tenants/{tenant}/{secret}", DatabaseMount: "database",
		DynamicRoleTemplate: "{tenant}-", Timeout: 10 * time.Second, RevokeTimeout: 5 * time.Minute,
		Tenants: cfg.Tenants, Secrets: cfg.Secrets,
	}, cfg)
}

// TestParseConfigErrors: every mistake is refused at start with the
// field that is wrong.
func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, section, tenants string
		field, reason          string
	}{
		{"unknown field", "adress: http://x:8200\n", twoTenants, "", "adress"},
		{"bad address", "address: vault:8200\n", twoTenants, "backends.vault.address", "http"},
		{"bad method", "auth: {method: ldap}\n", twoTenants, "backends.vault.auth.method", `"ldap"`},
		{"approle without role id", "auth: {method: approle}\n", twoTenants, "backends.vault.auth.role_id", "must be set"},
		{"bad duration", "timeout: soon\n", twoTenants, "backends.vault.timeout", "not a duration"},
		{"unknown placeholder", "path_template: \"{tenant}/{secrett}\"\n", twoTenants, "backends.vault.path_template", "placeholder"},
		{"no secret placeholder", "path_template: \"{tenant}/key\"\n", twoTenants, "backends.vault.path_template", "{secret}"},
		{"no tenant anywhere", "path_template: \"shared/{secret}\"\n", twoTenants, "backends.vault.path_template", "{tenant}"},
		{"reserved segment", "path_template: \"{tenant}/_staged/{secret}\"\n", twoTenants, "backends.vault.path_template", "_staged"},
		{"role template with slash", "dynamic_role_template: \"{tenant}/\"\n", twoTenants, "backends.vault.dynamic_role_template", "/"},
		{
			"two tenants resolve to one path", "path_template: \"{tenant}{secret}\"\n",
			"ab: {secrets: {c: {backend: vault}}}\na: {secrets: {bc: {backend: vault}}}\n",
			"tenants.ab.secrets.c", "as does tenants.a.secrets.bc",
		},
		{
			"two secrets of a tenant on one path", "",
			"acme: {secrets: {a: {backend: vault, options: {path: tenants/acme/x}}, b: {backend: vault, options: {path: tenants/acme/x}}}}\n",
			"tenants.acme.secrets.b", "as does tenants.acme.secrets.a",
		},
		{
			"path outside the tenant's prefix", "",
			"acme: {secrets: {a: {backend: vault, options: {path: tenants/globex/a}}}}\nglobex: {secrets: {a: {backend: vault}}}\n",
			"tenants.acme.secrets.a.options.path", "outside tenant acme's prefix",
		},
		{
			"overlapping role prefixes", "",
			"acme: {secrets: {a: {backend: vault}}}\nacme-corp: {secrets: {a: {backend: local}}}\n",
			"backends.vault.dynamic_role_template", `"acme-" and "acme-corp-"`,
		},
		{"unknown kind", "", "acme: {secrets: {a: {backend: vault, options: {kind: dynamic}}}}\n", "tenants.acme.secrets.a.options.kind", "kv or static-role"},
		{"unknown option", "", "acme: {secrets: {a: {backend: vault, options: {role: x}}}}\n", "tenants.acme.secrets.a.options.role", "unknown option"},
		{"reserved field", "", "acme: {secrets: {a: {backend: vault, options: {field: rekey_version}}}}\n", "tenants.acme.secrets.a.options.field", "rekey_"},
		{
			"static role outside the tenant's prefix", "",
			"acme: {secrets: {db: {backend: vault, options: {kind: static-role, role: globex-db}}}}\n",
			"tenants.acme.secrets.db.options.role", `prefix "acme-"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.section, tc.tenants)
			require.Error(t, err)
			require.ErrorContains(t, err, tc.reason)
			if tc.field != "" {
				var fe *orchestrator.FieldError
				require.True(t, errors.As(err, &fe), "not a field error: %v", err)
				require.True(t, strings.Contains(err.Error(), tc.field), "error does not name %s: %v", tc.field, err)
			}
		})
	}
}

// TestParseConfigAccepts: layouts that keep tenants apart.
func TestParseConfigAccepts(t *testing.T) {
	for _, tc := range []struct{ name, section, tenants string }{
		{"mount per tenant", "kv_mount: \"kv-{tenant}\"\npath_template: \"{secret}\"\n", twoTenants},
		{"namespace per tenant", "namespace_template: \"tenants/{tenant}\"\npath_template: \"{secret}\"\n", twoTenants},
		{"separator tenants cannot hold", "dynamic_role_template: \"{tenant}.\"\n", "acme: {secrets: {a: {backend: vault}}}\nacme-corp: {secrets: {a: {backend: vault}}}\n"},
		{"database mount per tenant", "database_mount: \"db-{tenant}\"\ndynamic_role_template: \"app-\"\n", twoTenants},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.section, tc.tenants)
			require.NoError(t, err)
		})
	}
}

func TestPolicyText(t *testing.T) {
	cfg, err := parse(t, "", twoTenants)
	require.NoError(t, err)
	p := cfg.Policy("acme")
	for _, want := range []string{
		`path "secret/data/tenants/acme/openai-key" {` + "\n" + `  capabilities = ["read"]`,
		`path "secret/metadata/tenants/acme/openai-key"`,
		`path "database/static-creds/acme-billing-db"`,
		`path "database/creds/acme-*"`,
		`path "sys/leases/renew"`,
	} {
		require.Contains(t, p, want)
	}
	require.NotContains(t, p, "globex")
	require.NotContains(t, p, "_staged")
	require.NotContains(t, p, "other", "a local secret")
	g := cfg.Policy("globex")
	require.Contains(t, g, `path "secret/data/tenants/globex/llm/openai"`)
	require.NotContains(t, g, "acme")

	r := cfg.RekeyPolicy()
	for _, want := range []string{
		`path "secret/data/tenants/acme/openai-key/_staged/*"`,
		`path "database/rotate-role/acme-billing-db"`,
		`path "sys/leases/revoke-prefix/database/creds/globex-*"`,
	} {
		require.Contains(t, r, want)
	}

	ns, err := parse(t, "namespace_template: \"tenants/{tenant}\"\n", twoTenants)
	require.NoError(t, err)
	require.Contains(t, ns.Policy("acme"), `Install it in namespace "tenants/acme"`)
}

// TestNewRefusesBadConfig: New validates too (for configs built in code).
func TestNewRefusesBadConfig(t *testing.T) {
	cfg := vault.Config{
		Tenants: []string{"acme"},
		Secrets: []handlers.SecretRef{{Tenant: "acme", Secret: "a", Options: map[string]string{"kind": "nope"}}},
	}
	_, err := vault.New(t.Context(), cfg, nil)
	require.ErrorContains(t, err, "tenants.acme.secrets.a.options.kind")
}
