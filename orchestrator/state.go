package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/schemas"
)

// ErrLocked is returned by State.Lock when another owner holds the lock.
var ErrLocked = errors.New("locked by another owner")

// Secret states.
const (
	SecretIdle     = "idle"
	SecretRotating = "rotating"
	SecretFailed   = "failed"
)

// SecretStatus is what rekey knows about one secret, kept in the status KV
// bucket. It never holds a value.
type SecretStatus struct {
	Tenant          string          `json:"tenant"`
	Secret          string          `json:"secret"`
	Backend         string          `json:"backend"`
	State           string          `json:"state"`
	Version         string          `json:"version,omitempty"`
	PreviousVersion string          `json:"previous_version,omitempty"`
	Rotations       int64           `json:"rotations"`
	LastRequestID   string          `json:"last_request_id,omitempty"`
	LastReason      string          `json:"last_reason,omitempty"`
	LastTrigger     schemas.Trigger `json:"last_trigger,omitzero"`
	LastStartedAt   time.Time       `json:"last_started_at,omitzero"`
	LastCompletedAt time.Time       `json:"last_completed_at,omitzero"`
	LastError       string          `json:"last_error,omitempty"`
	LastFailedAt    time.Time       `json:"last_failed_at,omitzero"`
	// CoveredSeq is the ROTATE stream's last sequence when the last
	// completed rotation started: every request at or below it was made
	// before that rotation started, so that rotation satisfies it.
	CoveredSeq uint64 `json:"covered_seq"`
	// InFlightSeq is the same for the rotation in progress, if any.
	InFlightSeq uint64 `json:"in_flight_seq,omitempty"`
	// LastAttempts is how many saga attempts the last rotation needed.
	LastAttempts int `json:"last_attempts,omitempty"`
	// LastMode is "sync" when the last version was made outside rekey.
	LastMode string `json:"last_mode,omitempty"`
	// Announced is set once the last rotation's completion event and audit
	// record were written. A request redelivered after a crash between the
	// status write and the event finds it false and announces again.
	Announced bool `json:"announced"`
}

// TenantState says whether a tenant is revoked.
type TenantState struct {
	Tenant    string    `json:"tenant"`
	Revoked   bool      `json:"revoked"`
	RequestID string    `json:"request_id,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Since     time.Time `json:"since,omitzero"`
}

// State is rekey's shared state in JetStream KV: secret status, tenant
// revocation and rotation locks.
type State struct {
	status  jetstream.KeyValue
	tenants jetstream.KeyValue
	locks   jetstream.KeyValue
}

// NewState opens (creating if needed) the state buckets. Locks expire after
// lockTTL unless refreshed.
func NewState(ctx context.Context, bus *Bus, lockTTL time.Duration) (*State, error) {
	status, err := bus.KV(ctx, BucketStatus, 0)
	if err != nil {
		return nil, err
	}
	tenants, err := bus.KV(ctx, BucketTenants, 0)
	if err != nil {
		return nil, err
	}
	locks, err := bus.KV(ctx, BucketLocks, lockTTL)
	if err != nil {
		return nil, err
	}
	return &State{status: status, tenants: tenants, locks: locks}, nil
}

func refKey(tenant, secret string) string { return tenant + "." + secret }

// SecretStatus returns a secret's status; a secret never rotated has a zero
// status with State idle.
func (s *State) SecretStatus(ctx context.Context, tenant, secret string) (SecretStatus, error) {
	st, _, err := s.getStatus(ctx, tenant, secret)
	return st, err
}

func (s *State) getStatus(ctx context.Context, tenant, secret string) (SecretStatus, uint64, error) {
	e, err := s.status.Get(ctx, refKey(tenant, secret))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return SecretStatus{Tenant: tenant, Secret: secret, State: SecretIdle}, 0, nil
	}
	if err != nil {
		return SecretStatus{}, 0, fmt.Errorf("read status %s/%s: %w", tenant, secret, err)
	}
	var st SecretStatus
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return SecretStatus{}, 0, fmt.Errorf("decode status %s/%s: %w", tenant, secret, err)
	}
	return st, e.Revision(), nil
}

// UpdateSecretStatus applies fn to the current status and stores the result
// with compare-and-set, retrying on a concurrent update.
func (s *State) UpdateSecretStatus(ctx context.Context, tenant, secret string, fn func(*SecretStatus) error) (SecretStatus, error) {
	for attempt := 0; attempt < 20; attempt++ {
		st, rev, err := s.getStatus(ctx, tenant, secret)
		if err != nil {
			return SecretStatus{}, err
		}
		if err := fn(&st); err != nil {
			return SecretStatus{}, err
		}
		b, err := json.Marshal(st)
		if err != nil {
			return SecretStatus{}, fmt.Errorf("encode status: %w", err)
		}
		if rev == 0 {
			_, err = s.status.Create(ctx, refKey(tenant, secret), b)
		} else {
			_, err = s.status.Update(ctx, refKey(tenant, secret), b, rev)
		}
		if err == nil {
			return st, nil
		}
		if !IsConflict(err) {
			return SecretStatus{}, fmt.Errorf("write status %s/%s: %w", tenant, secret, err)
		}
	}
	return SecretStatus{}, fmt.Errorf("write status %s/%s: too many concurrent updates", tenant, secret)
}

// TenantState returns whether a tenant is revoked.
func (s *State) TenantState(ctx context.Context, tenant string) (TenantState, error) {
	e, err := s.tenants.Get(ctx, tenant)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return TenantState{Tenant: tenant}, nil
	}
	if err != nil {
		return TenantState{}, fmt.Errorf("read tenant %s: %w", tenant, err)
	}
	var ts TenantState
	if err := json.Unmarshal(e.Value(), &ts); err != nil {
		return TenantState{}, fmt.Errorf("decode tenant %s: %w", tenant, err)
	}
	return ts, nil
}

// IsRevoked is TenantState reduced to a bool, for fail-closed checks.
func (s *State) IsRevoked(ctx context.Context, tenant string) (bool, error) {
	ts, err := s.TenantState(ctx, tenant)
	if err != nil {
		return true, err // fail closed
	}
	return ts.Revoked, nil
}

// SetTenantState stores a tenant's revocation state.
func (s *State) SetTenantState(ctx context.Context, ts TenantState) error {
	b, err := json.Marshal(ts)
	if err != nil {
		return fmt.Errorf("encode tenant state: %w", err)
	}
	if _, err := s.tenants.Put(ctx, ts.Tenant, b); err != nil {
		return fmt.Errorf("write tenant %s: %w", ts.Tenant, err)
	}
	return nil
}

// Lock is a lease on a name held in the locks bucket; it expires after the
// bucket TTL unless refreshed, so a crashed holder does not block forever.
type Lock struct {
	kv    jetstream.KeyValue
	key   string
	owner string
	rev   uint64
}

// Lock takes the named lock for owner, or returns ErrLocked.
func (s *State) Lock(ctx context.Context, name, owner string) (*Lock, error) {
	rev, err := s.locks.Create(ctx, name, []byte(owner))
	if IsConflict(err) {
		return nil, fmt.Errorf("lock %s: %w", name, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return &Lock{kv: s.locks, key: name, owner: owner, rev: rev}, nil
}

// Refresh extends the lease; it fails if the lock was lost.
func (l *Lock) Refresh(ctx context.Context) error {
	rev, err := l.kv.Update(ctx, l.key, []byte(l.owner), l.rev)
	if err != nil {
		return fmt.Errorf("refresh lock %s: %w", l.key, err)
	}
	l.rev = rev
	return nil
}

// Release gives the lock up if still held.
func (l *Lock) Release(ctx context.Context) error {
	if err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev)); err != nil {
		return fmt.Errorf("release lock %s: %w", l.key, err)
	}
	return nil
}
