package orchestrator_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/deployments/examples"
	"github.com/rekey-dev/rekey/orchestrator"
)

func TestExampleConfigIsValid(t *testing.T) {
	cfg, err := orchestrator.Parse(examples.RekeyYAML)
	require.NoError(t, err)
	require.Equal(t, []string{"acme", "globex"}, cfg.TenantNames())
	require.Equal(t, []string{"billing-db", "openai-key"}, cfg.TenantSecrets("acme"))
	sc, ok := cfg.Secret("acme", "openai-key")
	require.True(t, ok)
	require.Equal(t, "local", sc.Backend)
	require.Equal(t, "api-key", sc.Generator.Style)
}

// TestMalformedConfigNamesTheField: every problem names its field.
func TestMalformedConfigNamesTheField(t *testing.T) {
	base := "tenants:\n  acme:\n    secrets:\n      k: {backend: local}\n"
	for _, tc := range []struct {
		name, yaml, field string
	}{
		{"unknown backend", "tenants:\n  acme:\n    secrets:\n      k: {backend: valt}\n", "tenants.acme.secrets.k.backend"},
		{"bad tenant id", "tenants:\n  Acme:\n    secrets:\n      k: {backend: local}\n", "tenants.Acme"},
		{"wildcard secret id", "tenants:\n  acme:\n    secrets:\n      'k.*': {backend: local}\n", "tenants.acme.secrets.k.*"},
		{"no secrets", "tenants:\n  acme: {}\n", "tenants.acme.secrets"},
		{"no tenants", "log: {level: info}\n", "tenants"},
		{"bad log level", base + "log: {level: loud}\n", "log.level"},
		{"bad style", "tenants:\n  acme:\n    secrets:\n      k: {backend: local, generator: {style: uuid}}\n", "tenants.acme.secrets.k.generator.style"},
		{"short length", "tenants:\n  acme:\n    secrets:\n      k: {backend: local, generator: {length: 4}}\n", "tenants.acme.secrets.k.generator.length"},
		{"bad timezone", "tenants:\n  acme:\n    secrets:\n      k: {backend: local, policy: {timezone: Mars/Base}}\n", "tenants.acme.secrets.k.policy.timezone"},
		{"negative max uses", "tenants:\n  acme:\n    secrets:\n      k: {backend: local, policy: {max_uses: -1}}\n", "tenants.acme.secrets.k.policy.max_uses"},
		{"zero attempts", base + "rotation: {max_attempts: 0}\n", "rotation.max_attempts"},
		{"backoff order", base + "rotation: {backoff_initial: 1m, backoff_max: 1s}\n", "rotation.backoff_max"},
		{"nats url", base + "nats: {url: 'localhost:4222'}\n", "nats.url"},
		{"replicas", base + "nats: {replicas: 7}\n", "nats.replicas"},
		{"min interval", base + "rotation: {min_interval: -1s}\n", "rotation.min_interval"},
		{"agents per tenant", base + "fanout: {max_agents_per_tenant: 0}\n", "fanout.max_agents_per_tenant"},
		{"presence interval", base + "fanout: {presence_interval_min: 10s, presence_interval_max: 1s}\n", "fanout.presence_interval_max"},
		{"early acks", base + "fanout: {max_early_acks_per_tenant: -1}\n", "fanout.max_early_acks_per_tenant"},
		{"listed agents", base + "fanout: {max_listed_agents: 100000}\n", "fanout.max_listed_agents"},
		{"ack delay per agent", base + "fanout: {ack_delay_per_agent: 50ms}\n", "fanout.ack_delay_per_agent"},
		{"negative ack delay per agent", base + "fanout: {ack_delay_per_agent: -1us}\n", "fanout.ack_delay_per_agent"},
		{"unknown field", base + "rotaton: {max_attempts: 3}\n", `unknown field "rotaton"`},
		{"wrong type", base + "rotation: {max_attempts: many}\n", "max_attempts"},
		{"bad duration", base + "rotation: {lock_ttl: soon}\n", "lock_ttl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := orchestrator.Parse([]byte(tc.yaml))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.field)
		})
	}
}

// TestDecodeErrorNamesTheFieldNotItsText: another field holding the same
// text, earlier in the document, is not the one named.
func TestDecodeErrorNamesTheFieldNotItsText(t *testing.T) {
	base := "tenants:\n  acme:\n    secrets:\n      k: {backend: local}\n"
	for _, tc := range []struct {
		name, yaml, field string
	}{
		{"bad duration", "data_dir: soon\n" + base + "rotation: {lock_ttl: soon}\n", "rotation.lock_ttl"},
		{"bad duration quoted", "data_dir: 'soon'\n" + base + "rotation: {backoff_initial: 1s, step_timeout: 'soon'}\n", "rotation.step_timeout"},
		{"bad duration in a map", "tenants:\n  soon:\n    secrets:\n      soon: {backend: local, policy: {schedule: soon, jitter: soon}}\n", "tenants.soon.secrets.soon.policy.jitter"},
		{"second of two bad durations", base + "rotation: {lock_ttl: later, step_timeout: soon}\nlog: {level: soon}\n", "rotation."},
		{"wrong type", "data_dir: many\n" + base + "rotation: {max_attempts: many}\n", "rotation.max_attempts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := orchestrator.Parse([]byte(tc.yaml))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.field)
			require.NotContains(t, err.Error(), "data_dir")
			require.NotContains(t, err.Error(), "log.level")
		})
	}
}

type section struct {
	Name    string        `yaml:"name"`
	Timeout time.Duration `yaml:"timeout"`
	Sources map[string]struct {
		Label  string          `yaml:"label"`
		Window []time.Duration `yaml:"window"`
	} `yaml:"sources"`
}

func (section) Validate() error { return nil }

func TestDecodeSectionNamesTheFieldNotItsText(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, field string
	}{
		{"top", "name: soon\ntimeout: soon\n", "triggers.x.timeout: "},
		{"nested", "name: soon\nsources:\n  a: {label: soon, window: [1s, soon]}\n", "triggers.x.sources.a.window[1]: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := orchestrator.DecodeSection("triggers.x", []byte(tc.yaml), &section{})
			var fe *orchestrator.FieldError
			require.ErrorAs(t, err, &fe)
			require.ErrorContains(t, err, tc.field)
			require.ErrorContains(t, err, `"soon" is not a duration`)
		})
	}
}

func TestValidateReturnsEveryFieldError(t *testing.T) {
	cfg := orchestrator.Defaults()
	cfg.Log.Level = "loud"
	cfg.Rotation.MaxAttempts = 0
	err := cfg.Validate()
	var fe *orchestrator.FieldError
	require.True(t, errors.As(err, &fe))
	for _, f := range []string{"log.level", "rotation.max_attempts", "tenants"} {
		require.Contains(t, err.Error(), f)
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rekey.yaml")
	require.NoError(t, os.WriteFile(path, []byte("tenants: {}\n"), 0o600))
	_, err := orchestrator.Load(path)
	require.ErrorContains(t, err, path)
	_, err = orchestrator.Load(filepath.Join(t.TempDir(), "missing.yaml"))
	require.ErrorContains(t, err, "read config")
}

func TestAdminToken(t *testing.T) {
	dir := t.TempDir()
	tok, err := orchestrator.AdminToken("", dir)
	require.NoError(t, err)
	require.Len(t, tok, len("rk_admin_")+64)
	fi, err := os.Stat(filepath.Join(dir, orchestrator.AdminTokenFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	again, err := orchestrator.AdminToken("", dir)
	require.NoError(t, err)
	require.Equal(t, tok, again, "the generated token is reused")
	env, err := orchestrator.AdminToken("from-the-environment-123", dir)
	require.NoError(t, err)
	require.Equal(t, "from-the-environment-123", env)
	_, err = orchestrator.AdminToken("short", dir)
	require.Error(t, err)
	require.NotEqual(t, orchestrator.TokenID(tok), tok)
	require.NotContains(t, tok, orchestrator.TokenID(tok)[4:], "token id must not be a substring of the token")
}
