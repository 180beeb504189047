package orchestrator

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/schemas"
)

// RekeydUser is the NATS admin user: every subject. rekeyd uses it only
// to create streams and buckets at start (and tests and rekeyctl to look
// at everything); its components run on the users of their Role.
const RekeydUser = "rekeyd"

// NATSSecretFile holds, under the data dir, the key from which the
// embedded server's passwords are derived.
const NATSSecretFile = "nats.secret"

// AgentUser is the NATS user shared by a tenant's agents.
func AgentUser(tenant string) string { return "agent-" + tenant }

// AgentPermissions are what a tenant's agents may do on NATS, and nothing
// more: receive the tenant's invalidations (live, and from the INVALIDATE
// stream), publish acks, use reports, leak reports and presence for the tenant, ask
// rekeyd for the last invalidation of the tenant's subjects (resync), and
// fetch the tenant's values from the local backend. Agents get no
// JetStream API subject at all: JetStream replies to whatever reply
// subject a request names, with the server's rights, so a direct get (or
// a publish acknowledgement) could be aimed at any stream or bucket.
// Replies come to the tenant's own inbox prefix
// (schemas.AgentInboxPrefix), which agents must use.
//
// This is the tenant-wide login (one derived password per tenant): its
// agents may publish under any instance name of the tenant. A per-agent
// identity (auth callout) gets InstancePermissions instead.
func AgentPermissions(tenant string) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			schemas.UsedSubject(tenant, "*", "*"),
			schemas.LeakTenantSubject(tenant),
			schemas.AckSubject(tenant, "*", "*"),
			schemas.PresenceSubject(tenant, "*"),
			schemas.FetchSubject(tenant, "*"),
			schemas.ResyncSubject(tenant, "*"),
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			schemas.InvalidateTenantSubject(tenant),
			schemas.AgentInboxPrefix(tenant) + ".>",
		}},
	}
}

// NATSAuth derives the embedded server's passwords from a secret kept in
// the data dir, so that they survive restarts without being stored.
type NATSAuth struct {
	secret []byte
}

// LoadNATSAuth reads <dataDir>/nats.secret, creating it (mode 0600) with
// 32 random bytes on first use.
func LoadNATSAuth(dataDir string) (*NATSAuth, error) {
	path := filepath.Join(dataDir, NATSSecretFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return nil, fmt.Errorf("nats secret: %w", err)
		}
		var k [32]byte
		if _, err := rand.Read(k[:]); err != nil {
			return nil, fmt.Errorf("nats secret: %w", err)
		}
		enc := base64.StdEncoding.EncodeToString(k[:])
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			return LoadNATSAuth(dataDir) // another process made it first
		}
		if err != nil {
			return nil, fmt.Errorf("nats secret: %w", err)
		}
		_, werr := f.WriteString(enc + "\n")
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return nil, fmt.Errorf("nats secret: %w", werr)
		}
		return &NATSAuth{secret: k[:]}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("nats secret: %w", err)
	}
	return parseNATSSecret(path, b)
}

// ReadNATSAuth reads <dataDir>/nats.secret (rekeyctl uses it to connect to
// an embedded server as rekeyd); it never creates it.
func ReadNATSAuth(dataDir string) (*NATSAuth, error) {
	path := filepath.Join(dataDir, NATSSecretFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nats secret: %w", err)
	}
	return parseNATSSecret(path, b)
}

func parseNATSSecret(path string, b []byte) (*NATSAuth, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) < 32 {
		return nil, fmt.Errorf("nats secret %s: not 32 base64 bytes", path)
	}
	return &NATSAuth{secret: k}, nil
}

// Password returns the password of a NATS user.
func (a *NATSAuth) Password(user string) string {
	m := hmac.New(sha256.New, a.secret)
	m.Write([]byte("rekey-nats-user:" + user))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// RoleOptions are the connection options of a role on the embedded
// server: its user and its inbox prefix.
func (a *NATSAuth) RoleOptions(r Role) []nats.Option {
	return []nats.Option{nats.UserInfo(RoleUser(r), a.Password(RoleUser(r))), nats.CustomInboxPrefix(RoleInboxPrefix(r))}
}

// ServiceUsers returns rekeyd's own users: the admin (every subject) and
// one user per Role with RolePermissions.
func (a *NATSAuth) ServiceUsers(tenants []string) []*server.User {
	users := []*server.User{{Username: RekeydUser, Password: a.Password(RekeydUser)}}
	for _, r := range Roles {
		users = append(users, &server.User{Username: RoleUser(r), Password: a.Password(RoleUser(r)), Permissions: RolePermissions(r, tenants)})
	}
	return users
}

// NATSConfigBlock prints, in nats-server configuration syntax, the users
// and permissions rekey needs on an external NATS: rekeyd's user and one
// user per tenant for its agents. Passwords are read from environment
// variables named in the block, so the block holds no secret.
func NATSConfigBlock(tenants []string) string {
	var b strings.Builder
	b.WriteString("# rekey users for nats-server.conf; set the environment variables before starting nats-server.\n")
	b.WriteString("# JetStream must be enabled for this account.\n")
	b.WriteString("# rekeyd connects once per role, each user with only what the role needs;\n")
	b.WriteString("# the admin user creates streams and buckets at start (and serves rekeyctl).\n")
	b.WriteString("authorization {\n  users = [\n")
	serviceUsersBlock(&b, tenants)
	for _, t := range tenants {
		fmt.Fprintf(&b, "    { user: %q, password: $%s,\n", AgentUser(t), envName(t))
		permissionBlock(&b, AgentPermissions(t))
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

// serviceUsersBlock prints rekeyd's users: the admin and one per Role.
func serviceUsersBlock(b *strings.Builder, tenants []string) {
	fmt.Fprintf(b, "    { user: %q, password: $REKEYD_NATS_PASSWORD }\n", RekeydUser)
	for _, r := range Roles {
		fmt.Fprintf(b, "    { user: %q, password: $%s,\n", RoleUser(r), RolePasswordEnv(r))
		permissionBlock(b, RolePermissions(r, tenants))
	}
}

func envName(tenant string) string {
	return "REKEY_AGENT_" + strings.ToUpper(strings.NewReplacer("-", "_").Replace(tenant)) + "_NATS_PASSWORD"
}

func quoteList(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
