package vaultfetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

// DefaultDatabaseMount is the database secrets engine mount, as in rekey's
// Vault backend.
const DefaultDatabaseMount = "database"

// DatabaseConfig says which database secrets engine roles Database reads.
type DatabaseConfig struct {
	// Mount is the database secrets engine mount; may contain {tenant}.
	// Default "database".
	Mount string
	// StaticRoles maps a secret name to a static role, read at
	// <mount>/static-creds/<role>. A role may contain {tenant}, e.g.
	// "{tenant}-app-db" (the backend's default static role name).
	StaticRoles map[string]string
	// DynamicRoles maps a secret name to a dynamic role, read at
	// <mount>/creds/<role>; each fetch creates new credentials with a
	// lease. A role may contain {tenant}, e.g. "{tenant}-readonly".
	DynamicRoles map[string]string
	// RunRoles maps a secret name to a dynamic role whose credentials are
	// made per pipeline run (agent.Agent.BeginRun, with the Database as
	// agent.Config.RunIssuer): each run gets its own, with a lease TTL at
	// most what is left of the run, revoked when the run ends. A role may
	// contain {tenant}.
	RunRoles map[string]string
	// HoldFor is how long after a fetch a lease is still renewed: set it
	// to the agent's Config.TTL, after which the agent fetches again.
	// Default agent.DefaultTTL.
	HoldFor time.Duration
	// Logger receives debug and warning logs about renewals (lease ids,
	// never credentials). Default: discard.
	Logger *slog.Logger
}

// Defaults returns c with its unset fields filled.
func (c DatabaseConfig) Defaults() DatabaseConfig {
	if c.Mount == "" {
		c.Mount = DefaultDatabaseMount
	}
	if c.HoldFor == 0 {
		c.HoldFor = agent.DefaultTTL
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate checks c after Defaults.
func (c DatabaseConfig) Validate() error {
	c = c.Defaults()
	var errs []error
	errs = append(errs, checkTemplate("database mount", c.Mount, PlaceholderTenant))
	if c.HoldFor < 0 {
		errs = append(errs, fmt.Errorf("database HoldFor %s is negative", c.HoldFor))
	}
	for _, roles := range []struct {
		name string
		m    map[string]string
	}{{"static_roles", c.StaticRoles}, {"dynamic_roles", c.DynamicRoles}, {"run_roles", c.RunRoles}} {
		for s, r := range roles.m {
			if err := schemas.ValidateID("secret", s); err != nil {
				errs = append(errs, fmt.Errorf("database %s: %w", roles.name, err))
			}
			if err := checkTemplate("database "+roles.name+"["+s+"]", r, PlaceholderTenant); err != nil {
				errs = append(errs, err)
			} else if strings.Contains(r, "/") {
				errs = append(errs, fmt.Errorf("database %s[%s] %q must not contain /", roles.name, s, r))
			}
		}
	}
	for s := range c.StaticRoles {
		if _, ok := c.DynamicRoles[s]; ok {
			errs = append(errs, fmt.Errorf("database: secret %s is both a static and a dynamic role", s))
		}
	}
	for s := range c.RunRoles {
		_, static := c.StaticRoles[s]
		_, dynamic := c.DynamicRoles[s]
		if static || dynamic {
			errs = append(errs, fmt.Errorf("database: secret %s is both a run role and a static or dynamic role", s))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vaultfetch: %w", err)
	}
	return nil
}

// leaseAPI is the part of Vault's API that renews leases (*api.Sys).
type leaseAPI interface {
	RenewWithContext(ctx context.Context, id string, increment int) (*api.Secret, error)
	RevokeWithContext(ctx context.Context, id string) error
}

// Database is an agent.Fetcher for database secrets engine credentials.
// Value is the JSON object {"username": "...", "password": "..."}
// (ParseCredentials decodes it).
//
// A static role's Version is its last_vault_rotation as Vault returns it
// (RFC 3339), which changes when the password does.
//
// A dynamic role's Version is the lease id of the new credentials. While
// Run runs, Database renews the lease of the credentials it handed out for
// a tenant's secret at about 2/3 of its TTL, asking each time for the
// lease's original duration, for as long as the agent's cache can hold
// them, and no longer:
//   - a new fetch of the same tenant's secret supersedes the lease: the
//     agent's cache holds one version per secret, so it fetched again
//     because it dropped the old one (one Database per Agent, then);
//   - HoldFor (the agent's TTL) after the fetch, the agent fetches again;
//   - an invalidation of the secret or of the tenant, when Invalidated is
//     set as the agent's Config.OnInvalidate, or Forget(version);
//   - the lease reaches its max TTL (Vault grants less than asked), is not
//     renewable, or Vault refuses the renewal (revoked, gone, denied).
//
// A lease no longer renewed is not revoked: credentials already in use
// keep working until it expires, then Vault revokes them.
type Database struct {
	cfg DatabaseConfig
	api reader
	sys leaseAPI
	log *slog.Logger

	mu     sync.Mutex
	leases map[string]*lease // by lease id
	latest map[string]string // tenant/secret -> lease id
	kick   chan struct{}     // a lease was added
	now    func() time.Time
}

var (
	_ agent.Fetcher   = (*Database)(nil)
	_ agent.RunIssuer = (*Database)(nil)
)

// lease is a dynamic credential's lease being renewed.
type lease struct {
	id, key   string // key: tenant/secret
	increment time.Duration
	fetchedAt time.Time
	expires   time.Time
	next      time.Time // when to renew
}

// NewDatabase returns a Database fetcher reading with client. It does not
// call Vault; run Run for dynamic leases to be renewed.
func NewDatabase(client *api.Client, cfg DatabaseConfig) (*Database, error) {
	if client == nil {
		return nil, errors.New("vaultfetch: nil Vault client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.Defaults()
	return &Database{
		cfg:    cfg,
		api:    client.Logical(),
		sys:    client.Sys(),
		log:    cfg.Logger.With("component", "fanout/agent/vaultfetch"),
		leases: make(map[string]*lease),
		latest: make(map[string]string),
		kick:   make(chan struct{}, 1),
		now:    time.Now,
	}, nil
}

// Secrets returns the secret names Database serves, sorted, for a Mux.
func (d *Database) Secrets() []string {
	return slices.Sorted(func(yield func(string) bool) {
		for s := range maps.Keys(d.cfg.StaticRoles) {
			if !yield(s) {
				return
			}
		}
		for s := range maps.Keys(d.cfg.DynamicRoles) {
			if !yield(s) {
				return
			}
		}
	})
}

// Fetch reads the credentials of a configured secret: a static role's
// current ones, or new ones of a dynamic role, whose lease it keeps to
// renew. An unconfigured secret is ErrNotConfigured (wrapping
// agent.ErrNotFound); a missing role agent.ErrNotFound; a 403
// ErrPermissionDenied.
func (d *Database) Fetch(ctx context.Context, tenant, secret string) (agent.Secret, error) {
	if err := schemas.ValidateRef(tenant, secret); err != nil {
		return agent.Secret{}, fmt.Errorf("vault database fetch: %w", err)
	}
	mount := fill(d.cfg.Mount, tenant, secret)
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if role, ok := d.cfg.StaticRoles[secret]; ok {
		return d.fetchStatic(ctx, tenant, secret, mount+"/static-creds/"+fill(role, tenant, secret))
	}
	if role, ok := d.cfg.DynamicRoles[secret]; ok {
		return d.fetchDynamic(ctx, tenant, secret, mount+"/creds/"+fill(role, tenant, secret))
	}
	return agent.Secret{}, fmt.Errorf("vault database fetch %s/%s: no static or dynamic role: %w: %w", tenant, secret, ErrNotConfigured, agent.ErrNotFound)
}

func (d *Database) read(ctx context.Context, op, path string) (*api.Secret, Credentials, error) {
	sec, err := d.api.ReadWithContext(ctx, path)
	if err != nil {
		return nil, Credentials{}, classify(op, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, Credentials{}, fmt.Errorf("%s: %w", op, agent.ErrNotFound)
	}
	c := Credentials{Username: str(sec.Data["username"]), Password: str(sec.Data["password"])}
	if c.Username == "" || c.Password == "" {
		return nil, Credentials{}, fmt.Errorf("%s: response without username or password", op)
	}
	return sec, c, nil
}

func (d *Database) fetchStatic(ctx context.Context, tenant, secret, path string) (agent.Secret, error) {
	op := "vault database fetch " + tenant + "/" + secret + " at " + path
	sec, c, err := d.read(ctx, op, path)
	if err != nil {
		return agent.Secret{}, err
	}
	version := str(sec.Data["last_vault_rotation"])
	if version == "" {
		return agent.Secret{}, fmt.Errorf("%s: static role without last_vault_rotation", op)
	}
	return encode(secret, version, c)
}

func (d *Database) fetchDynamic(ctx context.Context, tenant, secret, path string) (agent.Secret, error) {
	op := "vault database fetch " + tenant + "/" + secret + " at " + path
	sec, c, err := d.read(ctx, op, path)
	if err != nil {
		return agent.Secret{}, err
	}
	if sec.LeaseID == "" {
		return agent.Secret{}, fmt.Errorf("%s: response without a lease", op)
	}
	s, err := encode(secret, sec.LeaseID, c)
	if err != nil {
		return agent.Secret{}, err
	}
	d.hold(tenant+"/"+secret, sec)
	return s, nil
}

func encode(secret, version string, c Credentials) (agent.Secret, error) {
	v, err := json.Marshal(c)
	if err != nil {
		return agent.Secret{}, errors.New("vaultfetch: encode credentials")
	}
	return agent.Secret{Name: secret, Version: version, Value: v}, nil
}

// hold starts renewing the lease of sec, superseding the one handed out
// before for key.
func (d *Database) hold(key string, sec *api.Secret) {
	ttl := time.Duration(sec.LeaseDuration) * time.Second
	d.mu.Lock()
	if old, ok := d.latest[key]; ok {
		delete(d.leases, old)
		delete(d.latest, key)
		d.log.Debug("lease superseded; no longer renewed", "key", key, "lease_id", old)
	}
	if sec.Renewable && ttl > 0 {
		now := d.now()
		d.leases[sec.LeaseID] = &lease{id: sec.LeaseID, key: key, increment: ttl, fetchedAt: now,
			expires: now.Add(ttl), next: now.Add(ttl * 2 / 3)}
		d.latest[key] = sec.LeaseID
	}
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// Forget stops renewing the lease whose id is version (the Version of a
// dynamic secret). Unknown versions are ignored.
func (d *Database) Forget(version string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropLocked(version)
}

// Invalidated stops renewing the leases an invalidation made the agent
// drop: the secret's, or every one of the tenant's for a tenant-wide
// invalidation. Set it as agent.Config.OnInvalidate (or call it from
// there); it returns at once.
func (d *Database) Invalidated(ev agent.Invalidated) {
	inv := ev.Invalidation
	d.mu.Lock()
	defer d.mu.Unlock()
	if inv.Secret != "" {
		if id, ok := d.latest[inv.Tenant+"/"+inv.Secret]; ok {
			d.dropLocked(id)
		}
		return
	}
	for key, id := range d.latest {
		if strings.HasPrefix(key, inv.Tenant+"/") {
			d.dropLocked(id)
		}
	}
}

// Leases returns the ids of the leases being renewed, sorted.
func (d *Database) Leases() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.leases))
}

func (d *Database) dropLocked(id string) {
	l, ok := d.leases[id]
	if !ok {
		return
	}
	delete(d.leases, id)
	if d.latest[l.key] == id {
		delete(d.latest, l.key)
	}
}

// Run renews the leases of dynamic credentials until ctx ends, then
// returns nil. Leases are not revoked when it returns.
func (d *Database) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := d.renewDue(ctx)
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-d.kick:
		case <-timer.C:
		}
	}
}

// renewDue renews the leases that are due and returns how long to wait
// for the next one.
func (d *Database) renewDue(ctx context.Context) time.Duration {
	now := d.now()
	var due []lease
	d.mu.Lock()
	for id, l := range d.leases {
		if now.Sub(l.fetchedAt) > d.cfg.HoldFor {
			d.dropLocked(id)
			d.log.Debug("lease held longer than HoldFor; no longer renewed", "key", l.key, "lease_id", id)
			continue
		}
		if !l.next.After(now) {
			due = append(due, *l)
		}
	}
	d.mu.Unlock()
	for _, l := range due {
		if ctx.Err() != nil {
			break
		}
		d.renew(ctx, l)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	wait := time.Hour
	now = d.now()
	for _, l := range d.leases {
		wait = min(wait, max(l.next.Sub(now), 0))
	}
	return wait
}

// renew renews one lease and records the outcome, unless the lease was
// dropped meanwhile.
func (d *Database) renew(ctx context.Context, l lease) {
	rctx, cancel := context.WithTimeout(ctx, min(DefaultTimeout, max(time.Until(l.expires), time.Second)))
	defer cancel()
	sec, err := d.sys.RenewWithContext(rctx, l.id, int(l.increment/time.Second))
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	cur, ok := d.leases[l.id]
	if !ok {
		return
	}
	if err != nil && ctx.Err() != nil {
		return // Run is stopping
	}
	if err != nil {
		var re *api.ResponseError
		if (errors.As(err, &re) && re.StatusCode >= 400 && re.StatusCode < 500 && re.StatusCode != 429) || !now.Before(l.expires) {
			d.dropLocked(l.id)
			d.log.Warn("lease renewal refused or too late; no longer renewed", "key", l.key, "lease_id", l.id, "error", err)
			return
		}
		cur.next = now.Add(max(l.expires.Sub(now)/3, time.Second))
		d.log.Warn("lease renewal failed; retrying", "key", l.key, "lease_id", l.id, "retry_in", cur.next.Sub(now), "error", err)
		return
	}
	ttl := time.Duration(0)
	renewable := false
	if sec != nil {
		ttl = time.Duration(sec.LeaseDuration) * time.Second
		renewable = sec.Renewable
	}
	cur.expires = now.Add(ttl)
	if !renewable || ttl <= 0 || ttl < l.increment {
		d.dropLocked(l.id)
		d.log.Debug("lease reached its max TTL; no longer renewed", "key", l.key, "lease_id", l.id, "ttl", ttl)
		return
	}
	cur.next = now.Add(ttl * 2 / 3)
	d.log.Debug("lease renewed", "key", l.key, "lease_id", l.id, "ttl", ttl)
}

// PerRun reports whether secret is a run role (DatabaseConfig.RunRoles).
func (d *Database) PerRun(secret string) bool {
	_, ok := d.cfg.RunRoles[secret]
	return ok
}

// IssueRun makes new credentials of a run role for one run: a read of
// <mount>/creds/<role>, whose lease is then renewed with an increment of
// ttl, so that Vault itself revokes them when the run's time is up even
// if the agent is gone. They are never renewed beyond. Version is the
// lease id.
func (d *Database) IssueRun(ctx context.Context, tenant, secret, run string, ttl time.Duration) (agent.Secret, error) {
	if err := schemas.ValidateRef(tenant, secret); err != nil {
		return agent.Secret{}, fmt.Errorf("vault database run: %w", err)
	}
	role, ok := d.cfg.RunRoles[secret]
	if !ok {
		return agent.Secret{}, fmt.Errorf("vault database run %s/%s: not a run role: %w: %w", tenant, secret, ErrNotConfigured, agent.ErrNotFound)
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	path := fill(d.cfg.Mount, tenant, secret) + "/creds/" + fill(role, tenant, secret)
	op := "vault database run " + run + " " + tenant + "/" + secret + " at " + path
	sec, c, err := d.read(ctx, op, path)
	if err != nil {
		return agent.Secret{}, err
	}
	if sec.LeaseID == "" {
		return agent.Secret{}, fmt.Errorf("%s: response without a lease", op)
	}
	if secs := int((ttl + time.Second - 1) / time.Second); secs < sec.LeaseDuration {
		if _, err := d.sys.RenewWithContext(ctx, sec.LeaseID, secs); err != nil {
			_ = d.sys.RevokeWithContext(context.WithoutCancel(ctx), sec.LeaseID)
			return agent.Secret{}, fmt.Errorf("%s: bound the lease to the run: %w", op, classify(op, err))
		}
	}
	d.log.Debug("run credentials issued", "run", run, "tenant", tenant, "secret", secret, "lease_id", sec.LeaseID)
	return encode(secret, sec.LeaseID, c)
}

// RevokeRun revokes run credentials by lease id (their Version).
func (d *Database) RevokeRun(ctx context.Context, versions []string) error {
	var errs []error
	for _, id := range versions {
		if err := d.sys.RevokeWithContext(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("vault: revoke lease %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}
