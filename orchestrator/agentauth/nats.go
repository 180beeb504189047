package agentauth

import (
	"context"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// InstancePermissions are what one agent instance with its own identity
// may do on NATS: as orchestrator.AgentPermissions, but acks, use reports
// and heartbeats only under its own instance name, and replies only on
// its own inbox (schemas.InstanceInboxPrefix, which fanout/agent's
// NATSOptions use).
func InstancePermissions(tenant, instance string) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			schemas.UsedSubject(tenant, "*", instance),
			schemas.LeakTenantSubject(tenant),
			schemas.AckSubject(tenant, "*", instance),
			schemas.PresenceSubject(tenant, instance),
			schemas.FetchSubject(tenant, "*"),
			schemas.ResyncSubject(tenant, "*"),
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			schemas.InvalidateTenantSubject(tenant),
			schemas.InstanceInboxPrefix(tenant, instance) + ".>",
		}},
	}
}

// User is the embedded server's user of a verified identity.
func (id Identity) User() *server.User {
	return &server.User{Username: id.Username(), Permissions: InstancePermissions(id.Tenant, id.Instance)}
}

// Login verifies a login to the embedded server (it is an
// orchestrator.AgentLogin for orchestrator.NewLoginGate). The agent
// presents its workload identity token as the connection token
// (nats.Token or nats.TokenHandler; agent.NATSOptionsJWT does it); a login
// without a token is not this verifier's. Whether the tenant is cut off is
// the gate's decision.
func (v *Verifier) Login(opts *server.ClientOpts) (*server.User, string, bool) {
	if opts == nil || opts.Token == "" {
		return nil, "", false
	}
	ctx, cancel := context.WithTimeout(context.Background(), loginTimeout)
	defer cancel()
	id, err := v.Verify(ctx, opts.Token)
	if err != nil {
		v.log.Info("agent login refused", "component", "agentauth", "reason", err)
		return nil, "", false
	}
	v.log.Debug("agent logged in", "component", "agentauth", "tenant", id.Tenant, "instance", id.Instance, "tool", id.Tool, "sub", id.Subject)
	return id.User(), id.Tenant, true
}

var _ orchestrator.AgentLogin = (*Verifier)(nil).Login
