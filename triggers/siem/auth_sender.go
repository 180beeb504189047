package siem

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/rekey-dev/rekey/orchestrator/agentauth"
)

// urlSecretAuth checks a secret carried in the URL (path segment or query
// parameter) against every accepted one, in constant time: the digests
// are compared, so the time taken depends neither on the length nor on
// which secret matched, and every secret is compared every time.
type urlSecretAuth struct {
	digests [][32]byte
	param   string
}

// pathSecret is the wildcard of the route that carries the secret as the
// path segment after the source.
const pathSecret = "secret"

func (a *urlSecretAuth) needsBody() bool   { return false }
func (a *urlSecretAuth) challenge() string { return "" }

func (a *urlSecretAuth) check(r *http.Request, _ []byte, _ time.Time) error {
	got := r.PathValue(pathSecret)
	if got == "" {
		got = r.URL.Query().Get(a.param)
	}
	if got == "" {
		return unauthorized("missing URL secret (path segment after the source, or query parameter " + a.param + ")")
	}
	d := sha256.Sum256([]byte(got))
	ok := 0
	for _, want := range a.digests {
		ok |= subtle.ConstantTimeCompare(d[:], want[:])
	}
	if ok != 1 {
		return unauthorized("invalid URL secret")
	}
	return nil
}

func newURLSecretAuth(field string, c *URLSecretAuth) (*urlSecretAuth, error) {
	a := &urlSecretAuth{param: c.Param}
	if a.param == "" {
		a.param = DefaultURLSecretParam
	}
	for _, s := range c.Secrets {
		a.digests = append(a.digests, sha256.Sum256([]byte(s)))
	}
	for i, env := range c.SecretsEnv {
		f := fmt.Sprintf("%s.auth.url_secret.secrets_env[%d]", field, i)
		s, err := resolveSecret(f, "", env)
		if err != nil {
			return nil, err
		}
		if err := checkURLSecret(string(s)); err != nil {
			return nil, fmt.Errorf("%s: environment variable %s %w", f, env, err)
		}
		a.digests = append(a.digests, sha256.Sum256([]byte(s)))
	}
	return a, nil
}

// maxJWTBytes bounds an Entra ID token.
const maxJWTBytes = 16 << 10

// entraAuth checks an Entra ID bearer JWT (Azure Monitor secure webhook).
type entraAuth struct {
	keys      *agentauth.JWKS
	tenantID  string
	audiences []string
	issuers   []string
	appIDs    []string
	leeway    time.Duration
}

func (a *entraAuth) needsBody() bool   { return false }
func (a *entraAuth) challenge() string { return `Bearer realm="rekey"` }

// entraClaims are the claims checked besides the registered ones.
type entraClaims struct {
	TenantID string `json:"tid"`
	AppID    string `json:"appid"`
	AZP      string `json:"azp"`
}

func (a *entraAuth) check(r *http.Request, _ []byte, now time.Time) error {
	h := r.Header.Get("Authorization")
	scheme, raw, _ := strings.Cut(h, " ")
	if h == "" || !strings.EqualFold(scheme, "Bearer") {
		return unauthorized("missing Authorization: Bearer <Entra ID token>")
	}
	raw = strings.TrimSpace(raw)
	if len(raw) > maxJWTBytes {
		return unauthorized(fmt.Sprintf("token larger than %d bytes", maxJWTBytes))
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return unauthorized("not a JWT signed with RS256")
	}
	if len(tok.Headers) != 1 {
		return unauthorized("token must have one signature")
	}
	keys, err := a.keys.Keys(r.Context(), tok.Headers[0].KeyID)
	if err != nil {
		return unauthorized("issuer keys unavailable")
	}
	var std jwt.Claims
	var extra entraClaims
	verified := false
	for _, k := range keys {
		if err := tok.Claims(k.Key, &std, &extra); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return unauthorized("token signature does not verify with the issuer's keys")
	}
	if std.Expiry == nil {
		return unauthorized("token has no exp")
	}
	if err := std.ValidateWithLeeway(jwt.Expected{AnyAudience: a.audiences, Time: now}, a.leeway); err != nil {
		return unauthorized("token refused: " + jwtReason(err))
	}
	if !slices.Contains(a.issuers, std.Issuer) {
		return unauthorized("token issuer is not one of the source's issuers")
	}
	if a.tenantID != "" && !strings.EqualFold(extra.TenantID, a.tenantID) {
		return unauthorized("token tid is not the source's tenant_id")
	}
	if len(a.appIDs) > 0 && !slices.Contains(a.appIDs, extra.AppID) && !slices.Contains(a.appIDs, extra.AZP) {
		return unauthorized("token appid is not one of the source's app_ids")
	}
	return nil
}

// jwtReason names a failed registered-claim check.
func jwtReason(err error) string {
	switch err {
	case jwt.ErrExpired:
		return "expired"
	case jwt.ErrNotValidYet:
		return "not valid yet"
	case jwt.ErrIssuedInTheFuture:
		return "issued in the future"
	case jwt.ErrInvalidAudience:
		return "audience is not one of the source's audiences"
	}
	return "invalid claims"
}

func newEntraAuth(field string, c EntraIDAuth) (*entraAuth, error) {
	c = c.withDefaults()
	keys, err := agentauth.NewJWKS(c.JWKSURL, c.JWKSCAFile, entraJWKSRefreshMin, nil)
	if err != nil {
		return nil, fmt.Errorf("%s.auth.entra_id: %w", field, err)
	}
	return &entraAuth{keys: keys, tenantID: c.TenantID, audiences: c.Audiences, issuers: c.Issuers,
		appIDs: c.AppIDs, leeway: c.Leeway}, nil
}

// entraJWKSRefreshMin is the least time between two reads of the JWKS
// for tokens naming unknown key ids.
const entraJWKSRefreshMin = 30 * time.Second
