package tenantauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/apiauth"
	"github.com/rekey-dev/rekey/schemas"
)

// lastRotation is a BucketLastRotation entry.
type lastRotation struct {
	At time.Time `json:"at"`
}

// Reserve implements apiauth.Limiter: it records now as the secret's last
// tenant-initiated rotation, with compare-and-set so that of two replicas
// racing only one wins, unless the last one was less than MinInterval ago;
// then it returns an *apiauth.TooSoonError. Replicas compare their own
// clocks with the stored time, so they should be NTP-synchronised.
func (s *Service) Reserve(ctx context.Context, tenant, secret string) (func(context.Context), error) {
	if s.kv == nil {
		return nil, nil
	}
	key := tenant + "." + secret
	for range 10 {
		now := s.now()
		var rev uint64
		e, err := s.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return nil, fmt.Errorf("read last self-service rotation of %s/%s: %w", tenant, secret, err)
		default:
			var last lastRotation
			if err := schemas.DecodeStrict(e.Value(), &last); err != nil {
				return nil, fmt.Errorf("decode last self-service rotation of %s/%s: %w", tenant, secret, err)
			}
			if wait := last.At.Add(s.cfg.MinInterval).Sub(now); wait > 0 {
				s.limited.Inc()
				return nil, &apiauth.TooSoonError{RetryAfter: wait}
			}
			rev = e.Revision()
		}
		b, err := json.Marshal(lastRotation{At: now.UTC()})
		if err != nil {
			return nil, fmt.Errorf("encode last self-service rotation: %w", err)
		}
		var taken uint64
		if rev == 0 {
			taken, err = s.kv.Create(ctx, key, b)
		} else {
			taken, err = s.kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			return s.undo(tenant, secret, taken), nil
		}
		if !orchestrator.IsConflict(err) {
			return nil, fmt.Errorf("record self-service rotation of %s/%s: %w", tenant, secret, err)
		}
		// Another request (maybe on another replica) got there first: look again.
	}
	return nil, fmt.Errorf("record self-service rotation of %s/%s: too many concurrent requests", tenant, secret)
}

// undo removes the entry Reserve wrote if nothing replaced it since: the
// secret is free again, as it was (an older entry was past the interval).
func (s *Service) undo(tenant, secret string, rev uint64) func(context.Context) {
	return func(ctx context.Context) {
		if err := s.kv.Delete(ctx, tenant+"."+secret, jetstream.LastRevision(rev)); err != nil {
			s.log.Warn("self-service rotation slot not given back", "tenant", tenant, "secret", secret, "error", err)
		}
	}
}
