// Package handlers holds the rotation and revocation workers and the Backend
// interface that every secret store (local, Vault, AWS Secrets Manager)
// implements. Workers consume requests from NATS, drive a backend through the
// rotation saga and publish what happened; they never parse webhooks and
// never talk to agents.
package handlers

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"time"
)

// Sentinel errors that callers branch on with errors.Is.
var (
	// ErrNotFound: the secret or version does not exist in the backend.
	ErrNotFound = errors.New("not found")
	// ErrPermanent: retrying cannot help (bad configuration, refused by a
	// tenant check); the request is terminated at once.
	ErrPermanent = errors.New("permanent failure")
	// ErrRevoked: the tenant is revoked; reads fail closed.
	ErrRevoked = errors.New("tenant revoked")
	// ErrBusy: another rotation of the same secret holds its lock.
	ErrBusy = errors.New("rotation in progress")
	// ErrUnavailable: the backend could not be reached (connection refused
	// or reset, timeout). A rotation that fails only for this is not given
	// up: its request is redelivered with backoff until the backend is back
	// (up to the worker's max deliveries).
	ErrUnavailable = errors.New("backend unavailable")
)

// IsUnavailable reports whether err means the backend could not be
// reached, rather than that it refused: ErrUnavailable, a network error, or
// a step timeout.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var netErr net.Error
	return errors.Is(err, ErrUnavailable) || errors.As(err, &netErr) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded)
}

// SecretRef is what a backend gets to locate one secret: the IDs and the
// secret's backend-specific options from the config (a Vault path template,
// an AWS name, a generator policy...).
type SecretRef struct {
	Tenant    string
	Secret    string
	Backend   string
	Generator Generator
	Options   map[string]string
}

// String returns "tenant/secret".
func (r SecretRef) String() string { return r.Tenant + "/" + r.Secret }

// Version is one version of a secret as a backend names it. Token is the
// idempotency token it was created with (the rotation's request id).
type Version struct {
	ID        string
	Token     string
	CreatedAt time.Time
}

// Rotation steps, in order. They are the four steps of the AWS Secrets
// Manager rotation contract.
const (
	StepCreate = "create"
	StepSet    = "set"
	StepTest   = "test"
	StepFinish = "finish"
)

// Backend is a secret store that rekey can rotate. A rotation is:
//
//	Create (stage a new value, not live) -> Set (downstream accepts it) ->
//	Test -> Finish (promote; the old version is kept as previous)
//
// Any failure before Finish is followed by Rollback of the staged version.
// Every method must be idempotent for the same token/version: a worker that
// crashed mid-way retries from the start with the same request id.
type Backend interface {
	// Name is the backend name used in configuration ("local", "vault"...).
	Name() string
	// Current returns the live version. ErrNotFound if there is none.
	Current(ctx context.Context, ref SecretRef) (Version, error)
	// Staged lists versions created but neither finished nor rolled back.
	Staged(ctx context.Context, ref SecretRef) ([]Version, error)
	// Create stages a new version. The same token returns the same version.
	Create(ctx context.Context, ref SecretRef, token string) (Version, error)
	// Set makes the downstream system accept the staged version.
	Set(ctx context.Context, ref SecretRef, v Version) error
	// Test checks that the staged version works.
	Test(ctx context.Context, ref SecretRef, v Version) error
	// Finish promotes the staged version; the old one becomes previous.
	Finish(ctx context.Context, ref SecretRef, v Version) error
	// Rollback removes a staged version. Removing one that is gone is not an error.
	Rollback(ctx context.Context, ref SecretRef, v Version) error
}

// TenantRevoker is implemented by backends that hold credentials which must
// be revoked (not just rotated) when a tenant is cut off, e.g. Vault leases.
type TenantRevoker interface {
	RevokeTenant(ctx context.Context, tenant string) (revoked int, err error)
}

// StepTimeouts is implemented by backends some of whose steps may take
// longer than rotation.step_timeout, e.g. an AWS rotation delegated to a
// Lambda, whose Finish waits for the Lambda. The rotator uses the larger of
// the two.
type StepTimeouts interface {
	// StepTimeout returns the timeout a step of ref needs; ok false: the
	// configured one.
	StepTimeout(ref SecretRef, step string) (d time.Duration, ok bool)
}

// Provisioner is implemented by backends that can create a secret's first
// version when it does not exist yet (the local backend).
type Provisioner interface {
	Ensure(ctx context.Context, ref SecretRef) (v Version, created bool, err error)
}
