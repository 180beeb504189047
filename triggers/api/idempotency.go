package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/schemas"

	"github.com/rekey-dev/rekey/orchestrator"
)

// BucketIdempotency keeps the first answer to each Idempotency-Key.
const BucketIdempotency = "rekey_idempotency"

// DefaultIdempotencyTTL is how long an answer is replayed.
const DefaultIdempotencyTTL = 24 * time.Hour

// maxIdempotencyKey bounds the header's length.
const maxIdempotencyKey = 200

// idemPendingTimeout: a claim still pending after this long belongs to a
// request that died (a crashed replica); a retry may take it over. It is
// shorter than JetStream's default duplicate window (2m), so a request
// published by the dead one and sent again is still dropped there.
const idemPendingTimeout = time.Minute

// idemRecord is one key's entry: pending while its first request runs,
// then the answer to replay.
type idemRecord struct {
	Pending     bool      `json:"pending,omitempty"`
	Started     time.Time `json:"started"`
	Fingerprint string    `json:"fingerprint"`
	Status      int       `json:"status,omitempty"`
	Reply       *Accepted `json:"reply,omitempty"`
}

// idempotency stores answers in a JetStream KV bucket, so that every
// replica replays the same one. The bucket is opened on first use.
type idempotency struct {
	bus *orchestrator.Bus
	ttl time.Duration

	mu sync.Mutex
	kv jetstream.KeyValue
}

func (s *idempotency) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv == nil {
		kv, err := s.bus.KV(ctx, BucketIdempotency, s.ttl)
		if err != nil {
			return nil, err
		}
		s.kv = kv
	}
	return s.kv, nil
}

// idemKey is the bucket key of one Idempotency-Key: the principal's scope
// (admin, or the tenant: a refreshed JWT of the same tenant replays),
// the method, the path and the key, hashed.
func idemKey(p Principal, method, path, key string) string {
	scope := string(PrincipalAdmin)
	if p.Kind == PrincipalTenant {
		scope = "tenant:" + p.Tenant
	}
	h := sha256.Sum256([]byte(scope + "\x00" + method + "\x00" + path + "\x00" + key))
	return hex.EncodeToString(h[:])
}

// claim makes the caller the owner of key (rev > 0), or returns the record
// already there: a finished answer to replay, or a pending one.
func (s *idempotency) claim(ctx context.Context, key, fingerprint string, now time.Time) (uint64, *idemRecord, error) {
	kv, err := s.bucket(ctx)
	if err != nil {
		return 0, nil, err
	}
	b, err := json.Marshal(idemRecord{Pending: true, Started: now.UTC(), Fingerprint: fingerprint})
	if err != nil {
		return 0, nil, fmt.Errorf("encode idempotency record: %w", err)
	}
	for range 5 {
		rev, err := kv.Create(ctx, key, b)
		if err == nil {
			return rev, nil, nil
		}
		if !orchestrator.IsConflict(err) {
			return 0, nil, fmt.Errorf("claim idempotency key: %w", err)
		}
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released or expired meanwhile
		}
		if err != nil {
			return 0, nil, fmt.Errorf("read idempotency key: %w", err)
		}
		var old idemRecord
		if err := schemas.DecodeStrict(e.Value(), &old); err != nil {
			return 0, nil, fmt.Errorf("decode idempotency record: %w", err)
		}
		if old.Pending && now.Sub(old.Started) > idemPendingTimeout {
			if rev, err := kv.Update(ctx, key, b, e.Revision()); err == nil {
				return rev, nil, nil
			}
			continue
		}
		return 0, &old, nil
	}
	return 0, nil, errors.New("claim idempotency key: too many concurrent updates")
}

// complete stores the answer in place of the claim.
func (s *idempotency) complete(ctx context.Context, key string, rev uint64, rec idemRecord) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode idempotency record: %w", err)
	}
	if _, err := kv.Update(ctx, key, b, rev); err != nil {
		return fmt.Errorf("store idempotent answer: %w", err)
	}
	return nil
}

// release drops a claim whose request ended without an answer worth
// replaying (an error), so that a retry runs again.
func (s *idempotency) release(ctx context.Context, key string, rev uint64) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	if err := kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		return fmt.Errorf("release idempotency key: %w", err)
	}
	return nil
}

// fingerprint identifies a request's content, so that a key reused for a
// different request is refused rather than answered with another's reply.
func fingerprint(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
