// Package agentauth gives each agent its own NATS identity: the agent
// presents a workload identity token (a Kubernetes projected
// service-account token, or any JWT of a configured issuer) as its NATS
// connection token, and gets a user scoped to its tenant and its instance
// (InstancePermissions): it may ack, heartbeat and report use only under
// its own instance name.
//
// The Verifier checks the token (signature against the issuer's JWKS or
// public keys, iss, aud, exp/nbf/iat, algorithm allow-list) and reads the
// tenant, instance and tool from configured claims. Its Login plugs into
// the embedded server's orchestrator.LoginGate; the Responder answers
// nats-server's auth callout for an external NATS.
//
// Instances are NATS subject tokens (schemas.InstancePattern). A claim
// naming an instance with a dot (a Kubernetes pod name may hold dots) is
// refused, not mapped: a mapped name could be another pod's.
package agentauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Config is nats.agent_auth of rekey.yaml.
type Config = orchestrator.AgentAuthConfig

// ErrRefused is returned (wrapped, with the reason) for every token that is
// not accepted.
var ErrRefused = errors.New("agent identity refused")

// Algorithms are the only signature algorithms accepted; "none" and the
// HMAC ones (whose key would be the public key) are refused.
var Algorithms = []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA}

// maxTokenBytes bounds a presented token.
const maxTokenBytes = 16 << 10

// loginTimeout bounds a login's verification (a JWKS read included).
const loginTimeout = 3 * time.Second

// Identity is who a verified token says the agent is.
type Identity struct {
	Tenant   string
	Instance string
	Tool     string // empty unless claims.tool is configured
	Subject  string // the token's "sub"
	Expires  time.Time
}

// Username is the NATS user of the identity, under the tenant's agent
// user (so that the kill switch finds it: orchestrator.IsAgentOf).
func (id Identity) Username() string { return orchestrator.AgentUser(id.Tenant) + "." + id.Instance }

// Verifier verifies workload identity tokens.
type Verifier struct {
	cfg     Config
	tenants map[string]bool
	keys    keySource
	now     func() time.Time
	log     *slog.Logger
}

// Option tunes a Verifier.
type Option func(*Verifier)

// WithLogger sets the logger (refused logins are logged with their reason,
// never with the token).
func WithLogger(l *slog.Logger) Option { return func(v *Verifier) { v.log = l } }

// WithClock sets the clock tokens are checked against (tests).
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// New builds a Verifier for cfg accepting the given tenants. Static keys
// are read now; a JWKS URL at the first login.
func New(cfg Config, tenants []string, opts ...Option) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	v := &Verifier{cfg: cfg, tenants: make(map[string]bool, len(tenants)), now: time.Now, log: slog.New(slog.DiscardHandler)}
	for _, t := range tenants {
		v.tenants[t] = true
	}
	for _, o := range opts {
		o(v)
	}
	if cfg.PublicKeysFile != "" {
		b, err := os.ReadFile(cfg.PublicKeysFile)
		if err != nil {
			return nil, fmt.Errorf("nats.agent_auth.public_keys_file: %w", err)
		}
		keys, err := parsePublicKeys(b)
		if err != nil {
			return nil, fmt.Errorf("nats.agent_auth.public_keys_file %s: %w", cfg.PublicKeysFile, err)
		}
		v.keys = staticKeys{ks: newKeySet(keys)}
		return v, nil
	}
	j, err := newJWKSKeys(cfg.JWKSURL, cfg.JWKSCAFile, cfg.JWKSRefreshMin, v.log)
	if err != nil {
		return nil, fmt.Errorf("nats.agent_auth: %w", err)
	}
	v.keys = j
	return v, nil
}

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// Verify checks token and returns the identity it carries. Every refusal
// wraps ErrRefused; no error holds the token.
func (v *Verifier) Verify(ctx context.Context, token string) (Identity, error) {
	if len(token) > maxTokenBytes {
		return Identity{}, refused("token larger than %d bytes", maxTokenBytes)
	}
	tok, err := jwt.ParseSigned(token, Algorithms)
	if err != nil {
		return Identity{}, refused("not a JWT signed with RS256, ES256 or EdDSA")
	}
	if len(tok.Headers) != 1 {
		return Identity{}, refused("token must have one signature")
	}
	kid := tok.Headers[0].KeyID
	keys, err := v.keys.candidates(ctx, kid)
	if err != nil {
		return Identity{}, refused("%v", err)
	}
	var std jwt.Claims
	var raw map[string]any
	verified := false
	for _, k := range keys {
		if err := tok.Claims(k.Key, &std, &raw); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		if len(keys) == 0 {
			return Identity{}, refused("unknown key id %q", truncate(kid, 64))
		}
		return Identity{}, refused("signature does not verify with the issuer's keys")
	}
	if std.Expiry == nil {
		return Identity{}, refused("token has no exp")
	}
	err = std.ValidateWithLeeway(jwt.Expected{Issuer: v.cfg.Issuer, AnyAudience: v.cfg.Audiences, Time: v.now()}, v.cfg.Leeway)
	if err != nil {
		return Identity{}, refused("%v", err)
	}
	id, err := identityFromClaims(raw, v.cfg.Claims, v.tenants)
	if err != nil {
		return Identity{}, err
	}
	id.Subject = std.Subject
	id.Expires = std.Expiry.Time()
	return id, nil
}

// identityFromClaims reads tenant, instance and tool from a token's
// claims. The tenant must be one of tenants; the instance must match
// schemas.InstancePattern (a dot is refused with its own reason).
func identityFromClaims(claims map[string]any, paths orchestrator.AgentClaimsConfig, tenants map[string]bool) (Identity, error) {
	var id Identity
	tenant, err := claimString(claims, paths.Tenant, "tenant")
	if err != nil {
		return id, err
	}
	if err := schemas.ValidateID("tenant", tenant); err != nil {
		return id, refused("claim %s: %v", paths.Tenant, err)
	}
	if !tenants[tenant] {
		return id, refused("claim %s: tenant %q is not a configured tenant", paths.Tenant, tenant)
	}
	inst, err := claimString(claims, paths.Instance, "instance")
	if err != nil {
		return id, err
	}
	if containsDot(inst) {
		return id, refused("claim %s: instance %q holds a dot; instances are NATS subject tokens (%s), so pod names with dots are refused: name the pod without dots",
			paths.Instance, truncate(inst, 80), schemas.InstancePattern)
	}
	if err := schemas.ValidateInstance(inst); err != nil {
		return id, refused("claim %s: %v", paths.Instance, err)
	}
	id.Tenant, id.Instance = tenant, inst
	if paths.Tool != "" {
		tool, err := claimString(claims, paths.Tool, "tool")
		if err != nil {
			return id, err
		}
		if !validTool(tool) {
			return id, refused("claim %s: tool %q must be 1 to 253 of A-Z a-z 0-9 . _ -", paths.Tool, truncate(tool, 80))
		}
		id.Tool = tool
	}
	return id, nil
}

func claimString(claims map[string]any, path, what string) (string, error) {
	v, ok := lookupClaim(claims, path)
	if !ok {
		return "", refused("no %s claim %s", what, path)
	}
	s, ok := v.(string)
	if !ok {
		return "", refused("%s claim %s is not a string", what, path)
	}
	return s, nil
}

// lookupClaim reads a dot-separated claim path; a name may itself hold
// dots ("kubernetes.io"): the longest name present at each level wins.
func lookupClaim(m map[string]any, path string) (any, bool) {
	if v, ok := m[path]; ok {
		return v, true
	}
	for i := len(path) - 1; i > 0; i-- {
		if path[i] != '.' {
			continue
		}
		sub, ok := m[path[:i]].(map[string]any)
		if !ok {
			continue
		}
		if v, ok := lookupClaim(sub, path[i+1:]); ok {
			return v, true
		}
	}
	return nil, false
}

func containsDot(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			return true
		}
	}
	return false
}

func validTool(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
