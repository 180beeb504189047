// Package tenantauth authenticates tenant tokens for rekeyd's HTTP API and
// spaces out the rotations they ask for, so that tenant admins can rotate
// their own secrets and see their status without the admin token. It is
// configured by the triggers.selfservice section.
//
// A tenant token is either an opaque token whose SHA-256 is configured, or
// a JWT carrying the tenant in a claim, verified with a configured key
// (HS256, RS256 or ES256: exactly one algorithm is accepted; exp is
// required, nbf, iss and aud are checked). The Service implements the
// apiauth.Authenticator that turns such a token into a tenant principal,
// and the apiauth.Limiter that keeps a minimum interval between
// tenant-initiated rotations of one secret, in JetStream KV so that every
// replica agrees. The routes themselves, and the rule that a tenant token
// reaches only its own tenant, are in triggers/api.
package tenantauth

import (
	"context"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/apiauth"
	"github.com/rekey-dev/rekey/schemas"
)

// BucketLastRotation keeps, per tenant.secret, when the last
// tenant-initiated rotation was accepted.
const BucketLastRotation = "rekey_selfservice"

// jwtLeeway absorbs clock skew between the token issuer and rekeyd when
// checking exp and nbf.
const jwtLeeway = 30 * time.Second

// Service authenticates tenant tokens and spaces out tenant rotations.
type Service struct {
	cfg    Config
	rekey  *orchestrator.Config
	tokens []hashedToken
	jwt    *verifier
	kv     jetstream.KeyValue // nil when MinInterval is 0
	log    *slog.Logger
	now    func() time.Time

	auths   *prometheus.CounterVec // method, outcome
	limited prometheus.Counter
}

var (
	_ apiauth.Authenticator = (*Service)(nil)
	_ apiauth.Limiter       = (*Service)(nil)
)

type hashedToken struct {
	id, tenant string
	sum        [sha256.Size]byte
}

// New checks cfg again (as ParseConfig does), reads the JWT key (from the
// environment or a PEM file) and opens the KV bucket of the minimum
// interval. cfg should come from ParseConfig or Defaults.
func New(ctx context.Context, cfg Config, deps orchestrator.Deps) (*Service, error) {
	if err := deps.Check("selfservice", "rekey"); err != nil {
		return nil, err
	}
	rekey, bus, metrics, log := deps.Rekey, deps.Bus, deps.Metrics, deps.Log
	if err := orchestrator.DecodeSection(Section, nil, cfg); err != nil {
		return nil, err
	}
	if err := cfg.checkAgainst(rekey); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, rekey: rekey, log: log.With("component", "selfservice"), now: time.Now}
	for _, t := range cfg.Tokens {
		h := hashedToken{id: t.ID, tenant: t.Tenant}
		b, _ := hex.DecodeString(strings.ToLower(t.SHA256)) // checked by Validate
		copy(h.sum[:], b)
		s.tokens = append(s.tokens, h)
	}
	if cfg.JWT != nil {
		v, err := newVerifier(*cfg.JWT, s.now)
		if err != nil {
			return nil, err
		}
		s.jwt = v
	}
	if cfg.MinInterval > 0 {
		if bus == nil {
			return nil, errors.New("selfservice: deps: bus is required for min_interval")
		}
		kv, err := bus.KV(ctx, BucketLastRotation, max(2*cfg.MinInterval, time.Minute))
		if err != nil {
			return nil, err
		}
		s.kv = kv
	}
	var err error
	s.auths, err = orchestrator.Register(metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rekey_tenant_auth_total", Help: "Tenant token authentications, by method (hashed, jwt) and outcome (ok, invalid).",
	}, []string{"method", "outcome"}))
	if err != nil {
		return nil, err
	}
	s.limited, err = orchestrator.Register(metrics, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rekey_selfservice_rate_limited_total", Help: "Tenant rotation requests refused by the minimum interval (429).",
	}))
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Authenticate returns the tenant principal of the request's bearer
// token: a configured hashed token, else a JWT when one is configured.
// Errors wrap apiauth.ErrUnknownToken (neither) or apiauth.ErrInvalidToken
// (a JWT that failed verification); they never hold the token.
func (s *Service) Authenticate(r *http.Request) (apiauth.Principal, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	tok = strings.TrimSpace(tok)
	if !ok || tok == "" {
		return apiauth.Principal{}, apiauth.ErrUnknownToken
	}
	sum := sha256.Sum256([]byte(tok))
	match := -1
	for i := range s.tokens { // every one, in constant time each
		if subtle.ConstantTimeCompare(sum[:], s.tokens[i].sum[:]) == 1 {
			match = i
		}
	}
	if match >= 0 {
		s.auths.WithLabelValues("hashed", "ok").Inc()
		t := s.tokens[match]
		return apiauth.Principal{Kind: apiauth.PrincipalTenant, Tenant: t.tenant, TokenID: t.id}, nil
	}
	if s.jwt == nil || !looksLikeJWT(tok) {
		return apiauth.Principal{}, apiauth.ErrUnknownToken
	}
	tenant, err := s.jwt.verify(tok)
	if err == nil {
		if _, ok := s.rekey.Tenants[tenant]; !ok {
			err = fmt.Errorf("%w: the %s claim names tenant %q, which is not configured", apiauth.ErrInvalidToken, s.cfg.JWT.TenantClaim, tenant)
		}
	}
	if err != nil {
		s.auths.WithLabelValues("jwt", "invalid").Inc()
		return apiauth.Principal{}, err
	}
	s.auths.WithLabelValues("jwt", "ok").Inc()
	return apiauth.Principal{Kind: apiauth.PrincipalTenant, Tenant: tenant, TokenID: orchestrator.TokenID(tok)}, nil
}

// looksLikeJWT: three base64url segments, the first a JSON object with an
// "alg". Anything else is not a JWT (and so, here, not a tenant token).
func looksLikeJWT(tok string) bool {
	head, rest, ok := strings.Cut(tok, ".")
	if !ok || strings.Count(rest, ".") != 1 || len(head) > 1024 {
		return false
	}
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return false
	}
	var h struct {
		Alg *string `json:"alg"`
	}
	return json.Unmarshal(b, &h) == nil && h.Alg != nil
}

// verifier checks JWTs of one algorithm with one key.
type verifier struct {
	cfg    JWTConfig
	key    any
	parser *jwt.Parser
}

func newVerifier(cfg JWTConfig, now func() time.Time) (*verifier, error) {
	if cfg.TenantClaim == "" {
		cfg.TenantClaim = DefaultTenantClaim
	}
	v := &verifier{cfg: cfg}
	field := func(name string) string { return Section + ".jwt." + name }
	switch cfg.Algorithm {
	case AlgHS256:
		key := os.Getenv(cfg.HS256KeyEnv)
		switch {
		case key == "":
			return nil, orchestrator.FieldErrorf(field("hs256_key_env"), "environment variable %s is empty or unset", cfg.HS256KeyEnv)
		case len(key) < 32:
			return nil, orchestrator.FieldErrorf(field("hs256_key_env"), "environment variable %s holds %d bytes; an HS256 key needs at least 32", cfg.HS256KeyEnv, len(key))
		}
		v.key = []byte(key)
	case AlgRS256, AlgES256:
		pem, err := os.ReadFile(cfg.PublicKeyFile)
		if err != nil {
			return nil, orchestrator.FieldErrorf(field("public_key_file"), "%v", err)
		}
		if cfg.Algorithm == AlgRS256 {
			k, err := jwt.ParseRSAPublicKeyFromPEM(pem)
			if err != nil {
				return nil, orchestrator.FieldErrorf(field("public_key_file"), "%s: not a PEM RSA public key: %v", cfg.PublicKeyFile, err)
			}
			if k.N.BitLen() < 2048 {
				return nil, orchestrator.FieldErrorf(field("public_key_file"), "%s: RSA key of %d bits; RS256 needs at least 2048", cfg.PublicKeyFile, k.N.BitLen())
			}
			v.key = k
		} else {
			k, err := jwt.ParseECPublicKeyFromPEM(pem)
			if err != nil {
				return nil, orchestrator.FieldErrorf(field("public_key_file"), "%s: not a PEM EC public key: %v", cfg.PublicKeyFile, err)
			}
			if k.Curve != elliptic.P256() {
				return nil, orchestrator.FieldErrorf(field("public_key_file"), "%s: ES256 needs a P-256 key, not %s", cfg.PublicKeyFile, k.Curve.Params().Name)
			}
			v.key = k
		}
	default:
		return nil, orchestrator.FieldErrorf(field("algorithm"), "%q must be HS256, RS256 or ES256", cfg.Algorithm)
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{cfg.Algorithm}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(jwtLeeway),
		jwt.WithTimeFunc(now),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// verify checks tok and returns its tenant claim. Its errors are fixed
// texts (they reach the client): never the token or a claim's raw value.
func (v *verifier) verify(tok string) (string, error) {
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return v.key, nil })
	if err != nil {
		return "", fmt.Errorf("%w: %s", apiauth.ErrInvalidToken, v.reason(tok, err))
	}
	raw, ok := claims[v.cfg.TenantClaim]
	if !ok {
		return "", fmt.Errorf("%w: JWT has no %s claim", apiauth.ErrInvalidToken, v.cfg.TenantClaim)
	}
	tenant, ok := raw.(string)
	if !ok || schemas.ValidateID("tenant", tenant) != nil {
		return "", fmt.Errorf("%w: the JWT's %s claim is not a tenant id", apiauth.ErrInvalidToken, v.cfg.TenantClaim)
	}
	return tenant, nil
}

func (v *verifier) reason(tok string, err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed JWT"
	case !algIs(tok, v.cfg.Algorithm):
		return "JWT algorithm is not " + v.cfg.Algorithm
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "JWT signature is invalid"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "JWT has no exp claim"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "JWT is expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "JWT is not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "JWT issuer is not accepted"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "JWT audience is not accepted"
	case errors.Is(err, jwt.ErrInvalidType):
		return "JWT has a claim of the wrong type"
	}
	return "JWT is not valid"
}

// algIs reports whether tok's header names alg.
func algIs(tok, alg string) bool {
	head, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return false
	}
	var h struct {
		Alg string `json:"alg"`
	}
	return json.Unmarshal(b, &h) == nil && h.Alg == alg
}
