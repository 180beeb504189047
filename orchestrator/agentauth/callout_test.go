package agentauth_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/agentauth"
)

// calloutEnv is an external nats-server configured with the block
// `rekeyctl nats-config` prints for auth callout, and rekey's responder.
type calloutEnv struct {
	srv    *server.Server
	admin  *orchestrator.Bus
	issuer nkeys.KeyPair
	r      *agentauth.Responder
	mu     sync.Mutex
	cut    map[string]bool
}

func (e *calloutEnv) setCut(tenant string, cut bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cut[tenant] = cut
}

func (e *calloutEnv) isCut(tenant string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cut[tenant]
}

func startCallout(t *testing.T, iss *issuer) *calloutEnv {
	t.Helper()
	akp, err := nkeys.CreateAccount()
	require.NoError(t, err)
	apub, err := akp.PublicKey()
	require.NoError(t, err)
	e := &calloutEnv{issuer: akp, cut: map[string]bool{}}

	// The printed block, with every password from the environment.
	t.Setenv("REKEYD_NATS_PASSWORD", "admin-pw")
	for _, r := range orchestrator.Roles {
		t.Setenv(orchestrator.RolePasswordEnv(r), "role-pw-"+string(r))
	}
	t.Setenv(orchestrator.CalloutPasswordEnv, "callout-pw")
	conf := filepath.Join(t.TempDir(), "nats.conf")
	require.NoError(t, os.WriteFile(conf, []byte(orchestrator.NATSCalloutConfigBlock(testTenants, apub)), 0o600))
	opts, err := server.ProcessConfigFile(conf)
	require.NoError(t, err)
	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, true, true
	opts.JetStream, opts.StoreDir = true, t.TempDir()
	e.srv, err = server.NewServer(opts)
	require.NoError(t, err)
	go e.srv.Start()
	require.True(t, e.srv.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { e.srv.Shutdown(); e.srv.WaitForShutdown() })

	e.admin, err = orchestrator.Connect(context.Background(), e.srv.ClientURL(), "admin", orchestrator.NATSConfig{}, nil,
		nats.UserInfo(orchestrator.RekeydUser, "admin-pw"))
	require.NoError(t, err)
	t.Cleanup(e.admin.NC.Close)
	require.NoError(t, e.admin.EnsureStreams(context.Background()))

	nc, err := nats.Connect(e.srv.ClientURL(), nats.UserInfo(orchestrator.CalloutUser, "callout-pw"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	e.r, err = agentauth.NewResponder(nc, iss.verifier(t), akp, agentauth.ResponderConfig{Cut: e.isCut})
	require.NoError(t, err)
	testutil.Run(t, e.r)
	require.Eventually(t, func() bool { return e.srv.GlobalAccount().SubscriptionInterest(server.AuthCalloutSubject) },
		5*time.Second, 10*time.Millisecond)
	return e
}

// TestCalloutInstanceScoped: on an external nats-server with auth
// callout, an agent's workload identity gets a user of its instance only;
// refused tokens, a cut tenant, and a forged response are refused.
func TestCalloutInstanceScoped(t *testing.T) {
	iss := newIssuer(t)
	e := startCallout(t, iss)
	var v violations
	nc, err := connectAgent(e.srv.ClientURL(), "acme", "planner-1", static(rsaToken(t, "acme", "planner-1")), &v)
	require.NoError(t, err)
	defer nc.Close()
	requireInstanceScoped(t, e.admin, nc, &v)

	cz, err := e.srv.Connz(&server.ConnzOptions{Username: true})
	require.NoError(t, err)
	var users []string
	for _, c := range cz.Conns {
		users = append(users, c.AuthorizedUser)
	}
	require.Contains(t, users, "agent-acme.planner-1")

	expired := k8sClaims("acme", "p1")
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	for name, tok := range map[string]string{
		"expired":   sign(t, jose.RS256, rsaKey, "rsa-1", expired),
		"wrong aud": sign(t, jose.RS256, rsaKey, "rsa-1", func() map[string]any { c := k8sClaims("acme", "p1"); c["aud"] = "x"; return c }()),
		"no token":  "",
	} {
		_, err := connectAgent(e.srv.ClientURL(), "acme", "p1", static(tok), nil)
		require.ErrorIs(t, err, nats.ErrAuthorization, name)
	}
	// A role user's password is not a way in for an agent's token, nor
	// the callout user's.
	_, err = nats.Connect(e.srv.ClientURL(), nats.UserInfo(orchestrator.CalloutUser, "wrong"))
	require.Error(t, err)

	e.setCut("acme", true)
	_, err = connectAgent(e.srv.ClientURL(), "acme", "planner-1", static(rsaToken(t, "acme", "planner-1")), nil)
	require.ErrorIs(t, err, nats.ErrAuthorization)
	g, err := connectAgent(e.srv.ClientURL(), "globex", "w1", static(rsaToken(t, "globex", "w1")), nil)
	require.NoError(t, err)
	g.Close()
}

// TestCalloutUserExpiresWithToken: the user granted expires with the
// token, and the server closes the connection then.
func TestCalloutUserExpiresWithToken(t *testing.T) {
	iss := newIssuer(t)
	e := startCallout(t, iss)
	c := k8sClaims("acme", "p1")
	c["exp"] = time.Now().Add(2 * time.Second).Unix()
	closed := make(chan struct{})
	opts := append(agent.NATSOptionsJWT("acme", "p1", static(sign(t, jose.RS256, rsaKey, "rsa-1", c))),
		nats.NoReconnect(), nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	nc, err := nats.Connect(e.srv.ClientURL(), opts...)
	require.NoError(t, err)
	defer nc.Close()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection outlived its token")
	}
}

// TestCalloutResponseSigned: the responder's answers are signed by the
// issuer and addressed to the requesting server and user; a request that
// is not a server-signed authorization request gets no answer.
func TestCalloutResponseSigned(t *testing.T) {
	iss := newIssuer(t)
	akp, err := nkeys.CreateAccount()
	require.NoError(t, err)
	apub, _ := akp.PublicKey()
	r, err := agentauth.NewResponder(nil, iss.verifier(t), akp, agentauth.ResponderConfig{})
	require.NoError(t, err)

	skp, err := nkeys.CreateServer()
	require.NoError(t, err)
	spub, _ := skp.PublicKey()
	ukp, err := nkeys.CreateUser()
	require.NoError(t, err)
	upub, _ := ukp.PublicKey()
	req := jwt.NewAuthorizationRequestClaims(apub)
	req.Audience = "nats-authorization-request"
	req.UserNkey = upub
	req.Server = jwt.ServerID{Name: "n1", ID: spub}
	req.ConnectOptions.Token = rsaToken(t, "acme", "p1")
	enc, err := req.Encode(skp)
	require.NoError(t, err)

	out, err := r.Respond(context.Background(), []byte(enc))
	require.NoError(t, err)
	resp, err := jwt.DecodeAuthorizationResponseClaims(string(out))
	require.NoError(t, err)
	require.Equal(t, apub, resp.Issuer)
	require.Equal(t, spub, resp.Audience)
	require.Equal(t, upub, resp.Subject)
	require.Empty(t, resp.Error)
	uc, err := jwt.DecodeUserClaims(resp.Jwt)
	require.NoError(t, err)
	require.Equal(t, "agent-acme.p1", uc.Name)
	require.Equal(t, apub, uc.Issuer)
	require.Contains(t, uc.Pub.Allow, "rekey.ack.acme.*.p1")
	require.NotContains(t, uc.Pub.Allow, "rekey.ack.acme.*.*")

	// A refused token: an error response, no user.
	req.ConnectOptions.Token = rsaToken(t, "initech", "p1")
	enc, err = req.Encode(skp)
	require.NoError(t, err)
	out, err = r.Respond(context.Background(), []byte(enc))
	require.NoError(t, err)
	resp, err = jwt.DecodeAuthorizationResponseClaims(string(out))
	require.NoError(t, err)
	require.Contains(t, resp.Error, "not a configured tenant")
	require.Empty(t, resp.Jwt)

	// Not a server's request (signed by a user key), or garbage.
	forged, err := req.Encode(ukp)
	if err == nil {
		_, err = r.Respond(context.Background(), []byte(forged))
		require.Error(t, err)
	}
	_, err = r.Respond(context.Background(), []byte("garbage"))
	require.Error(t, err)
}

// TestCalloutReplyInjection: an authorization request can come only from
// nats-server: in the printed block no client may publish on the callout
// subject (rekeyd's admin user included). Behind that, the responder
// answers only the server's own inboxes: on a server without that
// restriction, a well-formed, signed request for a valid agent token that
// names a bucket, an invalidation subject or another tenant's inbox as
// reply gets no answer there, and nothing is stored.
func TestCalloutReplyInjection(t *testing.T) {
	iss := newIssuer(t)
	e := startCallout(t, iss)
	apub, _ := e.issuer.PublicKey()
	skp, err := nkeys.CreateServer()
	require.NoError(t, err)
	spub, _ := skp.PublicKey()
	ukp, err := nkeys.CreateUser()
	require.NoError(t, err)
	upub, _ := ukp.PublicKey()
	req := jwt.NewAuthorizationRequestClaims(apub)
	req.Audience = "nats-authorization-request"
	req.UserNkey = upub
	req.Server = jwt.ServerID{Name: "n1", ID: spub}
	req.ConnectOptions.Token = rsaToken(t, "acme", "p1")
	enc, err := req.Encode(skp)
	require.NoError(t, err)

	// The printed block: no client may publish a request.
	require.NoError(t, e.admin.NC.PublishRequest(server.AuthCalloutSubject, "$KV.rekey_tenants.acme", []byte(enc)))
	require.NoError(t, e.admin.NC.Flush())
	require.Eventually(t, func() bool {
		err := e.admin.NC.LastError()
		return err != nil && strings.Contains(err.Error(), `Publish to "`+server.AuthCalloutSubject+`"`)
	}, 5*time.Second, 10*time.Millisecond)
	require.Zero(t, e.r.Refused(), "the request never reached the responder")

	// Behind it, the responder's own check.
	open := testutil.StartNATS(t, -1, t.TempDir())
	nc, err := nats.Connect(open.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	r, err := agentauth.NewResponder(nc, iss.verifier(t), e.issuer, agentauth.ResponderConfig{})
	require.NoError(t, err)
	testutil.Run(t, r)
	require.Eventually(t, func() bool { return open.GlobalAccount().SubscriptionInterest(server.AuthCalloutSubject) },
		5*time.Second, 10*time.Millisecond)
	attacker, err := nats.Connect(open.ClientURL())
	require.NoError(t, err)
	t.Cleanup(attacker.Close)
	bus, err := orchestrator.Connect(context.Background(), open.ClientURL(), "admin", orchestrator.NATSConfig{}, nil)
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	require.NoError(t, bus.EnsureStreams(context.Background()))
	targets := []string{"$KV.rekey_tenants.acme", "rekey.invalidate.acme._tenant", "_INBOX_globex.x", "rekey.audit.acme"}
	var arrived atomic.Int64
	for _, target := range targets {
		sub, err := attacker.Subscribe(target, func(*nats.Msg) { arrived.Add(1) })
		require.NoError(t, err)
		defer func() { _ = sub.Unsubscribe() }()
	}
	require.NoError(t, attacker.Flush())
	before := streamStates(t, bus)
	for _, target := range targets {
		require.NoError(t, attacker.PublishRequest(server.AuthCalloutSubject, target, []byte(enc)))
	}
	require.NoError(t, attacker.Flush())
	require.Eventually(t, func() bool { return r.Refused() == int64(len(targets)) }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	require.Zero(t, arrived.Load(), "a signed answer reached an injection target")
	require.Equal(t, before, streamStates(t, bus))
}
