package orchestrator

import (
	"crypto/subtle"
	"strings"
	"sync"

	"github.com/nats-io/nats-server/v2/server"
)

// AgentLogin verifies a login that is not one of rekeyd's own users or a
// tenant-wide agent password (a workload identity token, for instance).
// It returns the user the client becomes (Username names the tenant's
// agent user prefix, AgentUser(tenant)+"."+instance, so that the kill
// switch finds it), the tenant, and whether the login is accepted.
type AgentLogin func(opts *server.ClientOpts) (user *server.User, tenant string, ok bool)

// LoginGate decides every login to the embedded server (nats-server's
// custom client authentication): rekeyd's role users and the admin with
// their derived passwords, and a tenant's agents, which may log in only
// while the tenant is not cut off by the kill switch. Nothing is reloaded
// to change who may log in, so a cut takes effect at the next login; live
// connections are closed by EmbeddedServer.DisconnectAgents.
//
// Every tenant starts cut off: nothing of a tenant is reachable before
// its state has been read (Open).
type LoginGate struct {
	service map[string]*server.User // rekeyd's users by name
	agents  map[string]agentUser    // tenant-wide agent users by name
	extra   AgentLogin

	mu  sync.RWMutex
	cut map[string]bool
}

type agentUser struct {
	user   *server.User
	tenant string
}

// NewLoginGate builds the gate of an embedded server for tenants, with
// passwords derived by auth. extra, if not nil, verifies other logins
// (per-agent identities).
func NewLoginGate(auth *NATSAuth, tenants []string, extra AgentLogin) *LoginGate {
	g := &LoginGate{service: map[string]*server.User{}, agents: map[string]agentUser{}, extra: extra, cut: map[string]bool{}}
	for _, u := range auth.ServiceUsers(tenants) {
		g.service[u.Username] = u
	}
	for _, t := range tenants {
		u := &server.User{Username: AgentUser(t), Password: auth.Password(AgentUser(t)), Permissions: AgentPermissions(t)}
		g.agents[u.Username] = agentUser{user: u, tenant: t}
		g.cut[t] = true
	}
	return g
}

// Check implements server.Authentication.
func (g *LoginGate) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	o := c.GetOpts()
	if o == nil {
		return false
	}
	if u, ok := g.service[o.Username]; ok {
		if !passwordMatch(o.Password, u.Password) {
			return false
		}
		c.RegisterUser(&server.User{Username: u.Username, Permissions: u.Permissions})
		return true
	}
	if a, ok := g.agents[o.Username]; ok {
		if !passwordMatch(o.Password, a.user.Password) || g.Cut(a.tenant) {
			return false
		}
		c.RegisterUser(&server.User{Username: a.user.Username, Permissions: a.user.Permissions})
		return true
	}
	if g.extra == nil {
		return false
	}
	u, tenant, ok := g.extra(o)
	if !ok || u == nil || g.Cut(tenant) || !strings.HasPrefix(u.Username, AgentUser(tenant)+".") {
		return false
	}
	c.RegisterUser(u)
	return true
}

func passwordMatch(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// SetCut lets a tenant's agents log in (false) or refuses them (true).
// An unknown tenant stays refused.
func (g *LoginGate) SetCut(tenant string, cut bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, known := g.cut[tenant]; known {
		g.cut[tenant] = cut
	}
}

// Cut reports whether tenant's agents are refused (unknown tenants are).
func (g *LoginGate) Cut(tenant string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	cut, known := g.cut[tenant]
	return cut || !known
}

// IsAgentOf reports whether a connection's user is one of tenant's agents
// (the tenant-wide user or a per-agent identity).
func IsAgentOf(user, tenant string) bool {
	return user == AgentUser(tenant) || strings.HasPrefix(user, AgentUser(tenant)+".")
}
