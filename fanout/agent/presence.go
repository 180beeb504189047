package agent

import (
	"context"
	"time"

	"github.com/rekey-dev/rekey/schemas"
)

// presenceLoop announces the agent on rekey.presence.<tenant> every
// HeartbeatInterval, so that rekey waits for this agent's acks and stops
// waiting once it is gone. It announces leaving when ctx ends.
func (a *Agent) presenceLoop(ctx context.Context) {
	a.publishPresence(false)
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			a.publishPresence(true)
			return
		case <-t.C:
			a.publishPresence(false)
		}
	}
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
	if err := a.nc.Publish(schemas.PresenceSubject(a.cfg.Tenant), b); err != nil {
		a.log.Debug("presence not published", "error", err)
	}
}
