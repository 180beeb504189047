package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/deployments/examples"
	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

func startDaemon(t *testing.T) (*daemon.Daemon, string) {
	t.Helper()
	dir := t.TempDir()
	cfg, err := orchestrator.Parse(examples.RekeyYAML)
	require.NoError(t, err)
	cfg.DataDir = dir
	cfg.NATS.Embedded.Addr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rotation.MinInterval = 0
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	return d, dir
}

// rekeyctl runs the CLI in-process and returns stdout, stderr and the error.
func rekeyctl(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := newRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func TestRekeyctl(t *testing.T) {
	d, dir := startDaemon(t)
	g := []string{"--server", "http://" + d.HTTPAddr(), "--data-dir", dir, "--nats-url", d.NATSURL()}
	t.Setenv("REKEY_ADMIN_TOKEN", "")

	// rotate --wait, reading the generated admin token from the data dir.
	out, _, err := rekeyctl(t, append(g, "rotate", "acme/openai-key", "--wait", "--reason", "cli test")...)
	require.NoError(t, err)
	var res map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Equal(t, "2", res["status"].(map[string]any)["version"])

	out, _, err = rekeyctl(t, append(g, "status", "acme/openai-key")...)
	require.NoError(t, err)
	require.Contains(t, out, `"version": "2"`)
	require.Contains(t, out, `"reason": "cli test"`)

	out, _, err = rekeyctl(t, append(g, "status", "acme")...)
	require.NoError(t, err)
	require.Contains(t, out, `"revoked": false`)

	// watch prints invalidations as JSON lines.
	watchOut := &testutil.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan error, 1)
	go func() {
		root := newRoot()
		root.SetOut(watchOut)
		root.SetErr(&bytes.Buffer{})
		root.SetArgs(append(g, "watch", "globex"))
		watchDone <- root.ExecuteContext(ctx)
	}()
	time.Sleep(300 * time.Millisecond) // let watch subscribe

	// revoke --wait prints the report.
	out, _, err = rekeyctl(t, append(g, "revoke", "globex", "--wait", "--reason", "cli test")...)
	require.NoError(t, err)
	// Not a terminal: JSON lines, one per item as it ends, then the report.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.GreaterOrEqual(t, len(lines), 3, "progress lines and a report: %s", out)
	for i, line := range lines[:len(lines)-1] {
		var p schemas.RevocationProgress
		require.NoError(t, json.Unmarshal([]byte(line), &p), "line %d: %q", i, line)
		require.Equal(t, "globex", p.Tenant)
		require.Equal(t, schemas.OutcomeSucceeded, p.Outcome)
		require.Equal(t, i+1, p.Done)
		require.Equal(t, len(lines)-1, p.Total)
	}
	var rep schemas.RevocationCompleted
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &rep))
	require.Equal(t, "globex", rep.Tenant)
	require.False(t, rep.Failed)
	require.NotEmpty(t, rep.Parts)

	require.Eventually(t, func() bool { return strings.Contains(watchOut.String(), `"kind":"revoked"`) }, 5*time.Second, 20*time.Millisecond)
	cancel()
	require.NoError(t, <-watchDone)
	for _, line := range strings.Split(strings.TrimSpace(watchOut.String()), "\n") {
		var inv map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &inv), "watch prints one JSON object per line: %q", line)
		require.Equal(t, "globex", inv["tenant"])
	}

	_, _, err = rekeyctl(t, append(g, "restore", "globex")...)
	require.NoError(t, err)

	// agent-creds: credentials that connect as acme's agents and only that.
	out, _, err = rekeyctl(t, append(g, "agent-creds", "acme")...)
	require.NoError(t, err)
	var creds agentCreds
	require.NoError(t, json.Unmarshal([]byte(out), &creds))
	require.Equal(t, "agent-acme", creds.User)
	nc, err := nats.Connect(d.NATSURL(), nats.UserInfo(creds.User, creds.Password), nats.CustomInboxPrefix(creds.InboxPrefix))
	require.NoError(t, err)
	defer nc.Close()
	_, err = nats.Connect(d.NATSURL(), nats.UserInfo("agent-globex", creds.Password))
	require.Error(t, err, "acme's password must not open globex's user")

	// status shows which live agents confirmed the last invalidation: an
	// agent on those credentials reads the secret, a rotation follows.
	a, err := agent.New(nc, nil, agent.Config{Tenant: "acme", Instance: "cli-agent"})
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	defer a.Close()
	_, err = a.Get(context.Background(), "openai-key")
	require.NoError(t, err)
	_, _, err = rekeyctl(t, append(g, "rotate", "acme/openai-key", "--wait")...)
	require.NoError(t, err)
	var st struct {
		Invalidation struct {
			LiveAgents int      `json:"live_agents"`
			Acked      []string `json:"acked"`
			Missing    []string `json:"missing"`
		} `json:"invalidation"`
	}
	require.Eventually(t, func() bool {
		out, _, err := rekeyctl(t, append(g, "status", "acme/openai-key")...)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal([]byte(out), &st), "%s", out)
		return len(st.Invalidation.Acked) == 1
	}, 5*time.Second, 50*time.Millisecond)
	require.Equal(t, []string{"cli-agent"}, st.Invalidation.Acked)
	require.Equal(t, 1, st.Invalidation.LiveAgents)
	require.Empty(t, st.Invalidation.Missing)

	out, _, err = rekeyctl(t, "nats-config")
	require.NoError(t, err)
	require.Contains(t, out, `user: "agent-globex"`)
	require.Contains(t, out, `"rekey.invalidate.acme.>"`)
	require.NotContains(t, out, creds.Password)

	// audit: the trail of one request, as JSON lines, from trigger to invalidation.
	out, _, err = rekeyctl(t, append(g, "audit", "--tenant", "acme", "--since", "10m", "--request", res["request_id"].(string))...)
	require.NoError(t, err)
	var actions []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "%q", line)
		require.Equal(t, "acme", rec["tenant"])
		actions = append(actions, rec["action"].(string))
	}
	for _, want := range []string{"rotation.request", "rotation.create", "rotation.finish", "rotation.complete", "invalidation.publish"} {
		require.Contains(t, actions, want)
	}
	out, _, err = rekeyctl(t, append(g, "audit", "--since", "10m")...)
	require.NoError(t, err)
	require.Contains(t, out, `"tenant":"globex"`)
	require.Contains(t, out, `"action":"revocation.complete"`)

	// Errors carry the API's reason.
	_, _, err = rekeyctl(t, append(g, "rotate", "acme/stripe-key")...)
	require.ErrorContains(t, err, `secret "stripe-key" of tenant "acme" is not configured (HTTP 404)`)
	_, _, err = rekeyctl(t, append(g, "rotate", "acme.openai-key")...)
	require.ErrorContains(t, err, "tenant/secret")
	_, _, err = rekeyctl(t, append(g, "--token", "wrong-token-0123456789", "status", "acme")...)
	require.ErrorContains(t, err, "invalid admin token (HTTP 401)")
	_, _, err = rekeyctl(t, "--data-dir", t.TempDir(), "--server", "http://"+d.HTTPAddr(), "status", "acme")
	require.ErrorContains(t, err, "no admin token")
}
