// Package apiauth is the contract between the HTTP API (triggers/api)
// and what lets tenant tokens in (triggers/api/tenantauth): the principal a
// request acts for, the Authenticator and Limiter interfaces and the errors
// they return. It is a leaf (standard library only), so that the two
// trigger packages meet here instead of importing each other.
package apiauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// PrincipalKind says who a request acts for.
type PrincipalKind string

// Principal kinds.
const (
	// PrincipalAdmin holds the admin token: every route, every tenant.
	PrincipalAdmin PrincipalKind = "admin"
	// PrincipalTenant holds a tenant token: the self-service routes of
	// its own tenant only.
	PrincipalTenant PrincipalKind = "tenant"
)

// Principal is the authenticated identity behind a request. It never holds
// the token itself, only its id.
type Principal struct {
	Kind PrincipalKind
	// Tenant is the only tenant a tenant principal reaches; empty for admin.
	Tenant string
	// TokenID identifies the token in audit records and logs
	// (orchestrator.TokenID, or the id a tenant token is configured with).
	TokenID string
}

// Actor is the principal as audit records name it: "api:<token id>" for
// the admin token (as before tenant tokens existed), "tenant:<token id>".
func (p Principal) Actor() string {
	if p.Kind == PrincipalTenant {
		return "tenant:" + p.TokenID
	}
	return "api:" + p.TokenID
}

// Sentinels an Authenticator wraps.
var (
	// ErrUnknownToken: the bearer token is not one the Authenticator
	// knows at all (not a configured tenant token, not a JWT it checks).
	// The API then answers "invalid admin token", as it always has.
	ErrUnknownToken = errors.New("not a tenant token")
	// ErrInvalidToken: a tenant token that failed verification (expired,
	// bad signature, wrong algorithm, missing tenant claim...). Its
	// message is returned to the client, so it must never hold the token.
	ErrInvalidToken = errors.New("invalid tenant token")
)

// Authenticator turns a request that does not carry the admin token into
// a tenant principal. triggers/api/tenantauth implements it; triggers/api
// calls it.
type Authenticator interface {
	// Authenticate returns a PrincipalTenant, or an error wrapping
	// ErrUnknownToken or ErrInvalidToken.
	Authenticate(r *http.Request) (Principal, error)
}

// TooSoonError is what a Limiter returns when the secret's last
// tenant-initiated rotation was accepted less than the minimum interval ago.
type TooSoonError struct {
	RetryAfter time.Duration
}

func (e *TooSoonError) Error() string {
	return fmt.Sprintf("rotated through the self-service API less than the minimum interval ago; retry in %s", e.RetryAfter.Round(time.Second))
}

// Limiter spaces out tenant-initiated rotations of one secret, across
// replicas. triggers/api/tenantauth implements it; triggers/api calls it;
// admin calls are not limited.
type Limiter interface {
	// Reserve takes the secret's next rotation slot, or returns a
	// *TooSoonError. undo gives the slot back when the request could not
	// be queued after all.
	Reserve(ctx context.Context, tenant, secret string) (undo func(context.Context), err error)
}
