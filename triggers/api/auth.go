package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/rekey-dev/rekey/orchestrator/apiauth"
)

// The request principal and the tenant-access contract live in
// orchestrator/apiauth, so that triggers/api/tenantauth implements them
// without importing this package; these names stay for the API's callers.
type (
	// PrincipalKind says who a request acts for.
	PrincipalKind = apiauth.PrincipalKind
	// Principal is the authenticated identity behind a request.
	Principal = apiauth.Principal
	// Authenticator turns a non-admin request into a tenant principal.
	Authenticator = apiauth.Authenticator
	// Limiter spaces out tenant-initiated rotations of one secret.
	Limiter = apiauth.Limiter
	// TooSoonError is what a Limiter returns inside the minimum interval.
	TooSoonError = apiauth.TooSoonError
)

// Principal kinds.
const (
	PrincipalAdmin  = apiauth.PrincipalAdmin
	PrincipalTenant = apiauth.PrincipalTenant
)

// Sentinels an Authenticator wraps.
var (
	ErrUnknownToken = apiauth.ErrUnknownToken
	ErrInvalidToken = apiauth.ErrInvalidToken
)

// authenticate returns the request's principal. The admin token is
// checked first; anything else goes to the tenant Authenticator, if any.
func (a *API) authenticate(r *http.Request) (Principal, *apiError) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return Principal{}, errorf(http.StatusUnauthorized, "", "missing Authorization: Bearer <admin token>")
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return Principal{}, errorf(http.StatusUnauthorized, "", "Authorization must be a Bearer token")
	}
	// Compare digests so the comparison takes the same time whatever the length.
	got, want := sha256.Sum256([]byte(strings.TrimSpace(tok))), sha256.Sum256([]byte(a.cfg.AdminToken))
	if subtle.ConstantTimeCompare(got[:], want[:]) == 1 {
		return Principal{Kind: PrincipalAdmin, TokenID: a.tokenID}, nil
	}
	if a.tenantAuth == nil {
		return Principal{}, errorf(http.StatusUnauthorized, "", "invalid admin token")
	}
	p, err := a.tenantAuth.Authenticate(r)
	switch {
	case errors.Is(err, ErrUnknownToken):
		return Principal{}, errorf(http.StatusUnauthorized, "", "invalid admin token")
	case errors.Is(err, ErrInvalidToken):
		return Principal{}, errorf(http.StatusUnauthorized, "", "%v", err)
	case err != nil:
		a.log.Warn("tenant authentication failed", "error", err)
		return Principal{}, errorf(http.StatusUnauthorized, "", "%v", ErrInvalidToken)
	case p.Kind != PrincipalTenant || p.Tenant == "" || p.TokenID == "":
		a.log.Error("authenticator returned an incomplete tenant principal", "kind", p.Kind, "tenant", p.Tenant)
		return Principal{}, errorf(http.StatusUnauthorized, "", "%v", ErrInvalidToken)
	}
	return p, nil
}
