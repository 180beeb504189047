package daemon_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// testIssuer serves an ES256 JWKS over loopback HTTP and signs
// Kubernetes-like service-account tokens.
type testIssuer struct {
	url    string
	signer jose.Signer
}

const testIssuerName = "https://kubernetes.default.svc.cluster.local"

func newTestIssuer(t *testing.T) *testIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Use: "sig"}}})
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(jwks) }))
	t.Cleanup(srv.Close)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	require.NoError(t, err)
	return &testIssuer{url: srv.URL + "/openid/v1/jwks", signer: signer}
}

func (i *testIssuer) config() *orchestrator.AgentAuthConfig {
	return &orchestrator.AgentAuthConfig{Issuer: testIssuerName, Audiences: []string{"rekey"}, JWKSURL: i.url}
}

// token is pod's token in namespace ns, valid for ten minutes.
func (i *testIssuer) token(t *testing.T, ns, pod string) string {
	t.Helper()
	now := time.Now()
	tok, err := jwt.Signed(i.signer).Claims(map[string]any{
		"iss": testIssuerName, "aud": []string{"rekey"}, "sub": "system:serviceaccount:" + ns + ":planner",
		"iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"kubernetes.io": map[string]any{"namespace": ns, "pod": map[string]any{"name": pod}},
	}).Serialize()
	require.NoError(t, err)
	return tok
}

// TestAgentWorkloadIdentity: with nats.agent_auth, an agent logs in to
// rekeyd's embedded NATS with a workload identity token (read from its
// projected token file at each connect), gets its tenant's values and
// invalidations, is disconnected when its tenant is revoked and refused
// until the tenant is restored, and then resyncs.
func TestAgentWorkloadIdentity(t *testing.T) {
	ti := newTestIssuer(t)
	token := func(ns, pod string) string { return ti.token(t, ns, pod) }
	cfg := testConfig(t, t.TempDir())
	cfg.NATS.AgentAuth = ti.config()
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

// TestAgentWorkloadIdentityExternalNATS: on an external nats-server
// configured with the block `rekeyctl nats-config` prints for auth
// callout, rekeyd answers the callout: an agent logs in with its workload
// identity and gets its values; while its tenant is revoked, logins are
// refused, and after the restore accepted again.
func TestAgentWorkloadIdentityExternalNATS(t *testing.T) {
	ti := newTestIssuer(t)
	akp, err := nkeys.CreateAccount()
	require.NoError(t, err)
	apub, err := akp.PublicKey()
	require.NoError(t, err)
	seed, err := akp.Seed()
	require.NoError(t, err)
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "callout.nk")
	require.NoError(t, os.WriteFile(seedFile, seed, 0o600))

	cfg := testConfig(t, t.TempDir())
	t.Setenv("REKEYD_NATS_PASSWORD", "admin-pw")
	for _, r := range orchestrator.Roles {
		t.Setenv(orchestrator.RolePasswordEnv(r), "role-pw-"+string(r))
	}
	t.Setenv(orchestrator.CalloutPasswordEnv, "callout-pw")
	conf := filepath.Join(dir, "nats.conf")
	require.NoError(t, os.WriteFile(conf, []byte(orchestrator.NATSCalloutConfigBlock(cfg.TenantNames(), apub)), 0o600))
	sopts, err := server.ProcessConfigFile(conf)
	require.NoError(t, err)
	sopts.Host, sopts.Port, sopts.NoLog, sopts.NoSigs = "127.0.0.1", -1, true, true
	sopts.JetStream, sopts.StoreDir = true, t.TempDir()
	srv, err := server.NewServer(sopts)
	require.NoError(t, err)
	go srv.Start()
	require.True(t, srv.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })

	cfg.NATS.URL = strings.Replace(srv.ClientURL(), "nats://", "nats://"+orchestrator.RekeydUser+":admin-pw@", 1)
	cfg.NATS.AgentAuth = ti.config()
	cfg.NATS.AgentAuth.CalloutIssuerSeedFile = seedFile
	require.NoError(t, cfg.Validate())
	d := start(t, cfg, daemonOpts())
	ctx := context.Background()

	login := func(ns, pod string) (*nats.Conn, error) {
		return nats.Connect(srv.ClientURL(), append(agent.NATSOptionsJWT(ns, pod, func() string { return ti.token(t, ns, pod) }),
			nats.ReconnectWait(50*time.Millisecond))...)
	}
	var nc *nats.Conn
	require.Eventually(t, func() bool { // the responder subscribes when rekeyd runs
		nc, err = login("acme", "planner-1")
		return err == nil
	}, 10*time.Second, 50*time.Millisecond)
	defer nc.Close()
	a := startAgent(t, nc, nil, agent.Config{Tenant: "acme", Instance: "planner-1"})
	_, err = a.Get(ctx, "openai-key")
	require.NoError(t, err)
	cz, err := srv.Connz(&server.ConnzOptions{Username: true})
	require.NoError(t, err)
	var users []string
	for _, c := range cz.Conns {
		users = append(users, c.AuthorizedUser)
	}
	require.Contains(t, users, "agent-acme.planner-1")

	code, _ := api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/acme/revoke", testToken, "")
	require.Equal(t, http.StatusAccepted, code)
	require.Eventually(t, a.Revoked, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool {
		c, err := login("acme", "planner-2")
		if err == nil {
			c.Close()
		}
		return errors.Is(err, nats.ErrAuthorization)
	}, 10*time.Second, 50*time.Millisecond, "a revoked tenant's agent still logs in")
	g, err := login("globex", "worker-1")
	require.NoError(t, err)
	g.Close()

	code, _ = api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/acme/restore", testToken, "")
	require.Equal(t, http.StatusAccepted, code)
	require.Eventually(t, func() bool {
		c, err := login("acme", "planner-2")
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 15*time.Second, 50*time.Millisecond, "a restored tenant's agent is refused")
	require.Eventually(t, func() bool {
		_, err := a.Get(ctx, "openai-key")
		return err == nil
	}, 30*time.Second, 20*time.Millisecond)
}
