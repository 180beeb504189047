package awssm_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/awssm"
	"github.com/rekey-dev/rekey/handlers/awssm/awssmtest"
	"github.com/rekey-dev/rekey/handlers/backendtest"
	"github.com/rekey-dev/rekey/orchestrator"
)

// parse parses a rekey.yaml made of the awssm section and tenants.
func parse(t *testing.T, section, tenants string) (awssm.Config, error) {
	t.Helper()
	rekey := backendtest.ParseRekey(t, awssm.Name, section, tenants)
	return awssm.ParseConfig(rekey.Backends.AWSSM, rekey)
}

const twoTenants = `
acme:
  secrets:
    openai-key: {backend: awssm}
    stripe-key: {backend: awssm, options: {mode: delegated}}
    other: {backend: local}
globex:
  secrets:
    openai-key: {backend: awssm, options: {name: "/tenants/{tenant}/llm/openai", set_url: "https://issuer.internal/rekey/set"}}
`

func TestParseConfig(t *testing.T) {
	cfg, err := parse(t, `
region: eu-west-1
endpoint: https://vpce-123.secretsmanager.eu-west-1.vpce.amazonaws.com
name_template: "/tenants/{tenant}/rekey/{secret}"
tenant_prefix: "/tenants/{tenant}/"
tenant_tag: Tenant
write_tps: 10
rotate_tps: 2.5
timeout: 3s
delegated_timeout: 30m
poll_interval: 10s
max_retries: 4
`, twoTenants)
	require.NoError(t, err)
	require.Equal(t, awssm.Config{
		Region: "eu-west-1", Endpoint: "https://vpce-123.secretsmanager.eu-west-1.vpce.amazonaws.com",
		NameTemplate: "/tenants/{tenant}/rekey/{secret}", TenantPrefix: "/tenants/{tenant}/", TenantTag: "Tenant",
		WriteTPS: 10, RotateTPS: 2.5, Timeout: 3 * time.Second, DelegatedTimeout: 30 * time.Minute,
		PollInterval: 10 * time.Second, MaxRetries: 4, Tenants: []string{"acme", "globex"}, Secrets: cfg.Secrets,
	}, cfg)
	require.Len(t, cfg.Secrets, 3, "only the awssm secrets")
	require.Equal(t, "awssm", cfg.Secrets[0].Backend)
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := parse(t, "region: us-east-1\n", twoTenants)
	require.NoError(t, err)
	require.Equal(t, awssm.Config{
		Region: "us-east-1", NameTemplate: "/tenants/{tenant}/{secret}", TenantPrefix: "/tenants/{tenant}/", TenantTag: "TenantId",
		WriteTPS: 50, RotateTPS: 50, Timeout: 10 * time.Second, DelegatedTimeout: 15 * time.Minute, PollInterval: 5 * time.Second,
		MaxRetries: 8, Tenants: cfg.Tenants, Secrets: cfg.Secrets,
	}, cfg)
}

// TestParseConfigErrors: every error names its field, and none quotes a
// hook URL (its query may hold a token).
func TestParseConfigErrors(t *testing.T) {
	const ok = "region: us-east-1\n"
	for _, tc := range []struct {
		name, section, tenants string
		fields                 []string
	}{
		{"no section", "", twoTenants, []string{"backends.awssm.region"}},
		{"bad region", "region: US East\n", "", []string{"backends.awssm.region"}},
		{"unknown key", ok + "regoin: x\n", "", []string{"regoin"}},
		{"bad duration", ok + "timeout: soon\n", "", []string{"backends.awssm.timeout"}},
		{"negative durations", ok + "delegated_timeout: -1s\npoll_interval: -2s\n", "", []string{"backends.awssm.delegated_timeout", "backends.awssm.poll_interval"}},
		{"tps", ok + "write_tps: -1\nrotate_tps: 20000\n", "", []string{"backends.awssm.write_tps", "backends.awssm.rotate_tps"}},
		{"max_retries", ok + "max_retries: 21\n", "", []string{"backends.awssm.max_retries"}},
		{"endpoint", ok + "endpoint: ftp://x\n", "", []string{"backends.awssm.endpoint"}},
		{"endpoint credentials", ok + "endpoint: https://user:hunter2@x\n", "", []string{"backends.awssm.endpoint"}},
		{"name_template without secret", ok + "name_template: \"/tenants/{tenant}/key\"\n", "", []string{"backends.awssm.name_template"}},
		{"name_template outside prefix", ok + "name_template: \"/apps/{tenant}/{secret}\"\n", "", []string{"backends.awssm.name_template"}},
		{"name_template placeholder", ok + "name_template: \"/tenants/{tenant}/{env}/{secret}\"\n", "", []string{"backends.awssm.name_template"}},
		{"tenant_prefix without tenant", ok + "tenant_prefix: /tenants/\nname_template: \"/tenants/{secret}\"\n", "", []string{"backends.awssm.tenant_prefix"}},
		{"tenant_tag", ok + "tenant_tag: \"aws:tenant\"\n", "", []string{"backends.awssm.tenant_tag"}},
		{"overlapping prefixes", ok + "tenant_prefix: \"/t/{tenant}\"\nname_template: \"/t/{tenant}/{secret}\"\n",
			"acme: {secrets: {k: {backend: awssm}}}\nacme-eu: {secrets: {k: {backend: awssm}}}\n", []string{"backends.awssm.tenant_prefix"}},
		{"unknown option", ok, "acme: {secrets: {k: {backend: awssm, options: {kind: kv}}}}\n", []string{"tenants.acme.secrets.k.options.kind"}},
		{"bad mode", ok, "acme: {secrets: {k: {backend: awssm, options: {mode: lambda}}}}\n", []string{"tenants.acme.secrets.k.options.mode"}},
		{"name outside prefix", ok, "acme: {secrets: {k: {backend: awssm, options: {name: \"/tenants/globex/k\"}}}}\n", []string{"tenants.acme.secrets.k.options.name"}},
		{"name is the prefix", ok, "acme: {secrets: {k: {backend: awssm, options: {name: \"/tenants/acme/\"}}}}\n", []string{"tenants.acme.secrets.k.options.name"}},
		{"name characters", ok, "acme: {secrets: {k: {backend: awssm, options: {name: \"/tenants/acme/a b\"}}}}\n", []string{"tenants.acme.secrets.k.options.name"}},
		{"same name twice", ok, "acme: {secrets: {k: {backend: awssm}, j: {backend: awssm, options: {name: \"/tenants/{tenant}/k\"}}}}\n", []string{"tenants.acme.secrets.k"}},
		{"http hook", ok, "acme: {secrets: {k: {backend: awssm, options: {set_url: \"http://issuer.example.com/set?token=hook-credential\"}}}}\n", []string{"tenants.acme.secrets.k.options.set_url"}},
		{"hook credentials", ok, "acme: {secrets: {k: {backend: awssm, options: {test_url: \"https://u:hook-credential@issuer/test\"}}}}\n", []string{"tenants.acme.secrets.k.options.test_url"}},
		{"hook in delegated mode", ok, "acme: {secrets: {k: {backend: awssm, options: {mode: delegated, test_url: \"https://issuer/test\"}}}}\n", []string{"tenants.acme.secrets.k.options.test_url"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tenants := tc.tenants
			if tenants == "" {
				tenants = "acme: {secrets: {k: {backend: awssm}}}\n"
			}
			_, err := parse(t, tc.section, tenants)
			require.Error(t, err)
			for _, f := range tc.fields {
				require.Contains(t, err.Error(), f)
			}
			require.NotContains(t, err.Error(), "hook-credential")
			require.NotContains(t, err.Error(), "hunter2")
			var fe *orchestrator.FieldError
			if tc.name != "unknown key" {
				require.True(t, errors.As(err, &fe), "a *orchestrator.FieldError: %v", err)
			}
		})
	}
}

func TestLoopbackHookAllowed(t *testing.T) {
	_, err := parse(t, "region: us-east-1\n", "acme: {secrets: {k: {backend: awssm, options: {set_url: \"http://127.0.0.1:9000/set\", test_url: \"http://localhost/test\"}}}}\n")
	require.NoError(t, err)
}

func TestLookup(t *testing.T) {
	cfg, err := parse(t, "region: us-east-1\n", twoTenants+`
initech:
  secrets:
    db-key-abcdef: {backend: awssm}
    db-key: {backend: awssm}
`)
	require.NoError(t, err)
	const arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:"
	for _, tc := range []struct {
		id, tenant, secret string
	}{
		{"/tenants/acme/openai-key", "acme", "openai-key"},
		{"/tenants/acme/stripe-key", "acme", "stripe-key"},
		{"/tenants/globex/llm/openai", "globex", "openai-key"},
		{arn + "/tenants/acme/stripe-key-Ab12Cd", "acme", "stripe-key"},
		{arn + "/tenants/globex/llm/openai-zzzzzz", "globex", "openai-key"},
		{"arn:aws-us-gov:secretsmanager:us-east-1:123456789012:secret:/tenants/acme/openai-key-000000", "acme", "openai-key"},
		// A name that itself ends in - and 6 characters.
		{"/tenants/initech/db-key-abcdef", "initech", "db-key-abcdef"},
		{arn + "/tenants/initech/db-key-abcdef-QwErTy", "initech", "db-key-abcdef"},
		{arn + "/tenants/initech/db-key-abcdef", "initech", "db-key"},
		// Not configured, or not an exact id.
		{"/tenants/globex/openai-key", "", ""},
		{"/tenants/acme/other", "", ""},
		{"/tenants/acme/openai", "", ""},
		{"tenants/acme/openai-key", "", ""},
		{arn + "/tenants/acme/stripe-key", "", ""},
		{arn + "/tenants/acme/stripe-key-Ab12C", "", ""},
		{arn + "/tenants/acme/stripe-key-Ab12Cd-", "", ""},
		{"arn:aws:secretsmanager:eu-west-1:123456789012:secret:/tenants/acme/stripe-key-Ab12Cd", "", ""},
		{"arn:aws:ssm:us-east-1:123456789012:secret:/tenants/acme/stripe-key-Ab12Cd", "", ""},
		{"arn:aws:secretsmanager:us-east-1:1234:secret:/tenants/acme/stripe-key-Ab12Cd", "", ""},
		{"arn:aws:secretsmanager:us-east-1:123456789012:parameter:/tenants/acme/stripe-key-Ab12Cd", "", ""},
		{"", "", ""},
		{"arn:", "", ""},
	} {
		tenant, secret, ok := cfg.Lookup(tc.id)
		require.Equal(t, tc.tenant != "", ok, "Lookup(%q)", tc.id)
		require.Equal(t, tc.tenant, tenant, "Lookup(%q)", tc.id)
		require.Equal(t, tc.secret, secret, "Lookup(%q)", tc.id)
	}
}

// TestLookupEmulatorARN: the ARNs Secrets Manager makes map back.
func TestLookupEmulatorARN(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	cfg, err := parse(t, "region: us-east-1\n", twoTenants)
	require.NoError(t, err)
	seed(t, s, "acme", "stripe-key")
	seedNamed(t, s, "globex", "openai-key", "/tenants/globex/llm/openai")
	for name, want := range map[string][2]string{
		"/tenants/acme/stripe-key":   {"acme", "stripe-key"},
		"/tenants/globex/llm/openai": {"globex", "openai-key"},
	} {
		arn := s.ARN(name)
		require.NotEmpty(t, arn)
		tenant, secret, ok := cfg.Lookup(arn)
		require.True(t, ok, "Lookup(%q)", arn)
		require.Equal(t, want, [2]string{tenant, secret})
	}
}
