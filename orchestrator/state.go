package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/internal/retry"
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

// ErrCorruptState is returned (wrapped) for a stored state entry that does
// not decode strictly: unknown or missing fields, wrong types, trailing
// data, or a key that does not match its content. Readers fail closed on
// it: a tenant whose state cannot be read is treated as revoked.
var ErrCorruptState = errors.New("stored state unreadable")

// State is rekey's shared state in JetStream KV: secret status, tenant
// revocation and rotation locks.
type State struct {
	*Tenants
	status jetstream.KeyValue
	locks  jetstream.KeyValue
	// known is the last status read or written here per secret, with its
	// revision: UpdateSecretStatus tries a compare-and-set from it first
	// and reads only when another writer came between (a conflict), which
	// saves a read per update on the rotation path. One entry per secret.
	knownMu sync.Mutex
	known   map[string]knownStatus
}

type knownStatus struct {
	st  SecretStatus
	rev uint64
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
	return &State{Tenants: newTenants(tenants, bus), status: status, locks: locks, known: map[string]knownStatus{}}, nil
}

// OpenState opens the state buckets, which must exist, without creating or
// changing them: for roles that may read them but not own them.
func OpenState(ctx context.Context, bus *Bus) (*State, error) {
	var kvs [3]jetstream.KeyValue
	for i, b := range []string{BucketStatus, BucketTenants, BucketLocks} {
		kv, err := openKV(ctx, bus, b)
		if err != nil {
			return nil, err
		}
		kvs[i] = kv
	}
	return &State{Tenants: newTenants(kvs[1], bus), status: kvs[0], locks: kvs[2], known: map[string]knownStatus{}}, nil
}

// Tenants reads (and, for its owner, writes) the tenants' revocation
// state.
type Tenants struct {
	kv    jetstream.KeyValue
	log   *slog.Logger
	audit *Auditor // nil: log only
}

// OpenTenants opens the tenants bucket, which must exist, read-only: the
// fetch server's view of which tenants are revoked.
func OpenTenants(ctx context.Context, bus *Bus) (*Tenants, error) {
	kv, err := openKV(ctx, bus, BucketTenants)
	if err != nil {
		return nil, err
	}
	return &Tenants{kv: kv, log: bus.log}, nil
}

func newTenants(kv jetstream.KeyValue, bus *Bus) *Tenants {
	return &Tenants{kv: kv, log: bus.log, audit: NewAuditor(bus, "rekeyd/state", bus.log)}
}

func openKV(ctx context.Context, bus *Bus, bucket string) (jetstream.KeyValue, error) {
	ctx, cancel := retry.WithDefaultTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := bus.JS.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("open kv %s: %w", bucket, err)
	}
	return kv, nil
}

// decodeStrict is schemas.DecodeStrict with its error wrapping
// ErrCorruptState.
func decodeStrict(data []byte, v any, required ...string) error {
	if err := schemas.DecodeStrict(data, v, required...); err != nil {
		return fmt.Errorf("%w: %w", ErrCorruptState, err)
	}
	return nil
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
	err = decodeStrict(e.Value(), &st, "tenant", "secret", "state")
	if err == nil && (st.Tenant != tenant || st.Secret != secret) {
		err = fmt.Errorf("%w: entry names %s/%s", ErrCorruptState, st.Tenant, st.Secret)
	}
	if err == nil && st.State != SecretIdle && st.State != SecretRotating && st.State != SecretFailed {
		err = fmt.Errorf("%w: state %q", ErrCorruptState, st.State)
	}
	if err != nil {
		return SecretStatus{}, 0, fmt.Errorf("decode status %s/%s: %w", tenant, secret, err)
	}
	s.remember(tenant, secret, st, e.Revision())
	return st, e.Revision(), nil
}

// remember keeps st at rev as the last known status of tenant/secret.
func (s *State) remember(tenant, secret string, st SecretStatus, rev uint64) {
	s.knownMu.Lock()
	defer s.knownMu.Unlock()
	if k, ok := s.known[refKey(tenant, secret)]; !ok || k.rev <= rev {
		s.known[refKey(tenant, secret)] = knownStatus{st: st, rev: rev}
	}
}

// lastKnown returns the last status read or written here, if any.
func (s *State) lastKnown(tenant, secret string) (SecretStatus, uint64, bool) {
	s.knownMu.Lock()
	defer s.knownMu.Unlock()
	k, ok := s.known[refKey(tenant, secret)]
	return k.st, k.rev, ok
}

// UpdateSecretStatus applies fn to the current status and stores the result
// with compare-and-set, retrying on a concurrent update. It starts from
// the last status this State read or wrote, which is current unless
// another writer came between: then the compare-and-set fails and it reads.
func (s *State) UpdateSecretStatus(ctx context.Context, tenant, secret string, fn func(*SecretStatus) error) (SecretStatus, error) {
	st, rev, known := s.lastKnown(tenant, secret)
	for attempt := 0; attempt < 20; attempt++ {
		if !known {
			var err error
			if st, rev, err = s.getStatus(ctx, tenant, secret); err != nil {
				return SecretStatus{}, err
			}
		}
		fromKnown := known
		known = false // after a conflict, read
		if err := fn(&st); err != nil {
			if fromKnown {
				continue // it may not hold of the current status: read it
			}
			return SecretStatus{}, err
		}
		b, err := json.Marshal(st)
		if err != nil {
			return SecretStatus{}, fmt.Errorf("encode status: %w", err)
		}
		var next uint64
		if rev == 0 {
			next, err = s.status.Create(ctx, refKey(tenant, secret), b)
		} else {
			next, err = s.status.Update(ctx, refKey(tenant, secret), b, rev)
		}
		if err == nil {
			s.remember(tenant, secret, st, next)
			return st, nil
		}
		if !IsConflict(err) {
			return SecretStatus{}, fmt.Errorf("write status %s/%s: %w", tenant, secret, err)
		}
	}
	return SecretStatus{}, fmt.Errorf("write status %s/%s: too many concurrent updates", tenant, secret)
}

// TenantState returns whether a tenant is revoked. A tenant never revoked
// has no entry. An entry that does not decode strictly (see DecodeStrict),
// or names another tenant, is an error wrapping ErrCorruptState, audited
// when this role may write audit records.
func (s *Tenants) TenantState(ctx context.Context, tenant string) (TenantState, error) {
	e, err := s.kv.Get(ctx, tenant)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return TenantState{Tenant: tenant}, nil
	}
	if err != nil {
		return TenantState{}, fmt.Errorf("read tenant %s: %w", tenant, err)
	}
	var ts TenantState
	err = decodeStrict(e.Value(), &ts, "tenant", "revoked")
	if err == nil && ts.Tenant != tenant {
		err = fmt.Errorf("%w: entry names tenant %q", ErrCorruptState, ts.Tenant)
	}
	if err != nil {
		s.auditCorrupt(ctx, tenant, e.Revision(), err)
		return TenantState{}, fmt.Errorf("decode tenant %s: %w", tenant, err)
	}
	return ts, nil
}

// auditCorrupt records an unreadable tenant entry. It is best effort: the
// reader fails closed whether or not the record is written (the fetch
// server's role may not write audit records; it logs).
func (s *Tenants) auditCorrupt(ctx context.Context, tenant string, rev uint64, err error) {
	s.log.Error("tenant state unreadable: treated as revoked", "component", "state", "tenant", tenant, "revision", rev, "error", err)
	if s.audit != nil {
		rec := schemas.AuditRecord{Tenant: tenant, Actor: "rekeyd", Action: "tenant.state_unreadable",
			Outcome: schemas.OutcomeRefused, Component: "state",
			Detail: map[string]string{"revision": strconv.FormatUint(rev, 10), "error": err.Error()}}
		_ = s.audit.RecordWithID(ctx, fmt.Sprintf("state-unreadable-%s-%d", tenant, rev), rec)
	}
}

// IsRevoked is TenantState reduced to a bool, for fail-closed checks: an
// unreadable state is revoked (and the error is returned).
func (s *Tenants) IsRevoked(ctx context.Context, tenant string) (bool, error) {
	ts, err := s.TenantState(ctx, tenant)
	if err != nil {
		return true, err // fail closed
	}
	return ts.Revoked, nil
}

// SetTenantState stores a tenant's revocation state.
func (s *Tenants) SetTenantState(ctx context.Context, ts TenantState) error {
	b, err := json.Marshal(ts)
	if err != nil {
		return fmt.Errorf("encode tenant state: %w", err)
	}
	if _, err := s.kv.Put(ctx, ts.Tenant, b); err != nil {
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
