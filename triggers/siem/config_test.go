package siem_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/siem"
)

func rekeyConfig(t *testing.T) *orchestrator.Config {
	t.Helper()
	c, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)
	return &c
}

func TestParseConfig(t *testing.T) {
	t.Setenv(envSecretVar, hmacSecret)
	cfg, err := siem.ParseConfig([]byte(siemYAML), rekeyConfig(t))
	require.NoError(t, err)
	require.Equal(t, int64(siem.DefaultMaxBodyBytes), cfg.MaxBodyBytes)
	require.Equal(t, 10*time.Minute, cfg.DedupWindow)
	require.Equal(t, "alertmanager", cfg.Sources["am-bearer"].Format)
	require.Equal(t, 2*time.Second, cfg.Sources["short-window"].DedupWindow)

	// An empty section is valid (no sources).
	cfg, err = siem.ParseConfig(nil, rekeyConfig(t))
	require.NoError(t, err)
	require.Empty(t, cfg.Sources)
}

func TestConfigErrorsNameTheirField(t *testing.T) {
	const base = `
sources:
  prod-am:
    format: alertmanager
    tenants: [acme]
    auth:
      hmac: {secret: ` + hmacSecret + `, header: X-Sig}
    rules:
      - {tenant: acme, secrets: [openai-key]}
`
	for _, tc := range []struct {
		name, yaml, field, reason string
	}{
		{"unknown field", strings.Replace(base, "format:", "formt: x\n    format:", 1), "", "unknown field"},
		{"format", strings.Replace(base, "alertmanager", "nagios", 1), "triggers.siem.sources.prod-am.format", "must be one of"},
		{"source name", strings.Replace(base, "prod-am", "prod.am", 1), "triggers.siem.sources.prod.am", "must match"},
		{"no tenants", strings.Replace(base, "tenants: [acme]", "tenants: []", 1), "triggers.siem.sources.prod-am.tenants", "at least one tenant"},
		{"wildcard tenant", strings.Replace(base, "tenants: [acme]", "tenants: [acme, '*']", 1), "triggers.siem.sources.prod-am.tenants[1]", "must match"},
		{"tenant not in rekey", strings.Replace(base, "tenants: [acme]", "tenants: [acme, hooli]", 1), "triggers.siem.sources.prod-am.tenants[1]", `tenant "hooli" is not configured`},
		{"no header", strings.Replace(base, ", header: X-Sig", "", 1), "triggers.siem.sources.prod-am.auth.hmac.header", "must be set for format alertmanager"},
		{"bad header", strings.Replace(base, "X-Sig", "'X Sig'", 1), "triggers.siem.sources.prod-am.auth.hmac.header", "is not a header name"},
		{"short secret", strings.Replace(base, hmacSecret, "short", 1), "triggers.siem.sources.prod-am.auth.hmac.secret", "at least 16 bytes"},
		{"secret and env", strings.Replace(base, "header: X-Sig", "header: X-Sig, secret_env: X", 1), "triggers.siem.sources.prod-am.auth.hmac.secret", "not both"},
		{"two methods", strings.Replace(base, "auth:", "auth:\n      bearer: {token: "+bearerToken+"}", 1), "triggers.siem.sources.prod-am.auth", "exactly one of"},
		{"no method", strings.Replace(base, "      hmac: {secret: "+hmacSecret+", header: X-Sig}\n", "      {}\n", 1), "triggers.siem.sources.prod-am.auth", "exactly one of"},
		{"encoding", strings.Replace(base, "header: X-Sig", "header: X-Sig, encoding: base32", 1), "triggers.siem.sources.prod-am.auth.hmac.encoding", "hex or base64"},
		{"max skew", strings.Replace(base, "header: X-Sig", "header: X-Sig, max_skew: 2h", 1), "triggers.siem.sources.prod-am.auth.hmac.max_skew", "between 0 and 1h"},
		{"bad duration", strings.Replace(base, "format:", "dedup_window: soon\n    format:", 1), "triggers.siem.sources.prod-am.dedup_window", "is not a duration"},
		{"no rules", strings.Replace(base, "      - {tenant: acme, secrets: [openai-key]}\n", "", 1), "triggers.siem.sources.prod-am.rules", "at least one rule"},
		{"rule tenant not allowed", strings.Replace(base, "{tenant: acme,", "{tenant: globex,", 1), "triggers.siem.sources.prod-am.rules[0].tenant", "not in the source's tenants"},
		{"rule tenant and label", strings.Replace(base, "{tenant: acme,", "{tenant: acme, tenant_label: t,", 1), "triggers.siem.sources.prod-am.rules[0].tenant", "exactly one of"},
		{"rule secrets twice", strings.Replace(base, "secrets: [openai-key]", "secrets: [openai-key], all_secrets: true", 1), "triggers.siem.sources.prod-am.rules[0].secrets", "exactly one of"},
		{"rule wildcard secret", strings.Replace(base, "[openai-key]", "['>']", 1), "triggers.siem.sources.prod-am.rules[0].secrets[0]", "must match"},
		{"rule unknown secret", strings.Replace(base, "[openai-key]", "[nope]", 1), "triggers.siem.sources.prod-am.rules[0].secrets[0]", `secret "nope" of tenant "acme" is not configured`},
		{"revoke with secrets", strings.Replace(base, "{tenant: acme,", "{action: revoke, tenant: acme,", 1), "triggers.siem.sources.prod-am.rules[0].secrets", "tenant-wide"},
		{"action", strings.Replace(base, "{tenant: acme,", "{action: delete, tenant: acme,", 1), "triggers.siem.sources.prod-am.rules[0].action", "rotate or revoke"},
		{"min severity", strings.Replace(base, "{tenant: acme,", "{min_severity: high, tenant: acme,", 1), "triggers.siem.sources.prod-am.rules[0].min_severity", "info, warning, error or critical"},
		{"match_re", strings.Replace(base, "{tenant: acme,", "{match_re: {a: '('}, tenant: acme,", 1), "triggers.siem.sources.prod-am.rules[0].match_re.a", "missing closing )"},
		{"severities", strings.Replace(base, "format:", "severities: {sev1: urgent}\n    format:", 1), "triggers.siem.sources.prod-am.severities.sev1", "info, warning, error or critical"},
		{"rate limit", strings.Replace(base, "format:", "rate_limit: {per_second: -1}\n    format:", 1), "triggers.siem.sources.prod-am.rate_limit.per_second", "between 0 and 10000"},
		{"body limit", "max_body_bytes: 10\n" + base, "triggers.siem.max_body_bytes", "between 1024"},
		{"alert limit", "max_alerts: -1\n" + base, "triggers.siem.max_alerts", "between 0 and 100000"},
		{"source alert limit", strings.Replace(base, "format:", "max_alerts: 1000000\n    format:", 1), "triggers.siem.sources.prod-am.max_alerts", "between 0 and 100000"},
		{"generic without mapping", strings.Replace(base, "alertmanager", "generic", 1), "triggers.siem.sources.prod-am.generic", "must be set for format generic"},
		{"generic bad path", strings.Replace(base, "format: alertmanager", "format: generic\n    generic: {id: 'a..b'}", 1), "triggers.siem.sources.prod-am.generic.id", "empty segment"},
		{"mapping on another format", strings.Replace(base, "format: alertmanager", "format: alertmanager\n    generic: {id: x}", 1), "triggers.siem.sources.prod-am.generic", "only for format generic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := siem.ParseConfig([]byte(tc.yaml), rekeyConfig(t))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.reason)
			if tc.field != "" {
				require.Contains(t, err.Error(), tc.field+": ", "error %q", err)
			}
			require.NotContains(t, err.Error(), hmacSecret)
			require.NotContains(t, err.Error(), bearerToken)
		})
	}
}

func TestSecretsFromEnvAndNeverPrinted(t *testing.T) {
	rekey := rekeyConfig(t)
	raw := []byte(`
sources:
  gen:
    format: pagerduty
    tenants: [acme]
    auth:
      hmac: {secret_env: ` + envSecretVar + `}
    rules:
      - {tenant: acme, all_secrets: true}
  tok:
    format: datadog
    tenants: [acme]
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - {tenant: acme, all_secrets: true}
`)
	cfg, err := siem.ParseConfig(raw, rekey)
	require.NoError(t, err)
	srv := testutil.StartNATS(t, -1, "")
	bus, err := orchestrator.Connect(t.Context(), srv.ClientURL(), "siem-config-test", orchestrator.NATSConfig{}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	log := slog.New(slog.DiscardHandler)
	audit := orchestrator.NewAuditor(bus, "test", log)

	t.Setenv(envSecretVar, "")
	_, err = siem.New(cfg, orchestrator.Deps{Rekey: rekey, Bus: bus, Audit: audit, Metrics: orchestrator.NewMetrics(), Log: log})
	require.ErrorContains(t, err, "triggers.siem.sources.gen.auth.hmac.secret_env: environment variable "+envSecretVar+" is empty or unset")
	t.Setenv(envSecretVar, "short")
	_, err = siem.New(cfg, orchestrator.Deps{Rekey: rekey, Bus: bus, Audit: audit, Metrics: orchestrator.NewMetrics(), Log: log})
	require.ErrorContains(t, err, "at least 16 bytes")
	require.NotContains(t, err.Error(), "short")
	t.Setenv(envSecretVar, hmacSecret)
	metrics := orchestrator.NewMetrics()
	_, err = siem.New(cfg, orchestrator.Deps{Rekey: rekey, Bus: bus, Audit: audit, Metrics: metrics, Log: log})
	require.NoError(t, err)
	_, err = siem.New(cfg, orchestrator.Deps{Rekey: rekey, Bus: bus, Audit: audit, Metrics: metrics, Log: log}) // a second handler shares the metrics
	require.NoError(t, err)

	// However the config is printed, the token stays hidden.
	logs := &testutil.SyncBuffer{}
	slog.New(slog.NewJSONHandler(logs, nil)).Info("config", "siem", cfg, "token", cfg.Sources["tok"].Auth.Bearer.Token)
	j, err := json.Marshal(cfg)
	require.NoError(t, err)
	for _, s := range []string{fmt.Sprintf("%v %+v %#v %s %q", cfg, cfg, cfg, cfg.Sources["tok"].Auth.Bearer.Token, cfg.Sources["tok"].Auth.Bearer.Token), logs.String(), string(j)} {
		require.NotContains(t, s, bearerToken)
		require.Contains(t, s, "[redacted]")
	}
}
