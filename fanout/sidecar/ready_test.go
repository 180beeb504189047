package sidecar_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/sidecar"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// TestReadyzWaitsForResyncAfterReconnect: after the agent's connection
// drops and comes back, /readyz (wired to agent.Synced, as rekey-agent
// does) stays 503 while the resync server refuses the resync, although
// the connection is up, and turns 200 once a resync succeeds. The resync
// server is a stand-in on an embedded NATS server that answers as
// rekeyd's does (404: nothing announced) or refuses while blocked; the
// agent reaches NATS through a proxy the test cuts.
func TestReadyzWaitsForResyncAfterReconnect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := testutil.StartNATS(t, -1, "")
	proxy := testutil.StartProxy(t, strings.TrimPrefix(ns.ClientURL(), "nats://"))

	resyncNC, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(resyncNC.Close)
	var blocked atomic.Bool
	var refused atomic.Int64
	_, err = resyncNC.Subscribe(schemas.ResyncSubject("acme", "*"), func(m *nats.Msg) {
		reply := nats.NewMsg(m.Reply)
		if blocked.Load() {
			refused.Add(1)
			reply.Header.Set("Status", "500")
			reply.Header.Set("Description", "blocked by the test")
		} else {
			reply.Header.Set("Status", "404")
		}
		_ = m.RespondMsg(reply)
	})
	require.NoError(t, err)
	require.NoError(t, resyncNC.Flush())

	nc, err := nats.Connect("nats://"+proxy.Addr(), agent.NATSOptions("acme", "ready-test")...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	a, err := agent.New(nc, nil, agent.Config{Tenant: "acme", Instance: "ready-test", UsageInterval: time.Hour})
	require.NoError(t, err)
	require.False(t, a.Synced(), "not started")
	require.NoError(t, a.Start(ctx))
	t.Cleanup(func() { _ = a.Close() })
	srv, err := sidecar.New(sidecar.Config{Tenant: "acme", Listen: "127.0.0.1:0", Token: rekeyToken, Ready: a.Synced}, a)
	require.NoError(t, err)
	testutil.Run(t, srv)
	require.Eventually(t, func() bool { return srv.Addr(sidecar.APIRekey) != "" }, 5*time.Second, 5*time.Millisecond)
	readyz := func() (int, string) {
		return call(t, http.MethodGet, "http://"+srv.Addr(sidecar.APIRekey)+"/readyz", nil, "")
	}
	code, body := readyz()
	require.Equal(t, http.StatusOK, code, body)

	blocked.Store(true)
	proxy.Cut()
	proxy.Restore()
	// Two refused resyncs after the reconnect: the agent retries, and
	// meanwhile the sidecar is not ready although it is connected.
	require.Eventually(t, func() bool { return refused.Load() >= 2 }, 30*time.Second, 10*time.Millisecond)
	require.True(t, nc.IsConnected())
	require.GreaterOrEqual(t, nc.Stats().Reconnects, uint64(1))
	code, body = readyz()
	require.Equal(t, http.StatusServiceUnavailable, code, body)
	require.Contains(t, body, "not resynced")
	require.False(t, a.Synced())

	blocked.Store(false)
	require.Eventually(t, func() bool { code, _ := readyz(); return code == http.StatusOK }, 30*time.Second, 10*time.Millisecond)
	require.True(t, a.Synced())

	require.NoError(t, a.Close())
	require.False(t, a.Synced(), "closed")
	code, _ = readyz()
	require.Equal(t, http.StatusServiceUnavailable, code)
}
