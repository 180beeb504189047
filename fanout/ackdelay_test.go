package fanout_test

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// TestAckDelaySizedToLiveAgents: an invalidation asks its tenant's agents
// to hold their acks back AckDelayPerAgent per live agent (capped at a
// quarter of ConfirmTimeout); a tenant without live agents, and a
// restore (never acked), carry no Rekey-Ack-Delay.
func TestAckDelaySizedToLiveAgents(t *testing.T) {
	bus := startBus(t)
	log := slog.New(slog.DiscardHandler)
	f, err := fanout.New(fanout.Config{Source: "test/fanout", ConfirmTimeout: 2 * time.Second, AckDelayPerAgent: 10 * time.Millisecond},
		fanout.Deps{Deps: orchestrator.Deps{Bus: bus, Audit: orchestrator.NewAuditor(bus, "test", log), Metrics: orchestrator.NewMetrics(), Log: log}})
	require.NoError(t, err)
	run(t, f)
	require.Eventually(t, f.Started, 5*time.Second, 10*time.Millisecond)

	agents := map[string]int{"acme": 20, "globex": 80, "initech": 0}
	for tenant, n := range agents {
		for i := range n {
			heartbeat(t, bus, tenant, fmt.Sprintf("a%d", i))
		}
	}
	require.Eventually(t, func() bool {
		return len(f.Acks().Live("acme", time.Now())) == 20 && len(f.Acks().Live("globex", time.Now())) == 80
	}, 5*time.Second, 10*time.Millisecond)

	sub, err := bus.NC.SubscribeSync("rekey.invalidate.>")
	require.NoError(t, err)
	now := time.Now().UTC()
	for tenant, want := range map[string]string{"acme": "200", "globex": "500", "initech": ""} {
		publish(t, bus, tenant, schemas.KindRotationCompleted, schemas.TypeRotationCompleted, tenant+"/k", schemas.RotationCompleted{
			Tenant: tenant, Secret: "k", Backend: "local", Version: "2", RequestID: "req-" + tenant, StartedAt: now, CompletedAt: now,
		})
		m, inv := next(t, sub)
		require.Equal(t, tenant, inv.Tenant)
		require.Equal(t, want, m.Header.Get(schemas.HeaderAckDelay), "tenant %s (%d live agents)", tenant, agents[tenant])
	}
	publish(t, bus, "acme", schemas.KindTenantRestored, schemas.TypeTenantRestored, "acme", schemas.TenantRestored{
		Tenant: "acme", RequestID: "res-1", RestoredAt: now,
	})
	m, inv := next(t, sub)
	require.Equal(t, schemas.InvalidationRestored, inv.Kind)
	require.Empty(t, m.Header.Get(schemas.HeaderAckDelay), "restores are not acked")
}
