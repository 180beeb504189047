package awsevents_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/awsevents"
)

const queueURL = "https://sqs.eu-west-1.amazonaws.com/123456789012/rekey-events"

func TestParseConfig(t *testing.T) {
	cfg, err := awsevents.ParseConfig([]byte(`
queue_url: `+queueURL+`
visibility_timeout: 2m
max_messages: 5
accounts: ["123456789012"]
guardduty:
  rules:
    - {tenant: acme, access_key_ids: [AKIAEXAMPLE], min_severity: "7.5"}
    - {name: tags, tag_key: TenantId, tenants: [acme, globex], min_severity: critical}
eventbridge: {enabled: true, kinds: [rotation_completed, tenant_restored]}
`), rekeyConfig(t))
	require.NoError(t, err)
	require.True(t, cfg.Enabled)
	require.Equal(t, queueURL, cfg.QueueURL)
	require.Equal(t, 20*time.Second, cfg.WaitTime, "default")
	require.Equal(t, 5, cfg.MaxMessages)
	require.Equal(t, 2*time.Minute, cfg.VisibilityTimeout)
	require.Equal(t, awsevents.DefaultDedupWindow, cfg.DedupWindow)
	require.Equal(t, awsevents.DefaultMaxReceiveCount, cfg.MaxReceiveCount)
	require.Equal(t, float64(awsevents.DefaultConfirmTPS), cfg.ConfirmTPS)
	require.Len(t, cfg.GuardDuty.Rules, 2)
	require.Equal(t, "7.5", cfg.GuardDuty.Rules[0].MinSeverity)
	require.NotEmpty(t, cfg.EventBridge, "kept for fanout/exporters/eventbridge")

	_, err = awsevents.ParseConfig([]byte("queue_url: "+queueURL+"\neventbridge: {enabled: true, kinds: [external_change]}\n"), rekeyConfig(t))
	require.NoError(t, err, "eventbridge is the exporter's to validate")

	cfg, err = awsevents.ParseConfig([]byte("enabled: false\n"), rekeyConfig(t))
	require.NoError(t, err, "a disabled trigger needs no queue")
	require.False(t, cfg.Enabled)
	require.Equal(t, awsevents.DefaultMaxMessages, cfg.MaxMessages)
}

func TestConfigErrorsNameTheirField(t *testing.T) {
	const base = `
queue_url: ` + queueURL + `
guardduty:
  rules:
    - {tenant: acme, access_key_ids: [AKIAEXAMPLE]}
eventbridge: {enabled: true}
`
	for _, tc := range []struct {
		name, yaml, field, reason string
	}{
		{"unknown field", base + "queue: x\n", "", `unknown field "queue"`},
		{"no queue", "enabled: true\n", "triggers.awsevents.queue_url", "is required when enabled"},
		{"queue not a URL", strings.Replace(base, queueURL, "rekey-events", 1), "triggers.awsevents.queue_url", "must be an http(s) URL"},
		{"queue URL without a queue", strings.Replace(base, "/123456789012/rekey-events", "/", 1), "triggers.awsevents.queue_url", "is not a queue URL"},
		{"endpoint", base + "endpoint: localhost:4566\n", "triggers.awsevents.endpoint", "must be an http(s) URL"},
		{"wait too long", base + "wait_time: 25s\n", "triggers.awsevents.wait_time", "from 1s to 20s"},
		{"wait not whole", base + "wait_time: 1500ms\n", "triggers.awsevents.wait_time", "whole seconds"},
		{"short poll", base + "wait_time: 0s\n", "triggers.awsevents.wait_time", "from 1s to 20s"},
		{"bad duration", base + "wait_time: soon\n", "triggers.awsevents.wait_time", "is not a duration"},
		{"max messages", base + "max_messages: 11\n", "triggers.awsevents.max_messages", "between 1 and 10"},
		{"visibility", base + "visibility_timeout: 13h\n", "triggers.awsevents.visibility_timeout", "up to 12h"},
		{"tenant id", base + "tenants: [Acme]\n", "triggers.awsevents.tenants[0]", "must match"},
		{"tenant unknown", base + "tenants: [acme, hooli]\n", "triggers.awsevents.tenants[1]", `tenant "hooli" is not configured`},
		{"account", base + "accounts: ['12345']\n", "triggers.awsevents.accounts[0]", "12-digit"},
		{"audit tenant", base + "audit_tenant: hooli\n", "triggers.awsevents.audit_tenant", "not configured"},
		{"rule matches nothing", strings.Replace(base, "access_key_ids: [AKIAEXAMPLE]", "min_severity: low", 1), "triggers.awsevents.guardduty.rules[0]", "one of access_key_ids, principal_ids or tag_key"},
		{"rule without tenant", strings.Replace(base, "tenant: acme, ", "", 1), "triggers.awsevents.guardduty.rules[0].tenant", "is required"},
		{"rule tenant unknown", strings.Replace(base, "tenant: acme", "tenant: hooli", 1), "triggers.awsevents.guardduty.rules[0].tenant", "not configured"},
		{"rule key and tag", strings.Replace(base, "access_key_ids: [AKIAEXAMPLE]", "access_key_ids: [AKIAEXAMPLE], tag_key: T", 1), "triggers.awsevents.guardduty.rules[0].tag_key", "not both"},
		{"tag rule without tenants", strings.Replace(base, "tenant: acme, access_key_ids: [AKIAEXAMPLE]", "tag_key: TenantId", 1), "triggers.awsevents.guardduty.rules[0].tenants", "at least one tenant"},
		{"tag rule with tenant", strings.Replace(base, "access_key_ids: [AKIAEXAMPLE]", "tag_key: TenantId, tenants: [acme]", 1), "triggers.awsevents.guardduty.rules[0].tenant", "list it in tenants"},
		{"tag rule tenant unknown", strings.Replace(base, "tenant: acme, access_key_ids: [AKIAEXAMPLE]", "tag_key: TenantId, tenants: [acme, hooli]", 1), "triggers.awsevents.guardduty.rules[0].tenants[1]", "not configured"},
		{"key with space", strings.Replace(base, "[AKIAEXAMPLE]", "[' AKIAEXAMPLE']", 1), "triggers.awsevents.guardduty.rules[0].access_key_ids[0]", "without spaces"},
		{"severity", strings.Replace(base, "access_key_ids:", "min_severity: severe, access_key_ids:", 1), "triggers.awsevents.guardduty.rules[0].min_severity", "number from 0 to 10"},
		{"severity range", strings.Replace(base, "access_key_ids:", "min_severity: 11, access_key_ids:", 1), "triggers.awsevents.guardduty.rules[0].min_severity", "number from 0 to 10"},
		{"rule names", strings.Replace(base, "    - {tenant", "    - {name: a, tenant: globex, principal_ids: [P]}\n    - {name: a, tenant", 1), "triggers.awsevents.guardduty.rules[1].name", "used by another rule"},
		{"confirm tps", base + "confirm_tps: 0\n", "triggers.awsevents.confirm_tps", "above 0"},
		{"confirm tps NaN", base + "confirm_tps: .nan\n", "triggers.awsevents.confirm_tps", "above 0"},
		{"max receive count", base + "max_receive_count: 0\n", "triggers.awsevents.max_receive_count", "between 1 and 1000"},
		{"dedup window", base + "dedup_window: 30s\n", "triggers.awsevents.dedup_window", "from 1m to 720h"},
		{"dedup window under visibility", base + "visibility_timeout: 10m\nmax_receive_count: 6\ndedup_window: 1h\n", "triggers.awsevents.dedup_window", "must exceed visibility_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := awsevents.ParseConfig([]byte(tc.yaml), rekeyConfig(t))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.reason)
			if tc.field == "" {
				return
			}
			var fe *orchestrator.FieldError
			require.True(t, errors.As(err, &fe), "%v", err)
			require.Equal(t, tc.field, fe.Field, "%v", err)
		})
	}
}

func TestParseSeverity(t *testing.T) {
	for in, want := range map[string]float64{"": 0, "0": 0, "4": 4, "7.5": 7.5, "10": 10, "low": 1, "Medium": 4, "HIGH": 7, "critical": 9} {
		got, err := awsevents.ParseSeverity(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"-1", "10.5", "severe", "NaN"} {
		_, err := awsevents.ParseSeverity(in)
		require.Error(t, err, in)
	}
}

// TestNew: the region comes from the configuration, else from a standard
// queue URL, else from the SDK's chain, and without one New fails; a
// disabled trigger needs nothing and its Run returns at once.
func TestNew(t *testing.T) {
	cfg := awsevents.Defaults()
	cfg.QueueURL = queueURL
	_, err := awsevents.New(cfg, secrets, orchestrator.Deps{Bus: &orchestrator.Bus{}, Audit: &orchestrator.Auditor{}})
	require.NoError(t, err, "region eu-west-1 from the queue URL")

	cfg.QueueURL = "http://localhost:4566/000000000000/rekey-events"
	_, err = awsevents.New(cfg, secrets, orchestrator.Deps{Bus: &orchestrator.Bus{}, Audit: &orchestrator.Auditor{}})
	require.ErrorContains(t, err, "no AWS region")
	cfg.Region = "us-east-1"
	_, err = awsevents.New(cfg, secrets, orchestrator.Deps{Bus: &orchestrator.Bus{}, Audit: &orchestrator.Auditor{}})
	require.NoError(t, err)

	_, err = awsevents.New(cfg, nil, orchestrator.Deps{Bus: &orchestrator.Bus{}, Audit: &orchestrator.Auditor{}})
	require.ErrorContains(t, err, "the secret resolver is required")
	_, err = awsevents.New(cfg, secrets, orchestrator.Deps{Bus: &orchestrator.Bus{}})
	require.ErrorContains(t, err, "awsevents: deps: audit is required")

	cfg.MaxMessages = 20
	_, err = awsevents.New(cfg, secrets, orchestrator.Deps{Bus: &orchestrator.Bus{}, Audit: &orchestrator.Auditor{}})
	require.ErrorContains(t, err, "triggers.awsevents.max_messages")

	off, err := awsevents.New(awsevents.Config{}, nil, orchestrator.Deps{})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	require.NoError(t, off.Run(ctx))
	require.NoError(t, ctx.Err(), "a disabled trigger's Run returns at once")
}
