package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/schemas"
)

// natsFetcher reads secrets kept inside rekey (the local backend) by
// request/reply on schemas.FetchSubject.
type natsFetcher struct {
	nc       *nats.Conn
	instance string
}

var _ Fetcher = (*natsFetcher)(nil)

// NewNATSFetcher returns a Fetcher that asks rekey for a secret's current
// value on schemas.FetchSubject(tenant, secret), sending a
// schemas.FetchRequest naming instance. A "revoked" reply is ErrRevoked, a
// "not_found" one ErrNotFound; other error codes are errors carrying the
// code and message of the reply.
func NewNATSFetcher(nc *nats.Conn, instance string) Fetcher {
	return &natsFetcher{nc: nc, instance: instance}
}

// Fetch implements Fetcher.
func (f *natsFetcher) Fetch(ctx context.Context, tenant, secret string) (Secret, error) {
	if err := schemas.ValidateRef(tenant, secret); err != nil {
		return Secret{}, fmt.Errorf("fetch: %w", err)
	}
	subject := schemas.FetchSubject(tenant, secret)
	req, err := json.Marshal(schemas.FetchRequest{Agent: f.instance})
	if err != nil {
		return Secret{}, fmt.Errorf("fetch %s: encode request: %w", subject, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultFetchTimeout)
		defer cancel()
	}
	msg, err := f.nc.RequestWithContext(ctx, subject, req)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return Secret{}, fmt.Errorf("fetch %s: no fetch server (is rekeyd running with the local backend?): %w", subject, err)
		}
		return Secret{}, fmt.Errorf("fetch %s: %w", subject, err)
	}
	var resp schemas.FetchResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		// The reply may hold a value: never quote it, nor the decoder's
		// error, which can.
		return Secret{}, fmt.Errorf("fetch %s: reply is not a JSON FetchResponse: %w", subject, schemas.ErrMalformed)
	}
	switch resp.Code {
	case "":
	case schemas.FetchRevoked:
		return Secret{}, fmt.Errorf("fetch %s: %w", subject, ErrRevoked)
	case schemas.FetchNotFound:
		return Secret{}, fmt.Errorf("fetch %s: %w", subject, ErrNotFound)
	default:
		return Secret{}, fmt.Errorf("fetch %s: %s: %s", subject, resp.Code, truncate(resp.Error, 500))
	}
	// A reply must say what it answers: one that reached this inbox by
	// another path (another request's, a peer's) is not this secret.
	if resp.Tenant != tenant || resp.Secret != secret || resp.Version == "" {
		clear(resp.Value)
		return Secret{}, fmt.Errorf("fetch %s: reply names %q/%q version %q, not the secret asked for: %w",
			subject, truncate(resp.Tenant, 80), truncate(resp.Secret, 80), truncate(resp.Version, 80), schemas.ErrMalformed)
	}
	return Secret{Name: secret, Version: resp.Version, Value: resp.Value, FetchedAt: time.Now()}, nil
}
