package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/schemas"
)

// TestConfirmedInvalidation: fanout reports, per invalidation, how many
// live agents acked and which did not; an agent that left is not waited for.
func TestConfirmedInvalidation(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Fanout.ConfirmTimeout = time.Second
	d := start(t, cfg, daemonOpts())
	ctx := context.Background()
	for i := 1; i < 3; i++ {
		newAgent(t, d, "acme", fmt.Sprintf("acme-%d", i), nil)
	}
	nc, err := nats.Connect(d.NATSURL(), append(d.AgentNATSOptions("acme"), nats.Name("acme-0"))...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	startAgent(t, nc, nil, agent.Config{Tenant: "acme", Instance: "acme-0", Tool: "planner"}) // reports its tool
	newAgent(t, d, "globex", "globex-0", nil)                                                 // another tenant: not counted
	// A live agent that never acks (it heartbeats, but is stuck).
	ghost := func(leaving bool) {
		ev, err := schemas.NewEvent("test", schemas.TypeAgentPresence, "acme", "acme", schemas.AgentPresence{
			Tenant: "acme", Agent: "ghost", StartedAt: time.Now(), Interval: 10 * time.Second, Leaving: leaving,
		})
		require.NoError(t, err)
		b, _ := ev.Encode()
		require.NoError(t, d.Bus().NC.Publish(schemas.PresenceSubject("acme", "ghost"), b))
		require.NoError(t, d.Bus().NC.Flush())
	}
	ghost(false)
	confirmed, unsub := subscribeEvents(t, d, "acme", schemas.KindInvalidationConfirmed)
	defer unsub()
	live := func(want ...string) { // presence reaches fanout
		t.Helper()
		require.Eventually(t, func() bool {
			return slices.Equal(want, d.Fanout().Acks().Live("acme", time.Now()))
		}, 10*time.Second, 10*time.Millisecond, "live agents of acme: want %v, have %v", want, d.Fanout().Acks().Live("acme", time.Now()))
	}
	live("acme-0", "acme-1", "acme-2", "ghost")

	next := func(requestID string) schemas.InvalidationConfirmed {
		deadline := time.After(10 * time.Second)
		for {
			select {
			case ev := <-confirmed:
				var c schemas.InvalidationConfirmed
				require.NoError(t, ev.DecodeData(schemas.TypeInvalidationConfirmed, &c))
				if c.RequestID == requestID {
					return c
				}
			case <-deadline:
				t.Fatalf("no invalidation_confirmed for %s", requestID)
			}
		}
	}
	id := rotate(t, d, "acme", "openai-key")
	c := next(id)
	require.Equal(t, 4, c.LiveAgents)
	require.Equal(t, 3, c.Acked)
	require.Equal(t, []string{"ghost"}, c.Missing)
	require.False(t, c.Complete)

	ghost(true) // it leaves: no longer waited for
	live("acme-0", "acme-1", "acme-2")
	id = rotate(t, d, "acme", "billing-db")
	c = next(id)
	require.Equal(t, 3, c.LiveAgents)
	require.Equal(t, 3, c.Acked)
	require.True(t, c.Complete)
	require.Positive(t, c.LastAckMS)
	require.Less(t, c.LastAckMS, 1000.0)

	// The status of the secret names the agents that confirmed.
	code, st := api(t, d.HTTPAddr(), http.MethodGet, "/v1/tenants/acme/secrets/billing-db", testToken, "")
	require.Equal(t, http.StatusOK, code)
	inv := st["invalidation"].(map[string]any)
	require.Equal(t, id, inv["request_id"])
	require.EqualValues(t, 3, inv["live_agents"])
	require.ElementsMatch(t, []any{"acme-0", "acme-1", "acme-2"}, inv["acked"])
	require.Empty(t, inv["missing"])

	resp, err := http.Get("http://" + d.HTTPAddr() + "/metrics")
	require.NoError(t, err)
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Regexp(t, `rekey_invalidation_latency_seconds_count [1-9]`, string(m))
	_ = ctx

	// Every agent's ack is in the audit trail, named by its instance, in
	// a record of the invalidation's version, already when the
	// confirmation is out.
	acked := map[string]bool{}
	for _, r := range auditRecords(t, d, "acme") {
		if r.Action == "invalidation.acks" && r.RequestID == id && r.Secret == "billing-db" && r.Detail["version"] != "" {
			for _, a := range r.Acks {
				require.False(t, a.DroppedAt.IsZero())
				acked[a.Agent] = a.Tool == map[string]string{"acme-0": "planner"}[a.Agent]
			}
		}
	}
	require.Equal(t, map[string]bool{"acme-0": true, "acme-1": true, "acme-2": true}, acked, "acks audited (with the tool) before the confirmation")
}

// TestResyncAfterNATSRestart: the embedded NATS server restarts in the
// middle of a rotation storm; afterwards no agent serves an old version.
func TestResyncAfterNATSRestart(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	ctx := context.Background()
	secrets := []string{"openai-key", "billing-db"}
	var agents []*agent.Agent
	for i := 0; i < 8; i++ {
		a := newAgent(t, d, "acme", fmt.Sprintf("acme-%d", i), nil)
		for _, s := range secrets {
			_, err := a.Get(ctx, s)
			require.NoError(t, err)
		}
		agents = append(agents, a)
	}

	// Agents keep reading through the storm.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var gets atomic.Int64
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				for _, s := range secrets {
					if _, err := a.Get(ctx, s); err == nil {
						gets.Add(1)
					}
				}
			}
		}()
	}

	// The storm: requests through the HTTP API for 3 s; NATS restarts at 1 s.
	restartErr := make(chan error, 1) // require only on the test's goroutine
	go func() {
		time.Sleep(time.Second)
		restartErr <- d.Embedded().Restart(300 * time.Millisecond)
	}()
	deadline := time.Now().Add(3 * time.Second)
	accepted := 0
	for time.Now().Before(deadline) {
		for _, s := range secrets {
			req, _ := http.NewRequest(http.MethodPost, "http://"+d.HTTPAddr()+"/v1/tenants/acme/secrets/"+s+"/rotate", strings.NewReader(""))
			req.Header.Set("Authorization", "Bearer "+testToken)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				if resp.StatusCode == http.StatusAccepted {
					accepted++
				}
				resp.Body.Close()
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, <-restartErr)
	require.Positive(t, accepted)

	// Every accepted request is handled...
	waitRotateDrained(t, d, 60*time.Second)
	close(stop)
	wg.Wait()

	// ...and every agent converges on the backend's current version.
	for _, s := range secrets {
		cur, err := d.Local().Current(ctx, handlers.SecretRef{Tenant: "acme", Secret: s, Backend: "local"})
		require.NoError(t, err)
		require.NotEqual(t, "1", cur.ID, "no rotation happened")
		for i, a := range agents {
			require.Eventually(t, func() bool {
				got, err := a.Get(ctx, s)
				return err == nil && got.Version == cur.ID
			}, 15*time.Second, 20*time.Millisecond, "agent %d serves an old version of %s (want %s)", i, s, cur.ID)
		}
	}
	t.Logf("%d requests accepted, %d Gets served during the storm", accepted, gets.Load())
}

// TestRevocationSurvivesAgentReconnect: a revoked tenant's agents stay
// closed across a NATS restart, until the tenant is restored.
func TestRevocationSurvivesAgentReconnect(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	ctx := context.Background()
	a := newAgent(t, d, "globex", "globex-0", nil)
	_, err := a.Get(ctx, "openai-key")
	require.NoError(t, err)
	code, _ := api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/globex/revoke", testToken, "")
	require.Equal(t, http.StatusAccepted, code)
	require.Eventually(t, a.Revoked, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { // the kill switch finished rotating globex's secrets
		for _, r := range auditRecords(t, d, "globex") {
			if r.Action == "revocation.complete" {
				return true
			}
		}
		return false
	}, 15*time.Second, 20*time.Millisecond)

	require.NoError(t, d.Embedded().Restart(200*time.Millisecond))
	// The revoked tenant's agent may not log in again (the kill switch
	// cut its bus access): for these 2 s nothing may open it.
	time.Sleep(2 * time.Second)
	_, err = a.Get(ctx, "openai-key")
	require.ErrorIs(t, err, agent.ErrRevoked)

	// A restore published while the agent is away is applied by its resync.
	require.NoError(t, d.Embedded().Restart(0))
	code, _ = api(t, d.HTTPAddr(), http.MethodPost, "/v1/tenants/globex/restore", testToken, "")
	require.Equal(t, http.StatusAccepted, code)
	require.Eventually(t, func() bool {
		_, err := a.Get(ctx, "openai-key")
		return err == nil
	}, 40*time.Second, 20*time.Millisecond)
}
