package daemon_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// TestAgentWorkloadIdentity: with nats.agent_auth, an agent logs in to
// rekeyd's embedded NATS with a workload identity token (read from its
// projected token file at each connect), gets its tenant's values and
// invalidations, is disconnected when its tenant is revoked and refused
// until the tenant is restored, and then resyncs.
func TestAgentWorkloadIdentity(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Use: "sig"}}})
	require.NoError(t, err)
	issuerSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(jwks) }))
	defer issuerSrv.Close()
	const iss = "https://kubernetes.default.svc.cluster.local"
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	require.NoError(t, err)
	token := func(ns, pod string) string {
		now := time.Now()
		tok, err := jwt.Signed(signer).Claims(map[string]any{
			"iss": iss, "aud": []string{"rekey"}, "sub": "system:serviceaccount:" + ns + ":planner",
			"iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
			"kubernetes.io": map[string]any{"namespace": ns, "pod": map[string]any{"name": pod}},
		}).Serialize()
		require.NoError(t, err)
		return tok
	}

	cfg := testConfig(t, t.TempDir())
	cfg.NATS.AgentAuth = &orchestrator.AgentAuthConfig{Issuer: iss, Audiences: []string{"rekey"}, JWKSURL: issuerSrv.URL + "/openid/v1/jwks"}
	require.NoError(t, cfg.Validate())
	d := start(t, cfg, daemonOpts())
	ctx := context.Background()

	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token("acme", "planner-1")+"\n"), 0o600))
	var disconnects atomic.Int64
	opts := append(agent.NATSOptionsJWT("acme", "planner-1", agent.TokenFile(tokenFile)),
		nats.ReconnectWait(50*time.Millisecond),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { disconnects.Add(1) }))
	nc, err := nats.Connect(d.NATSURL(), opts...)
	require.NoError(t, err)
	defer nc.Close()
	invs := make(chan agent.Invalidated, 16)
	a := startAgent(t, nc, nil, agent.Config{Tenant: "acme", Instance: "planner-1",
		OnInvalidate: func(inv agent.Invalidated) { invs <- inv }})
	first, err := a.Get(ctx, "openai-key")
	require.NoError(t, err)

	// A rotation reaches the agent, which then reads the new version.
	rotate(t, d, "acme", "openai-key")
	select {
	case inv := <-invs:
		require.Equal(t, schemas.InvalidationRotated, inv.Invalidation.Kind)
	case <-time.After(15 * time.Second):
		t.Fatal("no invalidation")
	}
	second, err := a.Get(ctx, "openai-key")
	require.NoError(t, err)
	require.NotEqual(t, first.Version, second.Version)

	// The kill switch: the agent fails closed, its connection is closed,
	// and its identity is refused until the tenant is restored.
	code, _ := api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/acme/revoke", testToken, "")
	require.Equal(t, http.StatusAccepted, code)
	require.Eventually(t, a.Revoked, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return disconnects.Load() > 0 }, 10*time.Second, 10*time.Millisecond,
		"the revoked tenant's agent connection was not closed")
	_, err = nats.Connect(d.NATSURL(), agent.NATSOptionsJWT("acme", "planner-2", func() string { return token("acme", "planner-2") })...)
	require.ErrorIs(t, err, nats.ErrAuthorization)
	require.False(t, nc.IsConnected())
	// Another tenant's identity still logs in.
	g, err := nats.Connect(d.NATSURL(), agent.NATSOptionsJWT("globex", "worker-1", func() string { return token("globex", "worker-1") })...)
	require.NoError(t, err)
	g.Close()
	_, err = a.Get(ctx, "openai-key")
	require.ErrorIs(t, err, agent.ErrRevoked)

	// The kubelet refreshes the token while the agent is away; restore:
	// the agent logs in again with the file's new token and resyncs.
	require.NoError(t, os.WriteFile(tokenFile, []byte(token("acme", "planner-1")), 0o600))
	code, _ = api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/acme/restore", testToken, "")
	require.Equal(t, http.StatusAccepted, code)
	require.Eventually(t, func() bool {
		_, err := a.Get(ctx, "openai-key")
		return err == nil
	}, 30*time.Second, 20*time.Millisecond)
	require.True(t, nc.IsConnected())
}
