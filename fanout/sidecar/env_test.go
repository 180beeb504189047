package sidecar_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/sidecar"
	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
)

// Credentials of the sidecar's local clients in the tests.
const (
	rekeyToken    = "rekey-api-token-0123456789"
	awsAgentToken = "aws-agent-ssrf-token-0123456789"
	vaultToken    = "hvs.sidecar-local-token-0123456789"
	accessKeyID   = "AKIAREKEYSIDECAR0001"
	secretKey     = "sidecar-secret-access-key-0123456789abcdef"
)

// env is rekeyd (the embedded stack of internal/demo) with one rekey-agent
// sidecar for acme, every API on a free loopback port.
type env struct {
	t       testing.TB
	c       *demo.Cluster
	srv     *sidecar.Server
	agent   *agent.Agent
	logs    *testutil.SyncBuffer
	rekey   string // base URLs
	awsAgt  string
	awsAPI  string
	vault   string
	dropsMu sync.Mutex
	drops   []agent.Invalidated
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvWith(t, nil, sidecar.Mapping{VaultStaticRoles: map[string]string{"billing-db": "{tenant}-app-db"}})
}

// newEnvWith is newEnv with the agent reading values through f (nil: from
// rekeyd) and the sidecar mapping names with m.
func newEnvWith(t testing.TB, f agent.Fetcher, m sidecar.Mapping) *env {
	t.Helper()
	return newEnvCfg(t, f, m, nil, nil)
}

// newEnvCfg is newEnvWith with the sidecar's and the agent's configs
// changed by sc and ac (each may be nil).
func newEnvCfg(t testing.TB, f agent.Fetcher, m sidecar.Mapping, sc func(*sidecar.Config), ac func(*agent.Config)) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := demo.StartCluster(ctx, nil, func(cfg *orchestrator.Config) { cfg.Rotation.MinInterval = 0 })
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	e := &env{t: t, c: c, logs: &testutil.SyncBuffer{}}

	nc, err := nats.Connect(c.Daemon.NATSURL(), append(c.Daemon.AgentNATSOptions("acme"), nats.Name("acme-sidecar"))...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	scfg := sidecar.Config{
		Tenant: "acme", Listen: "127.0.0.1:0", AWSAgentListen: "127.0.0.1:0", AWSAPIListen: "127.0.0.1:0", VaultListen: "127.0.0.1:0",
		Token: rekeyToken, AWSAgentToken: awsAgentToken, VaultToken: vaultToken,
		AWSAccessKeyID: accessKeyID, AWSSecretAccessKey: secretKey,
		Mapping: m,
		Logger:  slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Ready:   nc.IsConnected,
	}
	if sc != nil {
		sc(&scfg)
	}
	e.srv, err = sidecar.New(scfg, nil)
	require.NoError(t, err)
	acfg := agent.Config{
		Tenant: "acme", Instance: "acme-sidecar", UsageInterval: time.Hour,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnInvalidate: func(ev agent.Invalidated) {
			e.dropsMu.Lock()
			e.drops = append(e.drops, ev)
			e.dropsMu.Unlock()
			e.srv.OnInvalidate(ev)
		},
	}
	if ac != nil {
		ac(&acfg)
	}
	e.agent, err = agent.New(nc, f, acfg)
	require.NoError(t, err)
	require.NoError(t, e.agent.Start(ctx))
	t.Cleanup(func() { _ = e.agent.Close() })
	e.srv.SetSource(e.agent)
	testutil.Run(t, e.srv)
	require.Eventually(t, func() bool { return e.srv.Addr(sidecar.APIVault) != "" }, 5*time.Second, 5*time.Millisecond)
	e.rekey = "http://" + e.srv.Addr(sidecar.APIRekey)
	e.awsAgt = "http://" + e.srv.Addr(sidecar.APIAWSAgent)
	e.awsAPI = "http://" + e.srv.Addr(sidecar.APIAWS)
	e.vault = "http://" + e.srv.Addr(sidecar.APIVault)
	return e
}

// call makes a request and returns the status and body.
func call(t testing.TB, method, url string, headers map[string]string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return do(t, req)
}

// value reads acme's secret through rekey's own API.
func (e *env) value(secret string) sidecar.SecretReply {
	e.t.Helper()
	code, body := call(e.t, "GET", e.rekey+"/v1/secrets/"+secret, map[string]string{"Authorization": "Bearer " + rekeyToken}, "")
	require.Equal(e.t, http.StatusOK, code, body)
	var r sidecar.SecretReply
	require.NoError(e.t, json.Unmarshal([]byte(body), &r))
	return r
}

// otherValue reads another tenant's current value straight from rekeyd,
// with that tenant's own agent, to check it never comes out of acme's
// sidecar.
func (e *env) otherValue(tenant, secret string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := e.c.NewAgent(ctx, tenant, tenant+"-probe")
	require.NoError(e.t, err)
	defer a.Close()
	s, err := a.Get(ctx, secret)
	require.NoError(e.t, err)
	return string(s.Value)
}

// streams is the last sequence of every JetStream stream (KV buckets
// included) but the leases bucket, which lease renewals change on their
// own: an attack must leave it unchanged.
func (e *env) streams() map[string]uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[string]uint64{}
	lister := e.c.Daemon.Bus().JS.ListStreams(ctx)
	for info := range lister.Info() {
		if info.Config.Name == "KV_"+orchestrator.BucketLeases {
			continue
		}
		out[info.Config.Name] = info.State.LastSeq
	}
	require.NoError(e.t, lister.Err())
	return out
}

// settled is streams once two reads 100ms apart agree: what was published
// before (a probe agent's last use report) has been stored.
func (e *env) settled() map[string]uint64 {
	e.t.Helper()
	prev := e.streams()
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		cur := e.streams()
		if maps.Equal(prev, cur) {
			return cur
		}
		prev = cur
	}
	e.t.Fatal("streams still changing after 5s")
	return nil
}

// revoke revokes (or restores) acme and waits until the sidecar's agent
// has applied it.
func (e *env) revoke(action string, revoked bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := e.c.Post(ctx, "/v1/tenants/acme/"+action)
	require.NoError(e.t, err)
	require.Eventually(e.t, func() bool { return e.agent.Revoked() == revoked }, 20*time.Second, 5*time.Millisecond)
}

// rotate rotates acme's secret and waits until the sidecar dropped the
// old version; it returns the drop.
func (e *env) rotate(secret string) agent.Invalidated {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id, err := e.c.Rotate(ctx, "acme", secret)
	require.NoError(e.t, err)
	var got agent.Invalidated
	require.Eventually(e.t, func() bool {
		e.dropsMu.Lock()
		defer e.dropsMu.Unlock()
		for _, d := range e.drops {
			if d.Invalidation.RequestID == id {
				got = d
				return true
			}
		}
		return false
	}, 20*time.Second, 5*time.Millisecond, "no invalidation for rotation %s", id)
	return got
}

// requireNoValue fails if a value appears in the sidecar's logs or metrics.
func (e *env) requireNoValue(values ...string) {
	e.t.Helper()
	_, metrics := call(e.t, "GET", e.rekey+"/metrics", nil, "")
	for _, v := range values {
		require.NotEmpty(e.t, v)
		require.NotContains(e.t, e.logs.String(), v, "a value in the logs")
		require.NotContains(e.t, metrics, v, "a value in the metrics")
	}
}

// python returns a python3 that has boto3 and hvac, or fails the test
// saying how to install them.
func python(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"python3", "/usr/bin/python3"} {
		if exec.Command(p, "-c", "import boto3, hvac").Run() == nil {
			return p
		}
	}
	t.Fatal("python3 with boto3 and hvac is required: apt-get install -y python3-boto3 python3-hvac")
	return ""
}

// runPy runs a script of testdata with args and env, and returns its
// stdout; a failing script fails the test with its stderr.
func runPy(t *testing.T, script string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(python(t), append([]string{"testdata/" + script}, args...)...)
	cmd.Env = append(testutil.EnvWithout("AWS_", "VAULT_"), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	require.NoError(t, err, "%s: %s", script, stderr.String())
	return stdout.String()
}

// sidecarOf starts a second sidecar, for tenant, on the same rekeyd (its
// own agent identity), with rekey's own API only; it returns its base URL.
func (e *env) sidecarOf(tenant string) string {
	e.t.Helper()
	nc, err := nats.Connect(e.c.Daemon.NATSURL(), append(e.c.Daemon.AgentNATSOptions(tenant), nats.Name(tenant+"-sidecar"))...)
	require.NoError(e.t, err)
	e.t.Cleanup(nc.Close)
	srv, err := sidecar.New(sidecar.Config{Tenant: tenant, Listen: "127.0.0.1:0", Token: rekeyToken, Ready: nc.IsConnected}, nil)
	require.NoError(e.t, err)
	a, err := agent.New(nc, nil, agent.Config{Tenant: tenant, Instance: tenant + "-sidecar", UsageInterval: time.Hour, OnInvalidate: srv.OnInvalidate})
	require.NoError(e.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(e.t, a.Start(ctx))
	e.t.Cleanup(func() { _ = a.Close() })
	srv.SetSource(a)
	testutil.Run(e.t, srv)
	require.Eventually(e.t, func() bool { return srv.Addr(sidecar.APIRekey) != "" }, 5*time.Second, 5*time.Millisecond)
	return "http://" + srv.Addr(sidecar.APIRekey)
}

// subscribe collects the messages of subject (rekeyd's own connection).
func (e *env) subscribe(subject string) chan *nats.Msg {
	e.t.Helper()
	ch := make(chan *nats.Msg, 1024)
	sub, err := e.c.Daemon.Bus().NC.ChanSubscribe(subject, ch)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(e.t, e.c.Daemon.Bus().NC.Flush())
	return ch
}
