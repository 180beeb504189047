package agentauth_test

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// embeddedWithGate starts the embedded server of rekeyd with its login
// gate verifying workload identities, both tenants let in, and the
// streams created; it returns the gate, the server and an admin bus.
func embeddedWithGate(t *testing.T, iss *issuer) (*orchestrator.LoginGate, *orchestrator.EmbeddedServer, *orchestrator.Bus) {
	t.Helper()
	auth, err := orchestrator.LoadNATSAuth(t.TempDir())
	require.NoError(t, err)
	gate := orchestrator.NewLoginGate(auth, testTenants, iss.verifier(t).Login)
	for _, tn := range testTenants {
		gate.SetCut(tn, false)
	}
	emb, err := orchestrator.StartEmbedded("127.0.0.1:0", t.TempDir(), gate, nil)
	require.NoError(t, err)
	t.Cleanup(emb.Shutdown)
	admin, err := orchestrator.Connect(context.Background(), emb.ClientURL(), "admin", orchestrator.NATSConfig{}, nil,
		nats.UserInfo(orchestrator.RekeydUser, auth.Password(orchestrator.RekeydUser)))
	require.NoError(t, err)
	t.Cleanup(admin.NC.Close)
	require.NoError(t, admin.EnsureStreams(context.Background()))
	return gate, emb, admin
}

// violations collects the permission violations a connection was told.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrPermissionViolation) {
		v.mu.Lock()
		v.errs = append(v.errs, err.Error())
		v.mu.Unlock()
	}
}

func (v *violations) count() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.errs)
}

// connectAgent connects as an agent of tenant/instance presenting token.
func connectAgent(url, tenant, instance string, token func() string, v *violations) (*nats.Conn, error) {
	opts := append(agent.NATSOptionsJWT(tenant, instance, token), nats.Name(instance))
	if v != nil {
		opts = append(opts, nats.ErrorHandler(v.handler))
	}
	return nats.Connect(url, opts...)
}

func static(tok string) func() string { return func() string { return tok } }

// streamStates is every stream's message count and last sequence.
func streamStates(t *testing.T, admin *orchestrator.Bus) map[string][2]uint64 {
	t.Helper()
	out := map[string][2]uint64{}
	names := admin.JS.StreamNames(context.Background())
	for name := range names.Name() {
		s, err := admin.JS.Stream(context.Background(), name)
		require.NoError(t, err)
		info, err := s.Info(context.Background())
		require.NoError(t, err)
		out[name] = [2]uint64{info.State.Msgs, info.State.LastSeq}
	}
	return out
}

// requireInstanceScoped checks, from an agent connection of acme's
// instance planner-1, that it may do what an agent does under its own
// name and nothing under another instance's or tenant's: each refused
// attempt is reported by the server and reaches no subscriber and no
// stream.
func requireInstanceScoped(t *testing.T, admin *orchestrator.Bus, nc *nats.Conn, v *violations) {
	t.Helper()
	ctx := context.Background()
	seen := make(chan string, 64)
	sub, err := admin.NC.Subscribe("rekey.>", func(m *nats.Msg) { seen <- m.Subject })
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, admin.NC.Flush())

	// Allowed: its own instance's ack, use report and heartbeat; its
	// tenant's invalidations, live (resync goes through rekeyd's resync
	// server: agents get no JetStream API).
	invs, err := nc.SubscribeSync(schemas.InvalidateTenantSubject("acme"))
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	_, err = admin.JS.Publish(ctx, schemas.InvalidateSubject("acme", "openai-key"), []byte(`{"kind":"rotated"}`))
	require.NoError(t, err)
	m, err := invs.NextMsg(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, schemas.InvalidateSubject("acme", "openai-key"), m.Subject)

	before := streamStates(t, admin)
	require.NoError(t, nc.Publish(schemas.AckSubject("acme", "openai-key", "planner-1"), []byte("{}")))
	require.NoError(t, nc.Publish(schemas.PresenceSubject("acme", "planner-1"), []byte("{}")))
	require.NoError(t, nc.Flush())

	// Refused: the same under another instance of acme, and globex.
	refusedPubs := []string{
		schemas.AckSubject("acme", "openai-key", "planner-2"),
		schemas.UsedSubject("acme", "openai-key", "planner-2"),
		schemas.PresenceSubject("acme", "planner-2"),
		schemas.AckSubject("globex", "openai-key", "planner-1"),
		schemas.InvalidateSubject("acme", "openai-key"),
		"$KV.rekey_tenants.acme",
		"$JS.API.DIRECT.GET." + schemas.StreamInvalidate + "." + schemas.InvalidateSubject("globex", "openai-key"),
		"$JS.API.DIRECT.GET." + schemas.StreamInvalidate + "." + schemas.InvalidateSubject("acme", "openai-key"),
		schemas.ResyncSubject("globex", schemas.TenantToken),
	}
	for _, s := range refusedPubs {
		require.NoError(t, nc.Publish(s, []byte("{}")))
	}
	refusedSubs := []string{
		schemas.InstanceInboxPrefix("acme", "planner-2") + ".>",
		schemas.AgentInboxPrefix("acme") + ".>",
		schemas.InvalidateTenantSubject("globex"),
		"rekey.ack.acme.>",
	}
	for _, s := range refusedSubs {
		_, err := nc.SubscribeSync(s)
		require.NoError(t, err)
	}
	require.NoError(t, nc.Flush())
	require.Eventually(t, func() bool { return v.count() >= len(refusedPubs)+len(refusedSubs) }, 5*time.Second, 10*time.Millisecond,
		"every refused publish and subscribe is reported")

	// Only the allowed messages were delivered; no stream changed.
	require.NoError(t, admin.NC.Flush())
	time.Sleep(200 * time.Millisecond)
	var subjects []string
	for len(seen) > 0 {
		subjects = append(subjects, <-seen)
	}
	sort.Strings(subjects)
	require.Equal(t, []string{
		schemas.AckSubject("acme", "openai-key", "planner-1"),
		schemas.InvalidateSubject("acme", "openai-key"),
		schemas.PresenceSubject("acme", "planner-1"),
	}, subjects)
	require.Equal(t, before, streamStates(t, admin), "a refused publish changed a stream")
}

// TestLoginInstanceScoped: an agent that logs in to the embedded server
// with its workload identity gets only its instance's subjects.
func TestLoginInstanceScoped(t *testing.T) {
	iss := newIssuer(t)
	gate, emb, admin := embeddedWithGate(t, iss)
	var v violations
	nc, err := connectAgent(emb.ClientURL(), "acme", "planner-1", static(rsaToken(t, "acme", "planner-1")), &v)
	require.NoError(t, err)
	defer nc.Close()
	requireInstanceScoped(t, admin, nc, &v)

	// The kill switch finds the connection by its user.
	n, err := emb.DisconnectUsers(func(u string) bool { return orchestrator.IsAgentOf(u, "acme") })
	require.NoError(t, err)
	require.Equal(t, 1, n)

	// A cut tenant's agents are refused; the other tenant's are not.
	gate.SetCut("acme", true)
	_, err = connectAgent(emb.ClientURL(), "acme", "planner-1", static(rsaToken(t, "acme", "planner-1")), nil)
	require.ErrorIs(t, err, nats.ErrAuthorization)
	g, err := connectAgent(emb.ClientURL(), "globex", "worker-1", static(sign(t, jose.ES256, ecKey, "ec-1", k8sClaims("globex", "worker-1"))), nil)
	require.NoError(t, err)
	g.Close()
}

// TestLoginRefusedTokens: the server refuses a login whose token is not
// accepted (the verifier's table test covers every reason).
func TestLoginRefusedTokens(t *testing.T) {
	iss := newIssuer(t)
	_, emb, _ := embeddedWithGate(t, iss)
	expired := k8sClaims("acme", "p1")
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	for name, tok := range map[string]string{
		"expired":        sign(t, jose.RS256, rsaKey, "rsa-1", expired),
		"unknown tenant": rsaToken(t, "initech", "p1"),
		"other key":      sign(t, jose.RS256, rsaBad, "rsa-1", k8sClaims("acme", "p1")),
		"empty":          "",
	} {
		_, err := connectAgent(emb.ClientURL(), "acme", "p1", static(tok), nil)
		require.ErrorIs(t, err, nats.ErrAuthorization, name)
	}
}
