// Package daemon assembles rekeyd: it builds the concrete backends,
// triggers, workers and fanout from the configuration and runs them
// together. cmd/rekeyd, the demo, the benchmarks and the end-to-end tests
// all start rekey through it.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/fanout"
	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/awssm"
	"github.com/rekey-dev/rekey/handlers/local"
	"github.com/rekey-dev/rekey/handlers/vault"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/agentauth"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/api"
	"github.com/rekey-dev/rekey/triggers/api/tenantauth"
	"github.com/rekey-dev/rekey/triggers/leak"
)

// Options are what New needs besides the config.
type Options struct {
	Config orchestrator.Config
	Logger *slog.Logger
	// AdminToken overrides the token file (REKEY_ADMIN_TOKEN).
	AdminToken string
	// Worker tunes the workers' consumption (tests shorten it).
	Worker handlers.WorkerConfig
	// StepHook, when set, runs after each successful saga step (tests).
	StepHook func(ctx context.Context, step string) error
}

// Daemon is one running rekeyd.
type Daemon struct {
	cfg         orchestrator.Config
	log         *slog.Logger
	embedded    *orchestrator.EmbeddedServer
	natsAuth    *orchestrator.NATSAuth
	gate        *orchestrator.LoginGate // who may log in to the embedded server
	bus         *orchestrator.Bus       // admin: streams and buckets at start, Ready
	roles       map[orchestrator.Role]*orchestrator.Bus
	state       *orchestrator.State
	metrics     *orchestrator.Metrics
	http        *orchestrator.HTTPServer
	fanout      *fanout.Fanout
	fetch       *local.Server
	resync      *fanout.ResyncServer
	leases      *orchestrator.Leases // what runs on one replica at a time
	rotations   *handlers.RotationWorker
	revocations *handlers.RevocationWorker
	local       *local.Backend
	catalog     *handlers.Catalog
	awssm       *awssm.Backend
	adminToken  string
	comps       []orchestrator.Named
}

// New starts the bus (embedded or external), creates streams and buckets,
// and builds every component. Nothing consumes until Run.
func New(ctx context.Context, opts Options) (d *Daemon, err error) {
	cfg := opts.Config
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := checkTriggerSections(&cfg); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	built := &Daemon{cfg: cfg, log: log, metrics: orchestrator.NewMetrics()}
	defer func() {
		if err != nil {
			built.close()
		}
	}()
	d = built
	if d.adminToken, err = orchestrator.AdminToken(opts.AdminToken, cfg.DataDir); err != nil {
		return nil, err
	}
	busComps, err := d.startBus(ctx)
	if err != nil {
		return nil, err
	}
	backendComps, err := d.buildBackends(ctx)
	if err != nil {
		return nil, err
	}
	coreComps, err := d.buildCore(ctx, opts)
	if err != nil {
		return nil, err
	}
	apiComps, err := d.buildAPI(ctx)
	if err != nil {
		return nil, err
	}
	triggerComps, err := d.buildTriggers(ctx)
	if err != nil {
		return nil, err
	}
	exporterComps, err := d.buildExporters()
	if err != nil {
		return nil, err
	}
	d.comps = slices.Concat(coreComps, apiComps, busComps, triggerComps, exporterComps, backendComps)
	return d, nil
}

// deps are the common dependencies of a component running on role's
// connection, auditing through that connection.
func (d *Daemon) deps(role orchestrator.Role) orchestrator.Deps {
	bus := d.roles[role]
	return orchestrator.Deps{Rekey: &d.cfg, Bus: bus, Audit: orchestrator.NewAuditor(bus, "rekeyd", d.log),
		Metrics: d.metrics, Log: d.log}
}

// startBus starts the embedded server (or connects to nats.url), creates
// the streams, opens one connection per role, and returns the components
// that guard agents' access to the bus: the kill switch's cut on the
// embedded server, or the auth callout responder for an external one
// with nats.agent_auth.
func (d *Daemon) startBus(ctx context.Context) ([]orchestrator.Named, error) {
	cfg, log := &d.cfg, d.log
	url := cfg.NATS.URL
	var natsOpts []nats.Option
	var identities *agentauth.Verifier // agents' workload identities (nats.agent_auth)
	if cfg.NATS.AgentAuth != nil {
		var err error
		if identities, err = agentauth.New(*cfg.NATS.AgentAuth, cfg.TenantNames(), agentauth.WithLogger(log)); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	if url == "" {
		// Embedded: rekeyd's own privileged user and one user per tenant
		// whose permissions reach that tenant's subjects only.
		var err error
		if d.natsAuth, err = orchestrator.LoadNATSAuth(cfg.DataDir); err != nil {
			return nil, err
		}
		// Agents log in with their tenant's derived password, or, with
		// nats.agent_auth, with their own workload identity.
		var agentLogin orchestrator.AgentLogin
		if identities != nil {
			agentLogin = identities.Login
		}
		d.gate = orchestrator.NewLoginGate(d.natsAuth, cfg.TenantNames(), agentLogin)
		if d.embedded, err = orchestrator.StartEmbedded(cfg.NATS.Embedded.Addr, cfg.StoreDir(), d.gate, log); err != nil {
			return nil, err
		}
		url = d.embedded.ClientURL()
		natsOpts = append(natsOpts, nats.UserInfo(orchestrator.RekeydUser, d.natsAuth.Password(orchestrator.RekeydUser)))
	}
	var err error
	if d.bus, err = orchestrator.Connect(ctx, url, "rekeyd", cfg.NATS, log, natsOpts...); err != nil {
		return nil, err
	}
	if err := d.bus.EnsureStreams(ctx); err != nil {
		return nil, err
	}
	if err := d.bus.EnsureUsageStreams(ctx, cfg.TenantNames()); err != nil {
		return nil, err
	}
	if err := d.bus.EnsureLeakStreams(ctx, cfg.TenantNames()); err != nil {
		return nil, err
	}
	// Every component runs on the connection of its role, whose user may
	// touch only what that role needs (orchestrator.RolePermissions).
	if err := d.connectRoles(ctx, url, log); err != nil {
		return nil, err
	}
	// The shared state's buckets (the tenants' revocation marks among
	// them) exist from here on.
	if d.state, err = orchestrator.NewState(ctx, d.roles[orchestrator.RoleWorkers], cfg.Rotation.LockTTL); err != nil {
		return nil, err
	}
	fanoutBus := d.roles[orchestrator.RoleFanout]
	switch {
	case d.embedded != nil:
		tenants, err := orchestrator.OpenTenants(ctx, fanoutBus)
		if err != nil {
			return nil, err
		}
		access := newBusAccess(d.embedded, d.gate, fanoutBus, tenants, cfg.TenantNames(), log)
		if err := access.Start(ctx); err != nil {
			return nil, err
		}
		return []orchestrator.Named{{Name: "bus-access", Component: access}}, nil
	case identities != nil:
		callout, err := newAgentCallout(ctx, url, cfg.NATS, identities, fanoutBus, log)
		if err != nil {
			return nil, err
		}
		return []orchestrator.Named{{Name: "agent-auth-callout", Component: callout}}, nil
	}
	return nil, nil
}

// buildBackends builds the local backend and, when configured, Vault and
// Secrets Manager, and the catalog of secrets over them; it returns the
// backends' own components (Vault's login renewal, Secrets Manager's
// external changes).
func (d *Daemon) buildBackends(ctx context.Context) ([]orchestrator.Named, error) {
	cfg, log := &d.cfg, d.log
	key, err := localKey(*cfg)
	if err != nil {
		return nil, err
	}
	if d.local, err = local.New(ctx, d.roles[orchestrator.RoleWorkers].JS, local.Config{Key: key, Replicas: cfg.NATS.Replicas}, log); err != nil {
		return nil, err
	}
	backends := []handlers.Backend{d.local}
	var comps []orchestrator.Named
	if len(cfg.Backends.Vault) > 0 {
		vcfg, err := vault.ParseConfig(cfg.Backends.Vault, cfg)
		if err != nil {
			return nil, err
		}
		vb, err := vault.New(ctx, vcfg, log)
		if err != nil {
			return nil, fmt.Errorf("backends.vault: %w", err)
		}
		backends = append(backends, vb)
		comps = append(comps, orchestrator.Named{Name: "vault-auth", Component: vb})
	}
	if len(cfg.Backends.AWSSM) > 0 {
		ab, comp, err := d.buildAWSSM(ctx, log)
		if err != nil {
			return nil, err
		}
		d.awssm = ab
		backends = append(backends, ab)
		comps = append(comps, comp)
	}
	if d.catalog, err = handlers.NewCatalog(cfg, backends...); err != nil {
		return nil, err
	}
	return comps, nil
}

// buildCore builds the workers (rotation, revocation), fanout and the
// agents' fetch and resync servers.
func (d *Daemon) buildCore(ctx context.Context, opts Options) ([]orchestrator.Named, error) {
	cfg, log := &d.cfg, d.log
	fanoutBus, fetchBus := d.roles[orchestrator.RoleFanout], d.roles[orchestrator.RoleFetch]
	owner := fmt.Sprintf("%s-%d-%s", hostname(), os.Getpid(), schemas.NewULID()[20:])
	var err error
	if d.leases, err = orchestrator.NewLeases(ctx, fanoutBus, owner, cfg.NATS.LeaseTTL, d.metrics, log); err != nil {
		return nil, err
	}
	deps := handlers.Deps{Deps: d.deps(orchestrator.RoleWorkers), State: d.state, Catalog: d.catalog,
		Owner: owner, Source: "rekeyd/" + owner, StepHook: opts.StepHook}
	rotator := handlers.NewRotator(deps, cfg.Rotation)
	if opts.Worker.AckWait == 0 {
		opts.Worker.AckWait = cfg.NATS.AckWait
	}
	d.rotations = handlers.NewRotationWorker(deps, rotator, cfg.Rotation.Concurrency, cfg.Rotation.MinInterval, opts.Worker)
	if err := d.rotations.Provision(ctx); err != nil {
		return nil, err
	}
	d.revocations = handlers.NewRevocationWorker(deps, rotator, opts.Worker)

	d.fanout, err = fanout.New(fanout.Config{ConfirmTimeout: cfg.Fanout.ConfirmTimeout, Tenants: cfg.TenantNames(), Source: "rekeyd/fanout",
		AckDelayPerAgent: cfg.Fanout.AckDelayPerAgent,
		Limits: fanout.Limits{MaxAgentsPerTenant: cfg.Fanout.MaxAgentsPerTenant,
			PresenceIntervalMin: cfg.Fanout.PresenceIntervalMin, PresenceIntervalMax: cfg.Fanout.PresenceIntervalMax,
			MaxEarlyAcksPerTenant: cfg.Fanout.MaxEarlyAcksPerTenant, MaxListedAgents: cfg.Fanout.MaxListedAgents}},
		fanout.Deps{Deps: d.deps(orchestrator.RoleFanout), Leases: d.leases})
	if err != nil {
		return nil, err
	}

	localReader, err := d.local.Reader(ctx, fetchBus.JS)
	if err != nil {
		return nil, err
	}
	fetchTenants, err := orchestrator.OpenTenants(ctx, fetchBus)
	if err != nil {
		return nil, err
	}
	// Fetches of canary secrets by instances not allowed to fetch them are
	// reported as leaks of them (triggers/leak), on the API role's bus.
	served := leak.FetchWatch(cfg, d.roles[orchestrator.RoleAPI], log)
	d.fetch = local.NewServer(fetchBus.NC, cfg.TenantNames(), localReader, d.catalog.Ref, fetchTenants.IsRevoked, served, log)
	d.resync = fanout.NewResyncServer(fetchBus.NC, cfg.TenantNames(), log)
	return []orchestrator.Named{
		{Name: "rotation-worker", Component: d.rotations},
		{Name: "revocation-worker", Component: d.revocations},
		{Name: "fanout", Component: d.fanout},
		{Name: "local-fetch", Component: d.fetch},
		{Name: "resync", Component: d.resync},
	}, nil
}

// buildAPI builds the HTTP server (ready once NATS answers and the
// consuming components run), the HTTP API with its tenant tokens
// (triggers.selfservice) and the storage monitor that makes it refuse new
// requests when a stream is full.
func (d *Daemon) buildAPI(ctx context.Context) ([]orchestrator.Named, error) {
	cfg, log := &d.cfg, d.log
	ready := func(ctx context.Context) error {
		if err := d.bus.Ready(ctx); err != nil {
			return err
		}
		switch {
		case !d.rotations.Started():
			return errors.New("rotation worker not consuming yet")
		case !d.revocations.Started():
			return errors.New("revocation worker not consuming yet")
		case !d.fanout.Started():
			return errors.New("fanout not consuming yet")
		}
		return nil
	}
	var err error
	if d.http, err = orchestrator.NewHTTPServer(cfg.HTTP, d.metrics, ready, log); err != nil {
		return nil, err
	}
	common := d.deps(orchestrator.RoleAPI)
	apiState, err := orchestrator.OpenState(ctx, common.Bus)
	if err != nil {
		return nil, err
	}
	storage := orchestrator.NewStorageMonitor(common.Bus, cfg.NATS.Limits, d.metrics, 0, log)
	deps := api.Deps{Deps: common, State: apiState, Storage: storage, Deliveries: deliveries{d.fanout.Acks()}}
	selfCfg, err := tenantauth.ParseConfig(cfg.Triggers["selfservice"], cfg)
	if err != nil {
		return nil, err
	}
	if on, err := cfg.TriggerOn("selfservice", false); err != nil {
		return nil, err
	} else if on {
		self, err := tenantauth.New(ctx, selfCfg, common)
		if err != nil {
			return nil, err
		}
		deps.Tenants, deps.Limiter = self, self
	}
	routes, err := api.New(api.Config{AdminToken: d.adminToken, MaxBodyBytes: cfg.HTTP.MaxBodyBytes,
		IdempotencyTTL: selfCfg.IdempotencyTTL, QueuedPerTenant: cfg.NATS.Limits.QueuedPerTenant,
		QueuedPerSecret: cfg.NATS.Limits.QueuedPerSecret}, deps)
	if err != nil {
		return nil, err
	}
	routes.Register(d.http.Mux)
	return []orchestrator.Named{{Name: "http", Component: d.http}, {Name: "storage-monitor", Component: storage}}, nil
}

// Run runs every component until ctx ends, then drains the NATS connection
// and stops the embedded server.
func (d *Daemon) Run(ctx context.Context) error {
	err := orchestrator.RunAll(ctx, d.log, d.comps...)
	d.close()
	if err != nil {
		return err
	}
	d.log.Info("rekeyd stopped")
	return nil
}

func (d *Daemon) close() {
	for r, b := range d.roles {
		b.Close()
		delete(d.roles, r)
	}
	if d.bus != nil {
		d.bus.Close()
		d.bus = nil
	}
	if d.embedded != nil {
		d.embedded.Shutdown()
		d.embedded = nil
	}
}

// HTTPAddr is the address of the HTTP API.
func (d *Daemon) HTTPAddr() string { return d.http.Addr() }

// NATSURL is the URL agents and rekeyctl connect to.
func (d *Daemon) NATSURL() string {
	if d.cfg.NATS.URL != "" {
		return d.cfg.NATS.URL
	}
	if d.embedded != nil {
		return d.embedded.ClientURL()
	}
	return ""
}

// AgentNATSOptions are the connection options of an agent of tenant on
// the embedded server: the tenant's agent user and its inbox prefix. With
// an external NATS, only the inbox prefix (credentials are the operator's).
func (d *Daemon) AgentNATSOptions(tenant string) []nats.Option {
	return AgentNATSOptions(d.natsAuth, tenant)
}

// AgentNATSOptions are the connection options of an agent of tenant with
// the embedded server's credentials auth (nil: an external NATS), for
// processes other than rekeyd's (orchestrator.LoadNATSAuth reads them
// from rekeyd's data dir).
func AgentNATSOptions(auth *orchestrator.NATSAuth, tenant string) []nats.Option {
	opts := []nats.Option{nats.CustomInboxPrefix(schemas.AgentInboxPrefix(tenant)),
		// Refused while the tenant is revoked: keep trying until restored.
		nats.IgnoreAuthErrorAbort(), nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}
	if auth != nil {
		user := orchestrator.AgentUser(tenant)
		opts = append(opts, nats.UserInfo(user, auth.Password(user)))
	}
	return opts
}

// AdminNATSOptions are the connection options of rekeyd's own user (for
// rekeyctl and tests) on the embedded server.
func (d *Daemon) AdminNATSOptions() []nats.Option { return AdminNATSOptions(d.natsAuth) }

// AdminNATSOptions are the connection options of rekeyd's own user with
// the embedded server's credentials auth (nil: none).
func AdminNATSOptions(auth *orchestrator.NATSAuth) []nats.Option {
	if auth == nil {
		return nil
	}
	return []nats.Option{nats.UserInfo(orchestrator.RekeydUser, auth.Password(orchestrator.RekeydUser))}
}

// AdminToken is the token the HTTP API requires.
func (d *Daemon) AdminToken() string { return d.adminToken }

// Bus is the daemon's admin NATS connection, which only creates streams
// and buckets at start and answers Ready; no component uses it. Tests and
// tools look at everything through it.
func (d *Daemon) Bus() *orchestrator.Bus { return d.bus }

// RoleBus is the connection of one role (tests check that none was refused
// anything: PermissionViolations).
func (d *Daemon) RoleBus(r orchestrator.Role) *orchestrator.Bus { return d.roles[r] }

// FetchServer is the local backend's fetch server.
func (d *Daemon) FetchServer() *local.Server { return d.fetch }

// ResyncServer answers agents' resync requests.
func (d *Daemon) ResyncServer() *fanout.ResyncServer { return d.resync }

// connectRoles opens one connection per orchestrator.Role. On the embedded
// server each connects as its role's user; on an external NATS as that
// user when its password is in the environment
// (orchestrator.RolePasswordEnv), else with the URL's credentials, which
// then must hold every role's permissions (logged once).
func (d *Daemon) connectRoles(ctx context.Context, url string, log *slog.Logger) error {
	d.roles = make(map[orchestrator.Role]*orchestrator.Bus, len(orchestrator.Roles))
	var shared []orchestrator.Role
	for _, r := range orchestrator.Roles {
		var opts []nats.Option
		switch {
		case d.natsAuth != nil:
			opts = d.natsAuth.RoleOptions(r)
		case os.Getenv(orchestrator.RolePasswordEnv(r)) != "":
			opts = []nats.Option{nats.UserInfo(orchestrator.RoleUser(r), os.Getenv(orchestrator.RolePasswordEnv(r))),
				nats.CustomInboxPrefix(orchestrator.RoleInboxPrefix(r))}
		default:
			shared = append(shared, r)
		}
		b, err := orchestrator.Connect(ctx, url, "rekeyd-"+string(r), d.cfg.NATS, log, opts...)
		if err != nil {
			return fmt.Errorf("nats role %s: %w", r, err)
		}
		d.roles[r] = b
	}
	if len(shared) > 0 {
		log.Warn("external NATS: these roles connect with the URL's credentials, not their own least-privilege users; see `rekeyctl nats-config`",
			"component", "bus", "roles", fmt.Sprint(shared))
	}
	return nil
}

// State is the daemon's shared state.
func (d *Daemon) State() *orchestrator.State { return d.state }

// Lookup returns a configured secret's reference and backend.
func (d *Daemon) Lookup(tenant, secret string) (handlers.SecretRef, handlers.Backend, error) {
	return d.catalog.Lookup(tenant, secret)
}

// Local is the local backend (tests read values through it).
func (d *Daemon) Local() *local.Backend { return d.local }

// Fanout is the fanout component (its ack tracker).
func (d *Daemon) Fanout() *fanout.Fanout { return d.fanout }

// Embedded is the embedded NATS server, nil with an external NATS.
func (d *Daemon) Embedded() *orchestrator.EmbeddedServer { return d.embedded }

func localKey(cfg orchestrator.Config) ([]byte, error) {
	if cfg.Backends.Local.Key != "" {
		k, err := local.ParseKey(cfg.Backends.Local.Key)
		if err != nil {
			return nil, fmt.Errorf("backends.local.key: %w", err)
		}
		return k, nil
	}
	path := cfg.Backends.Local.KeyFile
	if path == "" {
		path = filepath.Join(cfg.DataDir, "local.key")
	}
	k, err := local.LoadOrCreateKey(path)
	if err != nil {
		return nil, fmt.Errorf("backends.local.key_file: %w", err)
	}
	return k, nil
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "rekeyd"
	}
	return h
}

// WaitReady polls fn until it succeeds or timeout passes.
func WaitReady(ctx context.Context, timeout time.Duration, fn func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// deliveries adapts fanout's ack tracker to what the HTTP API shows.
type deliveries struct{ acks *fanout.AckTracker }

func (d deliveries) LatestInvalidation(tenant, secret string) (api.InvalidationStatus, bool) {
	del, err := d.acks.Latest(tenant, secret)
	if err != nil {
		return api.InvalidationStatus{}, false
	}
	now := time.Now()
	out := api.InvalidationStatus{
		RequestID: del.Invalidation.RequestID, Kind: del.Invalidation.Kind, Version: del.Invalidation.Version,
		PublishedAt: del.Invalidation.PublishedAt, LiveAgents: len(del.Live),
		Acked: []string{}, Missing: del.Missing(func(a string) bool { return d.acks.Alive(tenant, a, now) }),
	}
	for _, a := range del.Live {
		if delay, ok := del.Acks[a]; ok {
			out.Acked = append(out.Acked, a)
			out.LastAckMS = max(out.LastAckMS, float64(delay.Microseconds())/1000)
		}
	}
	if out.Missing == nil {
		out.Missing = []string{}
	}
	return out, true
}

// HTTPReady checks rekeyd's /readyz at addr.
func HTTPReady(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	}
}
