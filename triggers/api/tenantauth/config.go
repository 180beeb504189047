package tenantauth

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Section is the configuration section this package reads.
const Section = "triggers.selfservice"

// Defaults of Config.
const (
	DefaultMinInterval    = time.Minute
	DefaultIdempotencyTTL = 24 * time.Hour
	DefaultTenantClaim    = "tenant"
)

// JWT algorithms a Config may accept (exactly one).
const (
	AlgHS256 = "HS256"
	AlgRS256 = "RS256"
	AlgES256 = "ES256"
)

// Config is the triggers.selfservice section of rekey.yaml.
type Config struct {
	// Enabled: false turns tenant tokens off while keeping the section
	// (default true; rekeyd reads it through orchestrator.Config.TriggerOn).
	Enabled *bool `yaml:"enabled"`
	// Tokens are opaque tenant tokens, stored as their SHA-256.
	Tokens []TokenConfig `yaml:"tokens"`
	// JWT, when set, accepts JWTs that carry the tenant in a claim.
	JWT *JWTConfig `yaml:"jwt"`
	// MinInterval is the least time between two rotations of one secret
	// requested with tenant tokens (default 1m; 0 disables). Sooner: 429
	// with Retry-After. Admin calls are not limited.
	MinInterval time.Duration `yaml:"min_interval"`
	// IdempotencyTTL is how long the HTTP API replays the first answer to
	// an Idempotency-Key (default 24h), for admin and tenant calls alike.
	IdempotencyTTL time.Duration `yaml:"idempotency_ttl"`
}

// TokenConfig is one opaque tenant token.
type TokenConfig struct {
	// ID names the token in audit records ("tenant:<id>") and logs.
	ID string `yaml:"id"`
	// Tenant is the only tenant the token reaches.
	Tenant string `yaml:"tenant"`
	// SHA256 is the hex SHA-256 of the token: printf %s "$TOKEN" | sha256sum.
	SHA256 string `yaml:"sha256"`
}

// JWTConfig says how JWT tenant tokens are verified.
type JWTConfig struct {
	// Algorithm is the only one accepted: HS256, RS256 or ES256.
	Algorithm string `yaml:"algorithm"`
	// HS256KeyEnv names the environment variable holding the HS256 key
	// (at least 32 bytes).
	HS256KeyEnv string `yaml:"hs256_key_env"`
	// PublicKeyFile is a PEM public key (RSA of 2048 bits or more for
	// RS256, P-256 for ES256).
	PublicKeyFile string `yaml:"public_key_file"`
	// Issuer and Audience, when set, must match iss and (one of) aud.
	Issuer   string `yaml:"issuer"`
	Audience string `yaml:"audience"`
	// TenantClaim is the claim naming the tenant (default "tenant").
	TenantClaim string `yaml:"tenant_claim"`
}

// Defaults returns the section's defaults, with no tokens.
func Defaults() Config {
	return Config{MinInterval: DefaultMinInterval, IdempotencyTTL: DefaultIdempotencyTTL}
}

// HasTokens reports whether any tenant token is configured.
func (c Config) HasTokens() bool { return len(c.Tokens) > 0 || c.JWT != nil }

// ParseConfig decodes the raw triggers.selfservice section over the
// defaults, validates it and checks every token's tenant is configured.
// An absent section gives the defaults with tenant tokens disabled. Errors
// name their field, e.g. "triggers.selfservice.tokens[0].sha256".
func ParseConfig(raw []byte, rekey *orchestrator.Config) (Config, error) {
	cfg := Defaults()
	if err := orchestrator.DecodeSection(Section, raw, &cfg); err != nil {
		return Config{}, err
	}
	if len(raw) > 0 && (cfg.Enabled == nil || *cfg.Enabled) && !cfg.HasTokens() {
		return Config{}, orchestrator.FieldErrorf(Section+".tokens", "set tokens or jwt (or remove the section)")
	}
	if cfg.JWT != nil && cfg.JWT.TenantClaim == "" {
		cfg.JWT.TenantClaim = DefaultTenantClaim
	}
	if err := cfg.checkAgainst(rekey); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// checkAgainst checks every token's tenant exists in rekey's config.
func (c Config) checkAgainst(rekey *orchestrator.Config) error {
	var errs []error
	for i, t := range c.Tokens {
		if t.Tenant == "" || schemas.ValidateID("tenant", t.Tenant) != nil {
			continue // Validate reported it
		}
		if _, ok := rekey.Tenants[t.Tenant]; !ok {
			errs = append(errs, orchestrator.FieldErrorf(fmt.Sprintf("%s.tokens[%d].tenant", Section, i),
				"tenant %q is not configured in tenants", t.Tenant))
		}
	}
	return errors.Join(errs...)
}

// Validate checks every field and returns every problem found, each a
// *orchestrator.FieldError naming its field relative to the section.
func (c Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, orchestrator.FieldErrorf(field, format, args...))
	}
	if c.MinInterval < 0 || c.MinInterval > 24*time.Hour {
		add("min_interval", "%s must be between 0 (off) and 24h", c.MinInterval)
	}
	if c.IdempotencyTTL < time.Minute || c.IdempotencyTTL > 30*24*time.Hour {
		add("idempotency_ttl", "%s must be between 1m and 720h", c.IdempotencyTTL)
	}
	ids, sums := map[string]int{}, map[string]int{}
	for i, t := range c.Tokens {
		f := fmt.Sprintf("tokens[%d]", i)
		if err := schemas.ValidateID("token", t.ID); err != nil {
			add(f+".id", "%v", err)
		} else if j, dup := ids[t.ID]; dup {
			add(f+".id", "%q is also the id of tokens[%d]", t.ID, j)
		} else {
			ids[t.ID] = i
		}
		if err := schemas.ValidateID("tenant", t.Tenant); err != nil {
			add(f+".tenant", "%v", err)
		}
		sum := strings.ToLower(t.SHA256)
		if b, err := hex.DecodeString(sum); err != nil || len(b) != 32 {
			add(f+".sha256", "must be the 64 hex digits of the token's SHA-256 (printf %%s \"$TOKEN\" | sha256sum)")
		} else if j, dup := sums[sum]; dup {
			add(f+".sha256", "is also the hash of tokens[%d]", j)
		} else {
			sums[sum] = i
		}
	}
	if c.JWT != nil {
		j := c.JWT
		switch j.Algorithm {
		case AlgHS256:
			if j.HS256KeyEnv == "" {
				add("jwt.hs256_key_env", "must name the environment variable holding the HS256 key")
			}
			if j.PublicKeyFile != "" {
				add("jwt.public_key_file", "is for RS256 and ES256, not HS256")
			}
		case AlgRS256, AlgES256:
			if j.PublicKeyFile == "" {
				add("jwt.public_key_file", "must name a PEM public key file for %s", j.Algorithm)
			}
			if j.HS256KeyEnv != "" {
				add("jwt.hs256_key_env", "is for HS256, not %s", j.Algorithm)
			}
		default:
			add("jwt.algorithm", "%q must be HS256, RS256 or ES256", j.Algorithm)
		}
		if strings.ContainsAny(j.TenantClaim, " \t\n") {
			add("jwt.tenant_claim", "%q must be a claim name", j.TenantClaim)
		}
	}
	return errors.Join(errs...)
}
