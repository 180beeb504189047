package orchestrator

import (
	"errors"
	"net"
	"net/url"
	"strings"
	"time"
)

// AgentAuthConfig is nats.agent_auth: how an agent's workload identity (a
// Kubernetes projected service-account token, or any JWT of a configured
// issuer) is verified, and which of its claims name the agent's tenant,
// instance and tool. orchestrator/agentauth implements it.
type AgentAuthConfig struct {
	// Issuer is the exact "iss" a token must carry.
	Issuer string `yaml:"issuer"`
	// Audiences: a token's "aud" must hold at least one of them.
	Audiences []string `yaml:"audiences"`
	// JWKSURL is where the issuer's public keys are read (https, or http
	// to a loopback address). Exactly one of JWKSURL and PublicKeysFile.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSCAFile, if set, is the PEM CA bundle that JWKSURL's certificate
	// must chain to (the cluster's CA for a Kubernetes API server).
	JWKSCAFile string `yaml:"jwks_ca_file"`
	// JWKSRefreshMin is the least time between two reads of JWKSURL
	// caused by a token whose key id is unknown (default 30s).
	JWKSRefreshMin time.Duration `yaml:"jwks_refresh_min"`
	// PublicKeysFile holds the issuer's public keys: PEM public keys
	// (PKIX "PUBLIC KEY" blocks) or a JWKS JSON document (for Kubernetes:
	// `kubectl get --raw /openid/v1/jwks`). Read once at start.
	PublicKeysFile string `yaml:"public_keys_file"`
	// Claims name the claims that carry tenant, instance and tool.
	Claims AgentClaimsConfig `yaml:"claims"`
	// Leeway is the clock skew allowed on exp, nbf and iat (default 30s).
	Leeway time.Duration `yaml:"leeway"`
	// CalloutIssuerSeedFile, with an external NATS (nats.url), holds the
	// account nkey seed (SA...) that signs rekeyd's auth callout answers;
	// its public key is auth_callout's issuer (`rekeyctl nats-config`).
	// Required with nats.url, refused without.
	CalloutIssuerSeedFile string `yaml:"callout_issuer_seed_file"`
}

// AgentClaimsConfig are claim paths: dot-separated names into the token's
// JSON claims, where a name may itself hold dots ("kubernetes.io.namespace"
// reads claims["kubernetes.io"]["namespace"]; the longest name present
// wins).
type AgentClaimsConfig struct {
	// Tenant defaults to kubernetes.io.namespace.
	Tenant string `yaml:"tenant"`
	// Instance defaults to kubernetes.io.pod.name.
	Instance string `yaml:"instance"`
	// Tool is optional (e.g. kubernetes.io.serviceaccount.name).
	Tool string `yaml:"tool"`
}

// Defaults of nats.agent_auth.
const (
	DefaultAgentAuthLeeway     = 30 * time.Second
	DefaultJWKSRefreshMin      = 30 * time.Second
	DefaultAgentTenantClaim    = "kubernetes.io.namespace"
	DefaultAgentInstanceClaim  = "kubernetes.io.pod.name"
	maxAgentAuthLeeway         = 5 * time.Minute
	maxAgentAuthJWKSRefreshMin = time.Hour
)

// WithDefaults returns c with every unset default filled in.
func (c AgentAuthConfig) WithDefaults() AgentAuthConfig {
	if c.Leeway == 0 {
		c.Leeway = DefaultAgentAuthLeeway
	}
	if c.JWKSRefreshMin == 0 {
		c.JWKSRefreshMin = DefaultJWKSRefreshMin
	}
	if c.Claims.Tenant == "" {
		c.Claims.Tenant = DefaultAgentTenantClaim
	}
	if c.Claims.Instance == "" {
		c.Claims.Instance = DefaultAgentInstanceClaim
	}
	return c
}

// Validate checks the section; errors name their field under
// nats.agent_auth.
func (c *AgentAuthConfig) Validate() error {
	return c.validate("nats.agent_auth", c.CalloutIssuerSeedFile != "")
}

// validate checks the section; external says whether rekeyd uses an
// external NATS, on which agents log in through the auth callout.
func (c *AgentAuthConfig) validate(field string, external bool) error {
	var errs []error
	add := func(f, format string, args ...any) { errs = append(errs, fieldErr(field+"."+f, format, args...)) }
	if c.Issuer == "" {
		add("issuer", "must be set")
	}
	if len(c.Audiences) == 0 {
		add("audiences", "at least one audience is required")
	}
	for _, a := range c.Audiences {
		if strings.TrimSpace(a) == "" {
			add("audiences", "an audience is empty")
		}
	}
	switch {
	case c.JWKSURL == "" && c.PublicKeysFile == "":
		add("jwks_url", "one of jwks_url and public_keys_file must be set")
	case c.JWKSURL != "" && c.PublicKeysFile != "":
		add("public_keys_file", "set only one of jwks_url and public_keys_file")
	case c.JWKSURL != "":
		if err := checkJWKSURL(c.JWKSURL); err != nil {
			add("jwks_url", "%v", err)
		}
	}
	if c.JWKSCAFile != "" && c.JWKSURL == "" {
		add("jwks_ca_file", "is only used with jwks_url")
	}
	switch {
	case external && c.CalloutIssuerSeedFile == "":
		add("callout_issuer_seed_file", "must be set with nats.url: rekeyd answers the external NATS's auth callout with it")
	case !external && c.CalloutIssuerSeedFile != "":
		add("callout_issuer_seed_file", "is only used with nats.url (an external NATS)")
	}
	if c.Leeway < 0 || c.Leeway > maxAgentAuthLeeway {
		add("leeway", "%s must be between 0 and %s", c.Leeway, maxAgentAuthLeeway)
	}
	if c.JWKSRefreshMin < 0 || c.JWKSRefreshMin > maxAgentAuthJWKSRefreshMin {
		add("jwks_refresh_min", "%s must be between 0 and %s", c.JWKSRefreshMin, maxAgentAuthJWKSRefreshMin)
	}
	for name, path := range map[string]string{"claims.tenant": c.Claims.Tenant, "claims.instance": c.Claims.Instance, "claims.tool": c.Claims.Tool} {
		if path != "" && (strings.HasPrefix(path, ".") || strings.HasSuffix(path, ".") || strings.Contains(path, "..")) {
			add(name, "%q is not a claim path (names separated by single dots)", path)
		}
	}
	return errors.Join(errs...)
}

// CheckJWKSURL is checkJWKSURL, for the other configurations that name a
// JWKS (triggers.siem's entra_id).
func CheckJWKSURL(raw string) error { return checkJWKSURL(raw) }

// checkJWKSURL accepts https URLs, and http only to a loopback address
// (keys read in clear text could be replaced on the way).
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("must be an absolute URL such as https://issuer.example/keys")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			return nil
		}
		return errors.New("http is allowed only to a loopback address; use https")
	default:
		return errors.New("must be an https URL")
	}
}
