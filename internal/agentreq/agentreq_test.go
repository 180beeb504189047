package agentreq_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/agentreq"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// TestAllOfATenantsAgentsAtOnce: after a rotation every live agent of a
// tenant may ask at the same moment. With the responder busy, 10,000
// requests (fanout's default max_agents_per_tenant) wait in the tenant's
// buffers and are all answered; none is dropped to wait out the agent's
// fetch timeout. (With 512 per subscription, 1,024 were answered and
// the other 8,976 dropped.)
func TestAllOfATenantsAgentsAtOnce(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	release := make(chan struct{})
	var answered atomic.Int64
	s := &agentreq.Server{NC: nc, Name: "test server", Queue: "q", Subjects: []string{schemas.FetchSubject("acme", "*")},
		Log: slog.New(slog.DiscardHandler), Handle: func(_ context.Context, _ string, m *nats.Msg) {
			<-release
			answered.Add(1)
			_ = m.Respond([]byte("ok"))
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })

	agents, err := nats.Connect(srv.ClientURL(), nats.CustomInboxPrefix(schemas.AgentInboxPrefix("acme")))
	require.NoError(t, err)
	t.Cleanup(agents.Close)
	require.Eventually(t, func() bool { return srv.NumSubscriptions() >= 2 }, 5*time.Second, 10*time.Millisecond)

	const n = 10000
	replies := make(chan *nats.Msg, n)
	inbox := nats.NewInbox()
	inbox = schemas.AgentInboxPrefix("acme") + inbox[len("_INBOX"):]
	sub, err := agents.Subscribe(inbox+".*", func(m *nats.Msg) { replies <- m })
	require.NoError(t, err)
	require.NoError(t, sub.SetPendingLimits(-1, -1))
	for i := range n {
		require.NoError(t, agents.PublishRequest(schemas.FetchSubject("acme", "k"), inbox+"."+string(rune('a'+i%26)), []byte(`{"agent":"a"}`)))
	}
	require.NoError(t, agents.Flush())
	// Every request has reached the responder's connection before any
	// is answered: what its buffers could not hold is dropped by now.
	require.Eventually(t, func() bool { return nc.Stats().InMsgs >= n }, 10*time.Second, 10*time.Millisecond)
	close(release)
	for range n {
		select {
		case <-replies:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d requests answered", answered.Load(), n)
		}
	}
	require.EqualValues(t, n, answered.Load())
}
