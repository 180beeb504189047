package adversarial_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

// TestStolenPodAfterRevocation: an attacker holds a compromised acme pod:
// its live bus connection and its credentials. After acme is revoked the
// connection is closed by the server, a new login with the same
// credentials is refused, and what the pod sends while it tries gets
// nothing and changes nothing. Once acme is restored, the same pod's
// connection is let back in and fetches the versions rotated by the
// revocation, never the ones it held.
func TestStolenPodAfterRevocation(t *testing.T) {
	r := newRig(t)
	r.rotate("acme", "openai-key")
	pod := r.agentConn("acme")
	held := r.fetch(pod, "openai-key")

	status, body := r.call("POST", "/v1/tenants/acme/revoke", adminToken, `{"reason":"pod compromised"}`)
	require.Equal(t, http.StatusAccepted, status, body)
	require.Eventually(t, func() bool { return r.revoked("acme") }, 15*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return !pod.IsConnected() }, 15*time.Second, 10*time.Millisecond,
		"the revoked tenant's agent connection stays open")

	// A new login with the pod's credentials is refused.
	_, err := nats.Connect(r.d.NATSURL(), r.d.AgentNATSOptions("acme")[:1]...)
	require.Error(t, err)
	opts := append(r.d.AgentNATSOptions("acme"), nats.NoReconnect(), nats.RetryOnFailedConnect(false))
	_, err = nats.Connect(r.d.NATSURL(), opts...)
	require.ErrorContains(t, err, "Authorization Violation")

	// While cut off, what the pod sends is not delivered.
	before := r.quiet()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err = agent.NewNATSFetcher(pod.Conn, "attacker-1").Fetch(ctx, "acme", "openai-key")
	cancel()
	require.Error(t, err, "a revoked pod fetched a value")
	_ = pod.Publish(schemas.UsedSubject("acme", "openai-key", "attacker-1"), []byte(`{}`))
	_ = pod.Publish(schemas.AckSubject("acme", schemas.TenantToken, "attacker-1"), []byte(`{}`))
	time.Sleep(2500 * time.Millisecond) // past the kill switch's resync: still out
	require.False(t, pod.IsConnected(), "the revoked pod got back in before restore")
	require.Empty(t, r.changed(before, r.snapshot(), nil), "a cut-off pod changed stored state")

	// Restored: the pod's connection comes back by itself, and is served
	// the versions rotated by the revocation only.
	status, body = r.call("POST", "/v1/tenants/acme/restore", adminToken, `{"reason":"pod rebuilt"}`)
	require.Equal(t, http.StatusAccepted, status, body)
	require.Eventually(t, func() bool { return pod.IsConnected() }, 15*time.Second, 20*time.Millisecond)
	now := r.fetch(pod, "openai-key")
	require.NotEqual(t, held.Version, now.Version)
	require.NotEqual(t, string(held.Value), string(now.Value))
	require.Empty(t, r.scan())
}
