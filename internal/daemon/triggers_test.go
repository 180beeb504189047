package daemon_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// TestUsePolicyEndToEnd: agents' Gets are reported batched, counted by
// rekeyd, and the version that passes policy.max_uses is rotated once;
// agents move to the new version.
func TestUsePolicyEndToEnd(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	sc := cfg.Tenants["acme"].Secrets["billing-db"]
	sc.Policy.MaxUses = 3000
	cfg.Tenants["acme"].Secrets["billing-db"] = sc
	d := start(t, cfg, daemonOpts())
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		a := newAgent(t, d, "acme", fmt.Sprintf("user-%d", i), nil)
		for j := 0; j < 1500; j++ { // 4,500 uses of version 1 in all
			s, err := a.Get(ctx, "billing-db")
			require.NoError(t, err)
			require.Equal(t, "1", s.Version)
		}
	}
	require.Eventually(t, func() bool {
		st, err := d.State().SecretStatus(ctx, "acme", "billing-db")
		return err == nil && st.Version == "2"
	}, 20*time.Second, 50*time.Millisecond, "version 1 passed max_uses but was not rotated")
	time.Sleep(2 * time.Second) // more reports of version 1 arrive: no second rotation
	st, err := d.State().SecretStatus(ctx, "acme", "billing-db")
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Rotations)
	require.Equal(t, schemas.TriggerUsage, st.LastTrigger.Kind)
	other, err := d.State().SecretStatus(ctx, "acme", "openai-key")
	require.NoError(t, err)
	require.Zero(t, other.Rotations)
}

// TestUnknownTriggerSectionRefused: a section for a trigger this build
// does not have is an error naming it.
func TestUnknownTriggerSectionRefused(t *testing.T) {
	cfg, err := orchestrator.Parse([]byte(`
data_dir: ` + t.TempDir() + `
nats: {embedded: {addr: "127.0.0.1:0"}}
http: {addr: "127.0.0.1:0"}
triggers:
  pagerr: {}
tenants:
  acme: {secrets: {k: {backend: local}}}
`))
	require.NoError(t, err)
	_, err = daemon.New(context.Background(), daemon.Options{Config: cfg, AdminToken: testToken})
	require.ErrorContains(t, err, "triggers.pagerr: unknown trigger")
}

// TestAWSExporterSectionChecked: with the SQS trigger of
// triggers.awsevents off, its eventbridge key (the EventBridge exporter's)
// and the rest of the section are still checked, each error naming its
// field; an exporter that is off needs nothing.
func TestAWSExporterSectionChecked(t *testing.T) {
	for _, tc := range []struct{ section, err string }{
		{"{enabled: false, eventbridge: {enabled: true, kinds: [external_change]}}", "triggers.awsevents.eventbridge.kinds[0]"},
		{"{enabled: false, eventbridge: {enabled: false, source: aws.rekey}}", "triggers.awsevents.eventbridge.source"},
		{"{enabled: false, wait_time: 25s, eventbridge: {enabled: true}}", "triggers.awsevents.wait_time"},
		{"{enabled: false, eventbridge: {enabled: false}}", ""},
	} {
		cfg, err := orchestrator.Parse([]byte(`
data_dir: ` + t.TempDir() + `
nats: {embedded: {addr: "127.0.0.1:0"}}
http: {addr: "127.0.0.1:0"}
triggers:
  awsevents: ` + tc.section + `
tenants:
  acme: {secrets: {k: {backend: local}}}
`))
		require.NoError(t, err)
		if tc.err == "" {
			start(t, cfg, daemonOpts())
			continue
		}
		_, err = daemon.New(context.Background(), daemon.Options{Config: cfg, AdminToken: testToken})
		require.ErrorContains(t, err, tc.err, tc.section)
	}
}
