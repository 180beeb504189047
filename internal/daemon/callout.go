package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/agentauth"
)

// agentCallout answers an external NATS's auth callout: agents log in
// with their workload identity (nats.agent_auth) and get a user scoped
// to their tenant and instance. A tenant that is revoked, or whose state
// cannot be read, is refused. It connects as orchestrator.CalloutUser
// with the password in orchestrator.CalloutPasswordEnv.
type agentCallout struct {
	url     string
	cfg     orchestrator.NATSConfig
	pw      string
	v       *agentauth.Verifier
	tenants *orchestrator.Tenants
	log     *slog.Logger
}

func newAgentCallout(ctx context.Context, url string, cfg orchestrator.NATSConfig, v *agentauth.Verifier, bus *orchestrator.Bus, log *slog.Logger) (*agentCallout, error) {
	pw := os.Getenv(orchestrator.CalloutPasswordEnv)
	if pw == "" {
		return nil, fmt.Errorf("nats.agent_auth with nats.url: set %s, the password of NATS user %s (see `rekeyctl nats-config`)",
			orchestrator.CalloutPasswordEnv, orchestrator.CalloutUser)
	}
	tenants, err := orchestrator.OpenTenants(ctx, bus)
	if err != nil {
		return nil, err
	}
	return &agentCallout{url: url, cfg: cfg, pw: pw, v: v, tenants: tenants, log: log}, nil
}

// cut refuses the agents of a revoked tenant, and of one whose state
// cannot be read (fail closed).
func (c *agentCallout) cut(tenant string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	revoked, err := c.tenants.IsRevoked(ctx, tenant)
	return err != nil || revoked
}

// Run answers the callout until ctx ends.
func (c *agentCallout) Run(ctx context.Context) error {
	issuer, err := agentauth.LoadIssuer(c.cfg.AgentAuth.CalloutIssuerSeedFile)
	if err != nil {
		return fmt.Errorf("nats.agent_auth.callout_issuer_seed_file: %w", err)
	}
	bus, err := orchestrator.Connect(ctx, c.url, "rekeyd-callout", c.cfg, c.log, nats.UserInfo(orchestrator.CalloutUser, c.pw))
	if err != nil {
		return fmt.Errorf("auth callout: %w", err)
	}
	defer bus.Close()
	r, err := agentauth.NewResponder(bus.NC, c.v, issuer, agentauth.ResponderConfig{Cut: c.cut, Logger: c.log})
	if err != nil {
		return err
	}
	return r.Run(ctx)
}
