// Package vault is the rekey backend for HashiCorp Vault. It rotates two
// kinds of secrets and revokes a tenant's dynamic database credentials:
//
//   - kind kv (default): a static value (a third-party API key, a password)
//     in a KV v2 mount. The rotation saga maps onto KV v2 like this:
//     Create writes a generated value to a staging path next to the secret,
//     <mount>/data/<path>/_staged/<version>, with check-and-set 0 (so the
//     same request token can stage only once, even concurrently); readers of
//     <path> still see the old value. Set and Test check the staged entry.
//     Finish writes the staged value to <path> as a new KV version with
//     check-and-set on the version it read (two writers cannot both win),
//     records the request in the secret's custom_metadata, and deletes the
//     staging entry; the previous value stays readable as the previous KV
//     version. Rollback deletes the staging entry (all its versions).
//   - kind static-role: a database secrets engine static role; Vault owns
//     the password. Create records the intent (a staging entry without any
//     value, holding the role's last_vault_rotation), Set and Test check the
//     role and the intent, Finish calls <db>/rotate-role/<role> unless the
//     role was rotated after Create already (a retried Finish, or Vault's
//     own schedule), and records the new last_vault_rotation in a KV v2
//     record at <path>; Rollback deletes the intent.
//
// Version ids are the rotation's token (the request id, as AWS Secrets
// Manager's VersionId is the ClientRequestToken), so a retried Create finds
// its version by path. Each KV version that rekey writes carries, next to
// the value, rekey_version (that id), rekey_request_id and rekey_tenant:
// the id is bound to the value atomically, agents can check that they read
// the version an invalidation named, and a write over another tenant's
// value is refused. A live value that rekey did not write has the id
// "kv-<KV version>"; a static role rotated by Vault itself has
// "vault-<last_vault_rotation>".
//
// Revocation (handlers.TenantRevoker): every dynamic role of the database
// mount whose name starts with the tenant's prefix (dynamic_role_template,
// "{tenant}-") has its leases revoked with
// sys/leases/revoke-prefix/<db>/creds/<role>, and RevokeTenant returns once
// Vault lists no lease there any more (every database user dropped). It
// uses sync=false and polls sys/leases/lookup: Vault's revocation workers
// then run in parallel and finish on their own even if rekey stops waiting
// (a synchronous call for 1,000 leases outlived a 10 s request timeout).
// One call per role, because Vault adds a "/" to a revoke-prefix prefix,
// so "creds/acme-" would match nothing.
// ForceRevokeTenant uses sys/leases/revoke-force instead: a last resort
// when the database is gone for good, since it deletes Vault's lease
// entries even when the database refused the revocation, which can leave
// live users in the database that Vault no longer knows about.
//
// Paths come from per-tenant templates (namespace, mounts, path, role
// prefix); a configuration in which two secrets or two tenants' role
// prefixes meet is refused at start, and Config.Policy prints the HCL
// policy that lets a tenant's agents read only their own paths.
//
// Namespaces (namespace_template, X-Vault-Namespace) are Vault Enterprise
// only and are untested here: the tests run a Vault OSS dev server.
package vault

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/retry"
)

// Name is the backend name used in configuration.
const Name = "vault"

var (
	_ handlers.Backend       = (*Backend)(nil)
	_ handlers.TenantRevoker = (*Backend)(nil)
)

// Keys rekey writes into KV v2 data next to the value.
const (
	keyVersion  = "rekey_version"
	keyRequest  = "rekey_request_id"
	keyTenant   = "rekey_tenant"
	keyKind     = "rekey_kind"
	keyRole     = "rekey_role"
	keyBasedOn  = "rekey_based_on"
	keyRotation = "last_vault_rotation"
)

// logical is the part of Vault's HTTP API the backend calls: the
// api.Logical of a client bound to one namespace.
type logical interface {
	ReadWithContext(ctx context.Context, path string) (*api.Secret, error)
	WriteWithContext(ctx context.Context, path string, data map[string]any) (*api.Secret, error)
	JSONMergePatch(ctx context.Context, path string, data map[string]any) (*api.Secret, error)
	DeleteWithContext(ctx context.Context, path string) (*api.Secret, error)
	ListWithContext(ctx context.Context, path string) (*api.Secret, error)
}

// Backend is the Vault backend. It is safe for concurrent use, also by
// several rekeyd replicas sharing one Vault.
type Backend struct {
	cfg    Config
	client *api.Client
	log    *slog.Logger
	// api returns the Vault API for a namespace ("" for the client's own).
	api func(namespace string) logical

	mu         sync.Mutex
	auth       *api.Secret // the last login: token, TTL, renewable
	needsLogin bool

	reauthMu sync.Mutex    // one re-login after a refused request at a time
	relogged chan struct{} // tells Run to watch the token of a re-login
}

// New validates cfg, builds the Vault client and logs in. Bad credentials
// or configuration fail New; a Vault that cannot be reached does not: the
// backend starts, calls fail with temporary errors, and Run logs in as soon
// as Vault answers. Run must run for the token to be renewed.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Backend, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("vault config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conf := api.DefaultConfig() // also reads VAULT_CACERT and the other TLS variables
	if conf.Error != nil {
		return nil, fmt.Errorf("vault: client config: %w", conf.Error)
	}
	conf.Address = cfg.Address
	conf.Timeout = cfg.Timeout
	client, err := api.NewClient(conf)
	if err != nil {
		return nil, fmt.Errorf("vault: client: %w", err)
	}
	client.ClearToken()     // NewClient takes VAULT_TOKEN; rekey uses only cfg.Auth
	client.ClearNamespace() // and VAULT_NAMESPACE; rekey uses namespace_template
	b := &Backend{cfg: cfg, client: client, log: log.With("component", "backend.vault"), relogged: make(chan struct{}, 1)}
	b.api = func(ns string) logical {
		if ns == "" {
			return client.Logical()
		}
		return client.WithNamespace(ns).Logical()
	}
	lctx, cancel := b.withTimeout(ctx)
	defer cancel()
	if err := b.login(lctx); err != nil {
		if errors.Is(err, handlers.ErrPermanent) || ctx.Err() != nil {
			return nil, err
		}
		b.log.WarnContext(ctx, "Vault login failed at start; Run retries it", "address", cfg.Address, "error", err)
		b.mu.Lock()
		b.needsLogin = true
		b.mu.Unlock()
	}
	return b, nil
}

// Name returns "vault".
func (b *Backend) Name() string { return Name }

// Config returns the configuration in use, defaults filled.
func (b *Backend) Config() Config { return b.cfg }

// Current returns the live version, or an error wrapping handlers.ErrNotFound.
func (b *Backend) Current(ctx context.Context, ref handlers.SecretRef) (handlers.Version, error) {
	loc, lg, err := b.resolve(ref)
	if err != nil {
		return handlers.Version{}, fmt.Errorf("vault: current %s: %w", ref, err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	var v handlers.Version
	if loc.kind == KindStaticRole {
		v, err = b.currentStatic(ctx, lg, loc)
	} else {
		v, err = b.currentKV(ctx, lg, loc)
	}
	if err != nil {
		return handlers.Version{}, fmt.Errorf("vault: current %s: %w", ref, err)
	}
	return v, nil
}

// Staged lists the staged versions, oldest first.
func (b *Backend) Staged(ctx context.Context, ref handlers.SecretRef) ([]handlers.Version, error) {
	loc, lg, err := b.resolve(ref)
	if err != nil {
		return nil, fmt.Errorf("vault: staged %s: %w", ref, err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	cur, err := b.currentID(ctx, lg, loc)
	if err != nil {
		return nil, fmt.Errorf("vault: staged %s: %w", ref, err)
	}
	sec, err := lg.ListWithContext(ctx, loc.stagedList())
	if err != nil {
		return nil, fmt.Errorf("vault: staged %s: %w", ref, classify("list "+loc.stagedList(), err))
	}
	var out []handlers.Version
	for _, k := range listKeys(sec) {
		if !idRE.MatchString(k) {
			continue // a sub-folder, or not ours
		}
		e, err := readKV(ctx, lg, loc.stagedData(k))
		if err != nil {
			return nil, fmt.Errorf("vault: staged %s: %w", ref, err)
		}
		if e.data == nil {
			continue
		}
		if k == cur {
			// Promoted by a Finish that could not delete its staging entry.
			b.deleteStaged(ctx, lg, loc, ref, k, "promoted version's staging entry removed")
			continue
		}
		out = append(out, handlers.Version{ID: k, Token: str(e.data[keyRequest]), CreatedAt: e.created})
	}
	slices.SortFunc(out, func(a, b handlers.Version) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Create stages a new version for token. A second call with the same token
// returns the version the first one made, while it is staged or current.
func (b *Backend) Create(ctx context.Context, ref handlers.SecretRef, token string) (handlers.Version, error) {
	loc, lg, err := b.resolve(ref)
	if err != nil {
		return handlers.Version{}, fmt.Errorf("vault: create %s: %w", ref, err)
	}
	if token == "" {
		return handlers.Version{}, fmt.Errorf("vault: create %s: empty token: %w", ref, handlers.ErrPermanent)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	id := versionID(token)

	live, err := readKV(ctx, lg, loc.dataPath())
	if err != nil {
		return handlers.Version{}, fmt.Errorf("vault: create %s: %w", ref, err)
	}
	if live.data != nil && str(live.data[keyVersion]) == id {
		return handlers.Version{ID: id, Token: str(live.data[keyRequest]), CreatedAt: live.created}, nil
	}
	data := map[string]any{keyVersion: id, keyRequest: token, keyTenant: ref.Tenant, keyKind: loc.kind}
	if loc.kind == KindStaticRole {
		role, err := b.readRole(ctx, lg, loc)
		if err != nil {
			return handlers.Version{}, fmt.Errorf("vault: create %s: %w", ref, err)
		}
		data[keyRole] = loc.role
		data[keyBasedOn] = formatTime(role.lastRotation)
	} else {
		value, err := handlers.Generate(ref.Generator)
		if err != nil {
			return handlers.Version{}, fmt.Errorf("vault: create %s: %w: %w", ref, err, handlers.ErrPermanent)
		}
		data[loc.field] = string(value)
		clear(value)
	}
	for attempt := 0; ; attempt++ {
		st, err := readKV(ctx, lg, loc.stagedData(id))
		if err != nil {
			return handlers.Version{}, fmt.Errorf("vault: create %s: %w", ref, err)
		}
		if st.data != nil {
			if t := str(st.data[keyTenant]); t != ref.Tenant {
				return handlers.Version{}, fmt.Errorf("vault: create %s: staged entry %s belongs to tenant %q: %w", ref, id, t, handlers.ErrPermanent)
			}
			return handlers.Version{ID: id, Token: str(st.data[keyRequest]), CreatedAt: st.created}, nil
		}
		if st.exists {
			// Soft-deleted by someone: clear it so check-and-set 0 can write.
			if _, err := lg.DeleteWithContext(ctx, loc.stagedMetadata(id)); err != nil {
				return handlers.Version{}, fmt.Errorf("vault: create %s: %w", ref, classify("delete "+loc.stagedMetadata(id), err))
			}
		}
		_, created, err := writeKV(ctx, lg, loc.stagedData(id), data, 0)
		if errors.Is(err, errCASMismatch) && attempt < 3 {
			continue // a concurrent Create with the same token won: read its entry
		}
		if err != nil {
			return handlers.Version{}, fmt.Errorf("vault: create %s: %w", ref, err)
		}
		b.log.InfoContext(ctx, "staged version", "tenant", ref.Tenant, "secret", ref.Secret, "kind", loc.kind, "version", id, "request_id", token)
		return handlers.Version{ID: id, Token: token, CreatedAt: created}, nil
	}
}

// Set checks that v is staged (or already promoted, for a retried
// rotation). Neither kind has a downstream system to update before Finish:
// a KV value is read by agents from Vault, and a static role's password is
// changed in the database by rotate-role in Finish.
func (b *Backend) Set(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	loc, lg, err := b.resolve(ref)
	if err != nil {
		return fmt.Errorf("vault: set %s v%s: %w", ref, v.ID, err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	if _, _, err := b.stagedOrLive(ctx, lg, loc, ref, v.ID); err != nil {
		return fmt.Errorf("vault: set %s v%s: %w", ref, v.ID, err)
	}
	return nil
}

// Test checks the staged version: a kv value is present and belongs to
// this tenant and version; a static role exists and is readable.
func (b *Backend) Test(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	loc, lg, err := b.resolve(ref)
	if err != nil {
		return fmt.Errorf("vault: test %s v%s: %w", ref, v.ID, err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	e, live, err := b.stagedOrLive(ctx, lg, loc, ref, v.ID)
	if err != nil {
		return fmt.Errorf("vault: test %s v%s: %w", ref, v.ID, err)
	}
	if loc.kind == KindStaticRole {
		if _, err := b.readRole(ctx, lg, loc); err != nil {
			return fmt.Errorf("vault: test %s v%s: %w", ref, v.ID, err)
		}
		return nil
	}
	if live {
		return nil
	}
	if s, ok := e.data[loc.field].(string); !ok || s == "" {
		return fmt.Errorf("vault: test %s v%s: staged value is empty", ref, v.ID)
	}
	return nil
}

// Finish promotes v. Finishing the live version again is a no-op.
func (b *Backend) Finish(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	loc, lg, err := b.resolve(ref)
	if err != nil {
		return fmt.Errorf("vault: finish %s v%s: %w", ref, v.ID, err)
	}
	if !idRE.MatchString(v.ID) {
		return fmt.Errorf("vault: finish %s: version id %q is not one rekey makes: %w", ref, v.ID, handlers.ErrNotFound)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	live, err := readKV(ctx, lg, loc.dataPath())
	if err != nil {
		return fmt.Errorf("vault: finish %s v%s: %w", ref, v.ID, err)
	}
	if live.data != nil && str(live.data[keyVersion]) == v.ID {
		b.deleteStaged(ctx, lg, loc, ref, v.ID, "promoted version's staging entry removed")
		return nil
	}
	if t := str(live.data[keyTenant]); t != "" && t != ref.Tenant {
		return fmt.Errorf("vault: finish %s v%s: %s holds a value of tenant %q; refusing to overwrite it: %w", ref, v.ID, loc.describe(), t, handlers.ErrPermanent)
	}
	st, err := readKV(ctx, lg, loc.stagedData(v.ID))
	if err != nil {
		return fmt.Errorf("vault: finish %s v%s: %w", ref, v.ID, err)
	}
	if st.data == nil {
		return fmt.Errorf("vault: finish %s v%s: version is not staged: %w", ref, v.ID, handlers.ErrNotFound)
	}
	if t := str(st.data[keyTenant]); t != ref.Tenant {
		return fmt.Errorf("vault: finish %s v%s: staged entry belongs to tenant %q: %w", ref, v.ID, t, handlers.ErrPermanent)
	}
	var kvVersion int
	if loc.kind == KindStaticRole {
		kvVersion, err = b.finishStatic(ctx, lg, loc, ref, v.ID, live, st)
	} else {
		kvVersion, err = b.finishKV(ctx, lg, loc, live, st)
	}
	if err != nil {
		return fmt.Errorf("vault: finish %s v%s: %w", ref, v.ID, err)
	}
	b.log.InfoContext(ctx, "promoted version", "tenant", ref.Tenant, "secret", ref.Secret, "kind", loc.kind,
		"version", v.ID, "kv_version", kvVersion, "request_id", str(st.data[keyRequest]))
	// The version is live; what follows is bookkeeping. If it fails, the
	// next Staged or Finish cleans up, so it is logged, not returned.
	if _, err := lg.JSONMergePatch(ctx, loc.metadataPath(), map[string]any{"custom_metadata": map[string]any{
		keyVersion: v.ID, keyRequest: str(st.data[keyRequest]), "rekey_kv_version": fmt.Sprint(kvVersion),
		"rekey_promoted_at": time.Now().UTC().Format(time.RFC3339Nano),
	}}); err != nil {
		b.log.WarnContext(ctx, "could not record the rotation in custom_metadata", "tenant", ref.Tenant, "secret", ref.Secret, "version", v.ID, "error", err)
	}
	b.deleteStaged(ctx, lg, loc, ref, v.ID, "")
	return nil
}

// finishKV writes the staged value to the live path as a new KV version,
// with check-and-set on the live version read before. Other fields of the
// live data (an account id next to a key...) are kept.
func (b *Backend) finishKV(ctx context.Context, lg logical, loc location, live, st kvEntry) (int, error) {
	data := map[string]any{}
	for k, val := range live.data {
		data[k] = val
	}
	for _, k := range []string{loc.field, keyVersion, keyRequest, keyTenant} {
		data[k] = st.data[k]
	}
	delete(data, keyKind)
	version, _, err := writeKV(ctx, lg, loc.dataPath(), data, live.version)
	if errors.Is(err, errCASMismatch) {
		return 0, fmt.Errorf("%s changed while it was being promoted (another writer): %w", loc.describe(), err)
	}
	return version, err
}

// Rollback removes the staged version v (all its KV versions). A version
// that is gone is not an error. The live version is never touched.
func (b *Backend) Rollback(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	loc, lg, err := b.resolve(ref)
	if err != nil {
		return fmt.Errorf("vault: rollback %s v%s: %w", ref, v.ID, err)
	}
	if !idRE.MatchString(v.ID) {
		return nil // nothing can be staged under an id rekey does not make
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	st, err := readKV(ctx, lg, loc.stagedData(v.ID))
	if err != nil {
		return fmt.Errorf("vault: rollback %s v%s: %w", ref, v.ID, err)
	}
	if !st.exists {
		return nil
	}
	if _, err := lg.DeleteWithContext(ctx, loc.stagedMetadata(v.ID)); err != nil {
		return fmt.Errorf("vault: rollback %s v%s: %w", ref, v.ID, classify("delete "+loc.stagedMetadata(v.ID), err))
	}
	b.log.InfoContext(ctx, "rolled back version", "tenant", ref.Tenant, "secret", ref.Secret, "version", v.ID)
	return nil
}

// Read returns the live version and value of a kv secret, or the current
// password of a static role. The caller owns the value and should clear it.
func (b *Backend) Read(ctx context.Context, ref handlers.SecretRef) (string, []byte, error) {
	loc, lg, err := b.resolve(ref)
	if err != nil {
		return "", nil, fmt.Errorf("vault: read %s: %w", ref, err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	if loc.kind == KindStaticRole {
		v, err := b.currentStatic(ctx, lg, loc)
		if err != nil {
			return "", nil, fmt.Errorf("vault: read %s: %w", ref, err)
		}
		creds, err := b.StaticCredentials(ctx, ref)
		if err != nil {
			return "", nil, err
		}
		return v.ID, []byte(creds.Password), nil
	}
	live, err := readKV(ctx, lg, loc.dataPath())
	if err != nil {
		return "", nil, fmt.Errorf("vault: read %s: %w", ref, err)
	}
	if live.data == nil {
		return "", nil, fmt.Errorf("vault: read %s: no live version: %w", ref, handlers.ErrNotFound)
	}
	s, ok := live.data[loc.field].(string)
	if !ok {
		return "", nil, fmt.Errorf("vault: read %s: field %q is missing or not a string: %w", ref, loc.field, handlers.ErrNotFound)
	}
	return liveID(live), []byte(s), nil
}

func (b *Backend) currentKV(ctx context.Context, lg logical, loc location) (handlers.Version, error) {
	live, err := readKV(ctx, lg, loc.dataPath())
	if err != nil {
		return handlers.Version{}, err
	}
	if live.data == nil {
		return handlers.Version{}, fmt.Errorf("no live version at %s: %w", loc.describe(), handlers.ErrNotFound)
	}
	return handlers.Version{ID: liveID(live), Token: str(live.data[keyRequest]), CreatedAt: live.created}, nil
}

// currentID is the live version's id, "" when there is none.
func (b *Backend) currentID(ctx context.Context, lg logical, loc location) (string, error) {
	var v handlers.Version
	var err error
	if loc.kind == KindStaticRole {
		v, err = b.currentStatic(ctx, lg, loc)
	} else {
		v, err = b.currentKV(ctx, lg, loc)
	}
	if errors.Is(err, handlers.ErrNotFound) {
		return "", nil
	}
	return v.ID, err
}

// stagedOrLive returns the staging entry of id, or reports that id is live.
func (b *Backend) stagedOrLive(ctx context.Context, lg logical, loc location, ref handlers.SecretRef, id string) (kvEntry, bool, error) {
	if !idRE.MatchString(id) {
		return kvEntry{}, false, fmt.Errorf("version is not staged: %w", handlers.ErrNotFound)
	}
	st, err := readKV(ctx, lg, loc.stagedData(id))
	if err != nil {
		return kvEntry{}, false, err
	}
	if st.data != nil {
		if t := str(st.data[keyTenant]); t != ref.Tenant {
			return kvEntry{}, false, fmt.Errorf("staged entry belongs to tenant %q: %w", t, handlers.ErrPermanent)
		}
		return st, false, nil
	}
	cur, err := b.currentID(ctx, lg, loc)
	if err != nil {
		return kvEntry{}, false, err
	}
	if cur == id {
		return kvEntry{}, true, nil
	}
	return kvEntry{}, false, fmt.Errorf("version is not staged: %w", handlers.ErrNotFound)
}

// deleteStaged removes a staging entry, logging (not returning) a failure.
func (b *Backend) deleteStaged(ctx context.Context, lg logical, loc location, ref handlers.SecretRef, id, msg string) {
	if _, err := lg.DeleteWithContext(ctx, loc.stagedMetadata(id)); err != nil {
		b.log.WarnContext(ctx, "could not delete a staging entry; the next rotation removes it", "tenant", ref.Tenant, "secret", ref.Secret, "version", id, "error", err)
		return
	}
	if msg != "" {
		b.log.InfoContext(ctx, msg, "tenant", ref.Tenant, "secret", ref.Secret, "version", id)
	}
}

// resolve locates ref and returns the API for its namespace.
func (b *Backend) resolve(ref handlers.SecretRef) (location, logical, error) {
	loc, err := b.cfg.locate(ref)
	if err != nil {
		return location{}, nil, err
	}
	return loc, b.logical(loc.namespace), nil
}

// logical is the API for a namespace, with one retry after a re-login when
// Vault refuses a request because the token is no longer valid.
func (b *Backend) logical(ns string) logical { return reauth{b: b, ns: ns} }

func (b *Backend) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return retry.WithDefaultTimeout(ctx, b.cfg.Timeout)
}

// idRE is a version id rekey makes: safe as one path segment.
var idRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$`)

// versionID is the version id for a token: the token itself when it is
// safe as a path segment (request ids are ULIDs), else a hash of it.
func versionID(token string) string {
	if idRE.MatchString(token) && token != stagedSegment {
		return token
	}
	sum := sha256.Sum256([]byte(token))
	return "h-" + hex.EncodeToString(sum[:16])
}

// liveID is the rekey version of a live KV entry, or kv-<n> for a value
// written by someone else.
func liveID(e kvEntry) string {
	if id := str(e.data[keyVersion]); id != "" {
		return id
	}
	return fmt.Sprintf("kv-%d", e.version)
}

// kvEntry is one KV v2 read.
type kvEntry struct {
	exists  bool           // the key has at least one version (maybe deleted)
	version int            // the version read (the latest), 0 when none
	data    map[string]any // nil when there is none, or it is deleted or destroyed
	created time.Time
}

// readKV reads the latest version of a KV v2 data path.
func readKV(ctx context.Context, lg logical, path string) (kvEntry, error) {
	sec, err := lg.ReadWithContext(ctx, path)
	if err != nil {
		return kvEntry{}, classify("read "+path, err)
	}
	if sec == nil || sec.Data == nil {
		return kvEntry{}, nil
	}
	e := kvEntry{exists: true}
	if md, ok := sec.Data["metadata"].(map[string]any); ok {
		e.version = toInt(md["version"])
		e.created, _ = time.Parse(time.RFC3339Nano, str(md["created_time"]))
	}
	if d, ok := sec.Data["data"].(map[string]any); ok {
		e.data = d
	}
	return e, nil
}

var errCASMismatch = errors.New("check-and-set mismatch")

// writeKV writes data as a new version of a KV v2 data path with
// check-and-set cas (0: only if the key does not exist).
func writeKV(ctx context.Context, lg logical, path string, data map[string]any, cas int) (int, time.Time, error) {
	sec, err := lg.WriteWithContext(ctx, path, map[string]any{"data": data, "options": map[string]any{"cas": cas}})
	if err != nil {
		var re *api.ResponseError
		if errors.As(err, &re) && re.StatusCode == 400 && strings.Contains(strings.Join(re.Errors, " "), "check-and-set") {
			return 0, time.Time{}, fmt.Errorf("write %s: %w", path, errCASMismatch)
		}
		return 0, time.Time{}, classify("write "+path, err)
	}
	if sec == nil {
		return 0, time.Time{}, fmt.Errorf("write %s: empty response", path)
	}
	created, _ := time.Parse(time.RFC3339Nano, str(sec.Data["created_time"]))
	return toInt(sec.Data["version"]), created, nil
}

// classify wraps a Vault error for the workers: 404 is handlers.ErrNotFound,
// 400 (a request Vault will never accept: bad path, unknown role...) is
// handlers.ErrPermanent, and everything else (no connection, 5xx, 429, 403
// from a token that expired before Run logged in again) is temporary.
// Vault's errors name paths, never values.
func classify(op string, err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case 404:
			return fmt.Errorf("%s: %w: %w", op, err, handlers.ErrNotFound)
		case 400, 405:
			return fmt.Errorf("%s: %w: %w", op, err, handlers.ErrPermanent)
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}

func listKeys(sec *api.Secret) []string {
	if sec == nil || sec.Data == nil {
		return nil
	}
	raw, _ := sec.Data["keys"].([]any)
	out := make([]string, 0, len(raw))
	for _, k := range raw {
		if s, ok := k.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func toInt(v any) int {
	switch n := v.(type) {
	case json.Number:
		i, _ := n.Int64()
		return int(i)
	case float64:
		return int(n)
	case int:
		return n
	}
	return 0
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}
