// Package local is the backend that keeps secret values inside rekey, in a
// JetStream KV bucket, encrypted with AES-256-GCM. It is the backend for the
// demo and for platforms that have neither Vault nor AWS Secrets Manager.
//
// Each secret is one KV entry, key "<tenant>.<secret>", holding a JSON record
// with the current, previous and staged versions. Every change is a
// compare-and-set on the entry's revision, so any number of workers and
// rekeyd replicas may drive the same bucket.
package local

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/schemas"
)

// Name is the backend name used in configuration.
const Name = "local"

// Defaults for Config.
const (
	DefaultBucket   = "rekey_local"
	DefaultReplicas = 1
	// KeySize is the AES-256 key length in bytes.
	KeySize = 32
)

const (
	// defaultTimeout bounds a call whose ctx has no deadline.
	defaultTimeout = 10 * time.Second
	// maxAttempts bounds the compare-and-set retry loop.
	maxAttempts = 100
)

var (
	_ handlers.Backend     = (*Backend)(nil)
	_ handlers.Provisioner = (*Backend)(nil)
)

var bucketRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// Config configures the local backend.
type Config struct {
	// Key is the 32-byte AES-256 key that encrypts every value.
	Key []byte
	// Bucket is the JetStream KV bucket; default "rekey_local".
	Bucket string
	// Replicas of the bucket's stream; default 1.
	Replicas int
}

// Defaults returns c with unset fields filled.
func (c Config) Defaults() Config {
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	return c
}

// Validate checks c after filling defaults. Its errors never show the key.
func (c Config) Validate() error {
	c = c.Defaults()
	var errs []error
	if len(c.Key) != KeySize {
		errs = append(errs, fmt.Errorf("key is %d bytes, want %d", len(c.Key), KeySize))
	}
	if !bucketRE.MatchString(c.Bucket) {
		errs = append(errs, fmt.Errorf("bucket %q must match %s", c.Bucket, bucketRE))
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas %d must be between 1 and 5", c.Replicas))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("local config: %w", err)
	}
	return nil
}

// Backend is the local backend. It is safe for concurrent use, also by
// several processes sharing the bucket.
type Backend struct {
	kv   jetstream.KeyValue
	aead cipher.AEAD
	log  *slog.Logger
	// known is the last record read or written here per secret with its
	// revision (values encrypted, as stored): a read of the same revision
	// is not decoded again, and an update starts from it, reading only
	// when another writer came between. One entry per secret.
	knownMu sync.Mutex
	known   map[string]knownRecord
}

type knownRecord struct {
	r   record
	rev uint64
}

// remember keeps r at rev as the last known record of k.
func (b *Backend) remember(k string, r record, rev uint64) {
	b.knownMu.Lock()
	defer b.knownMu.Unlock()
	if cur, ok := b.known[k]; !ok || cur.rev <= rev {
		b.known[k] = knownRecord{r: r.clone(), rev: rev}
	}
}

// lastKnown returns a copy of the last known record of k.
func (b *Backend) lastKnown(k string) (record, uint64, bool) {
	b.knownMu.Lock()
	defer b.knownMu.Unlock()
	cur, ok := b.known[k]
	return cur.r.clone(), cur.rev, ok
}

// knownAt returns a copy of the known record of k if it is at rev.
func (b *Backend) knownAt(k string, rev uint64) (record, bool) {
	b.knownMu.Lock()
	defer b.knownMu.Unlock()
	cur, ok := b.known[k]
	if !ok || cur.rev != rev {
		return record{}, false
	}
	return cur.r.clone(), true
}

// clone copies r so that changing the copy's versions leaves r as it is
// (ciphertexts are replaced, never changed in place).
func (r record) clone() record {
	r.Versions = slices.Clone(r.Versions)
	return r
}

// New opens (creating it if needed) the KV bucket and returns the backend.
func New(ctx context.Context, js jetstream.JetStream, cfg Config, log *slog.Logger) (*Backend, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	block, err := aes.NewCipher(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("local: cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("local: cipher: %w", err)
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "rekey local backend: encrypted secret values",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("local: create bucket %s: %w", cfg.Bucket, err)
	}
	return &Backend{kv: kv, aead: aead, log: log.With("component", "backend.local"), known: map[string]knownRecord{}}, nil
}

// Reader returns a view of b that reads through js, another connection's
// JetStream, and can only read: the fetch server's, whose NATS user may
// read the bucket but not write it. The bucket must exist.
func (b *Backend) Reader(ctx context.Context, js jetstream.JetStream) (*Backend, error) {
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	kv, err := js.KeyValue(ctx, b.kv.Bucket())
	if err != nil {
		return nil, fmt.Errorf("local: open bucket %s to read: %w", b.kv.Bucket(), err)
	}
	return &Backend{kv: kv, aead: b.aead, log: b.log, known: map[string]knownRecord{}}, nil
}

// Name returns "local".
func (b *Backend) Name() string { return Name }

// record is the JSON stored under one secret's key.
type record struct {
	Current  string `json:"current,omitempty"`
	Previous string `json:"previous,omitempty"`
	// LastID is the last version number handed out; numbers are never reused,
	// not even after a rollback.
	LastID   uint64          `json:"last_id"`
	Versions []storedVersion `json:"versions,omitempty"`
}

// storedVersion is one version: staged, current or previous.
type storedVersion struct {
	ID        string    `json:"id"`
	Token     string    `json:"token,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	Staged    bool      `json:"staged,omitempty"`
	// Ciphertext is nonce || AES-256-GCM(value), with the additional data
	// "tenant/secret/version".
	Ciphertext []byte `json:"ciphertext"`
}

func (r *record) find(id string) *storedVersion {
	for i := range r.Versions {
		if r.Versions[i].ID == id {
			return &r.Versions[i]
		}
	}
	return nil
}

func (sv *storedVersion) version() handlers.Version {
	return handlers.Version{ID: sv.ID, Token: sv.Token, CreatedAt: sv.CreatedAt}
}

// Current returns the live version, or an error wrapping handlers.ErrNotFound.
func (b *Backend) Current(ctx context.Context, ref handlers.SecretRef) (handlers.Version, error) {
	if err := checkRef(ref); err != nil {
		return handlers.Version{}, fmt.Errorf("local: current %s: %w", ref, err)
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	r, _, err := b.load(ctx, ref)
	if err != nil {
		return handlers.Version{}, fmt.Errorf("local: current %s: %w", ref, err)
	}
	sv := r.find(r.Current)
	if sv == nil {
		return handlers.Version{}, fmt.Errorf("local: current %s: no version: %w", ref, handlers.ErrNotFound)
	}
	return sv.version(), nil
}

// Staged lists the staged versions, oldest first.
func (b *Backend) Staged(ctx context.Context, ref handlers.SecretRef) ([]handlers.Version, error) {
	if err := checkRef(ref); err != nil {
		return nil, fmt.Errorf("local: staged %s: %w", ref, err)
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	r, _, err := b.load(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("local: staged %s: %w", ref, err)
	}
	var out []handlers.Version
	for i := range r.Versions {
		if r.Versions[i].Staged {
			out = append(out, r.Versions[i].version())
		}
	}
	return out, nil
}

// Create stages a new generated value. A second call with the same token
// returns the version the first one made, while it is staged or current.
func (b *Backend) Create(ctx context.Context, ref handlers.SecretRef, token string) (handlers.Version, error) {
	if err := checkRef(ref); err != nil {
		return handlers.Version{}, fmt.Errorf("local: create %s: %w", ref, err)
	}
	if token == "" {
		return handlers.Version{}, fmt.Errorf("local: create %s: empty token: %w", ref, handlers.ErrPermanent)
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()

	var value []byte
	defer func() { clear(value) }()
	var out handlers.Version
	var created bool
	err := b.update(ctx, ref, func(r *record) (bool, error) {
		for i := range r.Versions {
			sv := &r.Versions[i]
			if sv.Token == token && (sv.Staged || sv.ID == r.Current) {
				out, created = sv.version(), false
				return false, nil
			}
		}
		if value == nil {
			v, err := handlers.Generate(ref.Generator)
			if err != nil {
				return false, fmt.Errorf("%w: %w", err, handlers.ErrPermanent)
			}
			value = v
		}
		sv, err := b.newVersion(ref, r, token, value)
		if err != nil {
			return false, err
		}
		sv.Staged = true
		r.Versions = append(r.Versions, sv)
		out, created = sv.version(), true
		return true, nil
	})
	if err != nil {
		return handlers.Version{}, fmt.Errorf("local: create %s: %w", ref, err)
	}
	if created {
		b.log.InfoContext(ctx, "staged version", "tenant", ref.Tenant, "secret", ref.Secret, "version", out.ID, "request_id", token)
	}
	return out, nil
}

// Set has no downstream system to update; it checks that v is staged (or
// already promoted, for a retried rotation).
func (b *Backend) Set(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	if _, err := b.liveOrStaged(ctx, ref, v); err != nil {
		return fmt.Errorf("local: set %s v%s: %w", ref, v.ID, err)
	}
	return nil
}

// Test decrypts the value of v (staged, or already promoted) and checks it is
// not empty.
func (b *Backend) Test(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	sv, err := b.liveOrStaged(ctx, ref, v)
	if err != nil {
		return fmt.Errorf("local: test %s v%s: %w", ref, v.ID, err)
	}
	value, err := b.open(ref, sv.ID, sv.Ciphertext)
	if err != nil {
		return fmt.Errorf("local: test %s v%s: %w", ref, v.ID, err)
	}
	defer clear(value)
	if len(value) == 0 {
		return fmt.Errorf("local: test %s v%s: value is empty", ref, v.ID)
	}
	return nil
}

func (b *Backend) liveOrStaged(ctx context.Context, ref handlers.SecretRef, v handlers.Version) (storedVersion, error) {
	if err := checkRef(ref); err != nil {
		return storedVersion{}, err
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	r, _, err := b.load(ctx, ref)
	if err != nil {
		return storedVersion{}, err
	}
	sv := r.find(v.ID)
	if sv == nil || !(sv.Staged || sv.ID == r.Current) {
		return storedVersion{}, fmt.Errorf("version is not staged: %w", handlers.ErrNotFound)
	}
	return *sv, nil
}

// Finish promotes v; the old current version becomes previous and any older
// version is pruned. Finishing the current version again is a no-op, and so
// is finishing the previous one (it was promoted once, then superseded).
func (b *Backend) Finish(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	if err := checkRef(ref); err != nil {
		return fmt.Errorf("local: finish %s v%s: %w", ref, v.ID, err)
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	var previous string
	var promoted bool
	err := b.update(ctx, ref, func(r *record) (bool, error) {
		promoted = false
		sv := r.find(v.ID)
		switch {
		case r.Current == v.ID:
			return false, nil
		case sv == nil:
			return false, fmt.Errorf("version is not staged: %w", handlers.ErrNotFound)
		case !sv.Staged:
			return false, nil
		}
		sv.Staged = false
		r.Previous, r.Current = r.Current, v.ID
		r.Versions = slices.DeleteFunc(r.Versions, func(x storedVersion) bool {
			return !x.Staged && x.ID != r.Current && x.ID != r.Previous
		})
		previous, promoted = r.Previous, true
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("local: finish %s v%s: %w", ref, v.ID, err)
	}
	if promoted {
		b.log.InfoContext(ctx, "promoted version", "tenant", ref.Tenant, "secret", ref.Secret, "version", v.ID, "previous_version", previous)
	}
	return nil
}

// Rollback removes the staged version v. A version that is gone is not an
// error; the current version cannot be rolled back (ErrPermanent).
func (b *Backend) Rollback(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	if err := checkRef(ref); err != nil {
		return fmt.Errorf("local: rollback %s v%s: %w", ref, v.ID, err)
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	var removed bool
	err := b.update(ctx, ref, func(r *record) (bool, error) {
		removed = false
		if r.Current == v.ID {
			return false, fmt.Errorf("version is already promoted: %w", handlers.ErrPermanent)
		}
		n := len(r.Versions)
		r.Versions = slices.DeleteFunc(r.Versions, func(x storedVersion) bool { return x.Staged && x.ID == v.ID })
		removed = len(r.Versions) != n
		return removed, nil
	})
	if err != nil {
		return fmt.Errorf("local: rollback %s v%s: %w", ref, v.ID, err)
	}
	if removed {
		b.log.InfoContext(ctx, "rolled back version", "tenant", ref.Tenant, "secret", ref.Secret, "version", v.ID)
	}
	return nil
}

// Ensure gives a secret that has no current version a first one, promoted
// at once. created is false when the secret already had a current version.
func (b *Backend) Ensure(ctx context.Context, ref handlers.SecretRef) (handlers.Version, bool, error) {
	if err := checkRef(ref); err != nil {
		return handlers.Version{}, false, fmt.Errorf("local: ensure %s: %w", ref, err)
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	var value []byte
	defer func() { clear(value) }()
	var out handlers.Version
	var created bool
	err := b.update(ctx, ref, func(r *record) (bool, error) {
		if sv := r.find(r.Current); sv != nil {
			out, created = sv.version(), false
			return false, nil
		}
		if value == nil {
			v, err := handlers.Generate(ref.Generator)
			if err != nil {
				return false, fmt.Errorf("%w: %w", err, handlers.ErrPermanent)
			}
			value = v
		}
		sv, err := b.newVersion(ref, r, "", value)
		if err != nil {
			return false, err
		}
		r.Versions = append(r.Versions, sv)
		r.Current = sv.ID
		out, created = sv.version(), true
		return true, nil
	})
	if err != nil {
		return handlers.Version{}, false, fmt.Errorf("local: ensure %s: %w", ref, err)
	}
	if created {
		b.log.InfoContext(ctx, "created first version", "tenant", ref.Tenant, "secret", ref.Secret, "version", out.ID)
	}
	return out, created, nil
}

// Read returns the current version and its decrypted value. The caller owns
// the value and should clear it when done.
func (b *Backend) Read(ctx context.Context, ref handlers.SecretRef) (string, []byte, error) {
	if err := checkRef(ref); err != nil {
		return "", nil, fmt.Errorf("local: read %s: %w", ref, err)
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	r, _, err := b.load(ctx, ref)
	if err != nil {
		return "", nil, fmt.Errorf("local: read %s: %w", ref, err)
	}
	sv := r.find(r.Current)
	if sv == nil {
		return "", nil, fmt.Errorf("local: read %s: no version: %w", ref, handlers.ErrNotFound)
	}
	value, err := b.open(ref, sv.ID, sv.Ciphertext)
	if err != nil {
		return "", nil, fmt.Errorf("local: read %s v%s: %w", ref, sv.ID, err)
	}
	return sv.ID, value, nil
}

// newVersion allocates the next version number of r and encrypts value for it.
func (b *Backend) newVersion(ref handlers.SecretRef, r *record, token string, value []byte) (storedVersion, error) {
	r.LastID++
	id := strconv.FormatUint(r.LastID, 10)
	ct, err := b.seal(ref, id, value)
	if err != nil {
		return storedVersion{}, err
	}
	return storedVersion{ID: id, Token: token, CreatedAt: time.Now().UTC(), Ciphertext: ct}, nil
}

func key(ref handlers.SecretRef) string { return ref.Tenant + "." + ref.Secret }

// aad binds a ciphertext to its tenant, secret and version. IDs cannot hold
// '/', so the encoding is unambiguous.
func aad(ref handlers.SecretRef, id string) []byte {
	return []byte(ref.Tenant + "/" + ref.Secret + "/" + id)
}

func (b *Backend) seal(ref handlers.SecretRef, id string, value []byte) ([]byte, error) {
	nonce := make([]byte, b.aead.NonceSize(), b.aead.NonceSize()+len(value)+b.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return b.aead.Seal(nonce, nonce, value, aad(ref, id)), nil
}

func (b *Backend) open(ref handlers.SecretRef, id string, ct []byte) ([]byte, error) {
	ns := b.aead.NonceSize()
	if len(ct) < ns+b.aead.Overhead() {
		return nil, fmt.Errorf("decrypt: ciphertext is %d bytes, too short", len(ct))
	}
	value, err := b.aead.Open(nil, ct[:ns], ct[ns:], aad(ref, id))
	if err != nil {
		return nil, fmt.Errorf("decrypt (wrong key, or a ciphertext of another secret or version): %w", err)
	}
	return value, nil
}

// load reads a secret's record; a missing key is an empty record at revision 0.
func (b *Backend) load(ctx context.Context, ref handlers.SecretRef) (record, uint64, error) {
	e, err := b.kv.Get(ctx, key(ref))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return record{}, 0, nil
	}
	if err != nil {
		return record{}, 0, fmt.Errorf("get %s: %w", key(ref), err)
	}
	if r, ok := b.knownAt(key(ref), e.Revision()); ok {
		return r, e.Revision(), nil // the revision it was decoded (or written) at
	}
	var r record
	if err := schemas.DecodeStrict(e.Value(), &r, "last_id"); err != nil {
		return record{}, 0, fmt.Errorf("decode record %s at revision %d: %w", key(ref), e.Revision(), err)
	}
	b.remember(key(ref), r, e.Revision())
	return r, e.Revision(), nil
}

// update applies fn to the latest record and writes it back if fn reports a
// change, as a compare-and-set on the entry's revision. On a conflict it
// reloads and calls fn again, so fn must set all its results on every call.
func (b *Backend) update(ctx context.Context, ref handlers.SecretRef, fn func(*record) (bool, error)) error {
	k := key(ref)
	r, rev, known := b.lastKnown(k)
	for attempt := 1; ; attempt++ {
		fromKnown := known
		if !known {
			var err error
			if r, rev, err = b.load(ctx, ref); err != nil {
				return err
			}
		}
		known = false // after a conflict, read
		changed, err := fn(&r)
		if fromKnown && (err != nil || !changed) {
			attempt-- // decide on the stored record, not on the one known here
			continue
		}
		if err != nil || !changed {
			return err
		}
		data, err := json.Marshal(&r)
		if err != nil {
			return fmt.Errorf("encode record %s: %w", k, err)
		}
		var next uint64
		if rev == 0 {
			next, err = b.kv.Create(ctx, k, data)
		} else {
			next, err = b.kv.Update(ctx, k, data, rev)
		}
		if err == nil {
			b.remember(k, r, next)
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("write %s: %w", k, err)
		}
		if fromKnown {
			attempt-- // the known record was stale: not a conflict with a writer
			continue
		}
		if attempt == maxAttempts {
			return fmt.Errorf("write %s: gave up after %d conflicting writes: %w", k, attempt, handlers.ErrBusy)
		}
		// Full jitter, so that writers that conflicted spread apart.
		if !retry.Sleep(ctx, time.Millisecond+mrand.N(writeBackoff.Delay(attempt))) {
			return fmt.Errorf("write %s: %w", k, ctx.Err())
		}
	}
}

// writeBackoff bounds the delay between conflicting writes: from 1ms
// plus up to 2ms, growing to 1ms plus up to 50ms.
var writeBackoff = retry.Backoff{Initial: 2 * time.Millisecond, Max: 50 * time.Millisecond}

// checkRef refuses IDs that are not safe as KV key and subject tokens.
func checkRef(ref handlers.SecretRef) error {
	if err := schemas.ValidateRef(ref.Tenant, ref.Secret); err != nil {
		return fmt.Errorf("%w: %w", err, handlers.ErrPermanent)
	}
	return nil
}
