package agent

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/rekey-dev/rekey/schemas"
)

// presenceLoop announces the agent on rekey.presence.<tenant> every
// HeartbeatInterval, so that rekey waits for this agent's acks and stops
// waiting once it is gone. It announces leaving when ctx ends.
func (a *Agent) presenceLoop(ctx context.Context) {
	a.publishPresence(false)
	every(ctx, a.cfg.HeartbeatInterval, func() { a.publishPresence(false) })
	a.publishPresence(true)
}

// every calls fn every interval, give or take 10% (jitter), until ctx
// ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTimer(jitter(interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
			t.Reset(jitter(interval))
		}
	}
}

// jitter returns d give or take 10%, at random. Agents started together
// (a deployment's rollout) would otherwise heartbeat and report uses in
// step, every interval a burst of one message per agent.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

func (a *Agent) publishPresence(leaving bool) {
	if a.nc.IsClosed() {
		return
	}
	ev, err := schemas.NewEvent(a.source, schemas.TypeAgentPresence, a.cfg.Tenant, a.cfg.Tenant, schemas.AgentPresence{
		Tenant: a.cfg.Tenant, Agent: a.cfg.Instance, Tool: a.cfg.Tool, StartedAt: a.startedAt,
		Interval: a.cfg.HeartbeatInterval, Leaving: leaving,
	})
	if err != nil {
		return
	}
	b, err := ev.Encode()
	if err != nil {
		return
	}
	if err := a.nc.Publish(schemas.PresenceSubject(a.cfg.Tenant, a.cfg.Instance), b); err != nil {
		a.log.Debug("presence not published", "error", err)
	}
}
