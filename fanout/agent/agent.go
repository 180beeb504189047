// Package agent is the library AI agents embed to read their tenant's
// secrets from rekey.
//
// An Agent keeps the secrets it has read in memory and serves them from
// there: a cached Get is a lock-free map read that does not allocate. A miss
// is one fetch, shared by every caller that asks for the same secret at the
// same time. The cache is kept right by invalidations, not by a timer: the
// Agent subscribes to its tenant's invalidation subject
// (rekey.invalidate.<tenant>.>), drops a secret as soon as rekey says it was
// rotated, acknowledges the drop on rekey.ack.<tenant>.<secret>, and, when
// the tenant is revoked, drops everything and fails closed (ErrRevoked) until
// the tenant is restored. A TTL only bounds the age of an entry in case an
// invalidation is lost. After a start or a reconnect the Agent replays the
// last invalidation of each of its tenant's subjects from the INVALIDATE
// stream, so that nothing missed while it was away is kept.
//
// Uses are counted per secret version and reported, batched, on
// rekey.used.<tenant>.<secret> every Config.UsageInterval.
//
// No secret value is ever written to a log, an error, an ack or a report.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/singleflight"

	"github.com/rekey-dev/rekey/schemas"
)

// Sentinel errors; check them with errors.Is.
var (
	// ErrRevoked is returned by Get while the tenant is revoked, and by a
	// Fetcher whose source refuses the tenant.
	ErrRevoked = errors.New("agent: tenant revoked")
	// ErrNotFound is returned when the secret does not exist.
	ErrNotFound = errors.New("agent: secret not found")
	// ErrNotStarted is returned by Get before Start (or Run) succeeded: until
	// then the Agent receives no invalidations and cannot know whether the
	// tenant is revoked, so it refuses to serve.
	ErrNotStarted = errors.New("agent: not started")
	// ErrClosed is returned by Get and Start after Close (or after Run
	// returned).
	ErrClosed = errors.New("agent: closed")
)

// Defaults for the zero values of Config.
const (
	DefaultTTL = 15 * time.Minute
	// DefaultHeartbeatInterval is how often an agent announces its presence.
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultFetchTimeout      = 5 * time.Second
	DefaultUsageInterval     = 5 * time.Second
	// DefaultAckDelay is how long an ack waits before it is sent.
	DefaultAckDelay = 100 * time.Millisecond
)

// maxFetchAttempts bounds the fetches one Get makes when invalidations keep
// arriving while its fetch runs.
const maxFetchAttempts = 3

// Secret is one version of a secret as read by the Agent.
//
// Value is shared with the Agent's cache and with every other caller: it
// must not be modified. Copy it first if it needs changing. Secret's String,
// GoString and LogValue methods leave the value out, so printing or logging
// a Secret does not leak it.
type Secret struct {
	Name    string
	Version string
	Value   []byte
	// FetchedAt is when the Agent received this version from its Fetcher.
	FetchedAt time.Time
}

// String describes s without its value.
func (s Secret) String() string {
	return fmt.Sprintf("secret %s version %s (value redacted)", s.Name, s.Version)
}

// GoString describes s without its value, for %#v.
func (s Secret) GoString() string {
	return fmt.Sprintf("agent.Secret{Name:%q, Version:%q, Value:<redacted>}", s.Name, s.Version)
}

// LogValue makes slog log the name and version only.
func (s Secret) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", s.Name), slog.String("version", s.Version))
}

// Fetcher reads the current version of a secret from where it is kept
// (rekey's local backend over NATS, Vault, AWS Secrets Manager...). It
// returns an error wrapping ErrNotFound or ErrRevoked when that is the
// answer. Name and FetchedAt of the result are set by the Agent.
type Fetcher interface {
	Fetch(ctx context.Context, tenant, secret string) (Secret, error)
}

// Config configures an Agent.
type Config struct {
	// Tenant whose secrets this Agent reads. Required.
	Tenant string
	// Instance identifies this agent in acks and use reports. Default:
	// <hostname>-<pid>-<random>.
	Instance string
	// Tool is an optional tool name reported with uses.
	Tool string
	// TTL bounds the age of a cached entry, in case an invalidation is
	// lost; invalidations, not the TTL, keep the cache right. Default 15m.
	TTL time.Duration
	// FetchTimeout bounds a fetch (and a resync) when the caller's context
	// has no deadline. Default 5s.
	FetchTimeout time.Duration
	// UsageInterval is how often batched use reports are published,
	// give or take 10% so that agents started together drift apart.
	// Default 5s.
	UsageInterval time.Duration
	// HeartbeatInterval is how often the agent announces itself on
	// rekey.presence.<tenant> (give or take 10%); rekey waits for acks
	// only from agents it heard from within three intervals. Default 5s.
	HeartbeatInterval time.Duration
	// AckDelay is how long an ack waits before it is sent. The old value
	// is dropped the moment an invalidation of a secret arrives, before
	// it is decoded; decoding it, checking it, OnInvalidate and the ack
	// wait AckDelay, so that in the first milliseconds after an
	// invalidation the NATS server delivers it to every agent, and every
	// agent drops, instead of the first ones spending the CPU and the
	// server reading their acks. Acks that wait together leave in one
	// write. Default 100ms. When an invalidation asks for longer
	// (schemas.HeaderAckDelay: rekeyd's fanout sizes it to the tenant's
	// live agents, since delivering to 10,000 connections takes longer
	// than 100ms) its ack waits that long plus up to half again at
	// random. Negative sends each ack at once and decodes before
	// dropping.
	AckDelay time.Duration
	// LeakVersions is how many versions of each secret the leak guard
	// (Scan) keeps looking for once this agent read them. Default
	// DefaultLeakVersions; negative turns the guard off.
	LeakVersions int
	// RunIssuer makes the credentials of secrets that exist per pipeline
	// run (BeginRun). Nil: every secret is shared.
	RunIssuer RunIssuer
	// Logger receives debug and warning logs. Default: discard.
	Logger *slog.Logger
	// OnInvalidate, if set, is called after an invalidation was applied
	// and checked (the cache entry dropped, the revocation state
	// changed): for a live invalidation of one secret, AckDelay after the
	// drop (see AckDelay), on the ack goroutine; for a tenant-wide one at
	// once, on the subscription's goroutine. DroppedAt is always when the
	// value was dropped. It must return quickly.
	OnInvalidate func(ev Invalidated)
}

// Validate checks the configuration as given (zero durations take their
// defaults and are valid).
func (c Config) Validate() error {
	if err := schemas.ValidateID("tenant", c.Tenant); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	if c.Instance != "" {
		if err := schemas.ValidateInstance(c.Instance); err != nil {
			return fmt.Errorf("agent config: Instance: %w", err)
		}
	}
	if c.TTL < 0 || c.FetchTimeout < 0 || c.UsageInterval < 0 || c.HeartbeatInterval < 0 {
		return fmt.Errorf("agent config: TTL, FetchTimeout, UsageInterval and HeartbeatInterval must not be negative")
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Instance == "" {
		c.Instance = defaultInstance()
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.FetchTimeout == 0 {
		c.FetchTimeout = DefaultFetchTimeout
	}
	if c.UsageInterval == 0 {
		c.UsageInterval = DefaultUsageInterval
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.AckDelay == 0 {
		c.AckDelay = DefaultAckDelay
	}
	if c.LeakVersions == 0 {
		c.LeakVersions = DefaultLeakVersions
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func defaultInstance() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "agent"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	suffix := fmt.Sprintf("-%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	return instanceToken(host, schemas.MaxInstanceLen-len(suffix)) + suffix
}

// instanceToken maps a host or pod name to the instance grammar
// (schemas.InstancePattern): dots and other characters become '-', and it
// is cut to max bytes.
func instanceToken(name string, limit int) string {
	b := []byte(name)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || (c == '_' || c == '-') && i > 0
		if !ok {
			b[i] = '-'
		}
	}
	if len(b) > limit {
		b = b[:limit]
	}
	if len(b) == 0 || b[0] == '-' {
		return "agent"
	}
	return string(b)
}

// NATSOptions are the connection options an agent's NATS connection needs:
// its replies come to its own inbox (schemas.InstanceInboxPrefix), the only
// one its NATS user may read; and it keeps reconnecting while its logins
// are refused, as they are while its tenant is revoked (the kill switch
// closes a revoked tenant's connections), so that it resyncs at once when
// the tenant is restored. Add the credentials of the agent's identity.
func NATSOptions(tenant, instance string) []nats.Option {
	return []nats.Option{
		nats.CustomInboxPrefix(schemas.InstanceInboxPrefix(tenant, instance)),
		nats.IgnoreAuthErrorAbort(), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
	}
}

// NATSOptionsJWT are NATSOptions for an agent that logs in with its own
// workload identity (rekey's nats.agent_auth): token returns the identity
// token (a JWT) and is called at every connect and reconnect, so that a
// rotated token (a Kubernetes projected service-account token, refreshed
// by the kubelet) is presented as it is now. TokenFile reads one from a
// file.
func NATSOptionsJWT(tenant, instance string, token func() string) []nats.Option {
	return append(NATSOptions(tenant, instance), nats.TokenHandler(token))
}

// TokenFile returns a token function that reads path at each call (the
// projected token of a Kubernetes pod is
// /var/run/secrets/tokens/<volume path>). An unreadable file gives an
// empty token: the login is refused and retried.
func TokenFile(path string) func() string {
	return func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
}

// Invalidated describes an applied invalidation, for Config.OnInvalidate.
type Invalidated struct {
	Invalidation schemas.Invalidation
	// EventTime is when rekey published the invalidation.
	EventTime time.Time
	// ReceivedAt is when the Agent received it; DroppedAt when the cache
	// entry (or, for a revocation, the whole cache) was gone.
	ReceivedAt, DroppedAt time.Time
}

// Bits of Agent.gate. Get serves only when the gate is zero, so that the
// hot path checks every reason to refuse with one atomic load.
const (
	gateNotStarted uint32 = 1 << iota
	gateClosed
	gateRevoked
)

func gateErr(g uint32) error {
	switch {
	case g&gateRevoked != 0:
		return ErrRevoked
	case g&gateClosed != 0:
		return ErrClosed
	default:
		return ErrNotStarted
	}
}

// entry is one cached secret version. It is immutable once published in
// the cache map, except for its use counter.
type entry struct {
	secret Secret
	uses   *useCounter
}

// secretState is kept, under Agent.mu, for every secret the Agent has tried
// to fetch. Every invalidation of the secret increments epoch.
type secretState struct {
	epoch uint64
}

// mark identifies the last invalidation applied on one subject, to order
// live and replayed messages.
type mark struct {
	at time.Time
	id string
}

// Agent caches one tenant's secrets. Its methods are safe for concurrent
// use.
type Agent struct {
	nc      *nats.Conn
	fetcher Fetcher
	cfg     Config
	log     *slog.Logger
	source  string // CloudEvents source of acks and reports
	// invPrefix is invalidatePrefix(cfg.Tenant), built once: every
	// invalidation is checked against it.
	invPrefix string

	startedAt time.Time

	// gate and cache are read lock-free by Get.
	gate  atomic.Uint32
	cache atomic.Pointer[map[string]*entry] // copy on write, under mu

	mu     sync.Mutex
	states map[string]*secretState
	marks  map[string]mark // by subject token (secret or TenantToken)

	sf    singleflight.Group
	usage usageTable
	guard leakGuard

	life    sync.Mutex // Start and Close
	started bool
	closed  bool
	sub     *nats.Subscription
	stop    context.CancelFunc
	wg      sync.WaitGroup
	kick    chan struct{} // asks the resync loop for a resync
	synced  syncMark      // the last successful resync (synced.go)

	ackMu    sync.Mutex
	acks     []schemas.InvalidationAck // waiting for ackTimer
	live     []liveDrop                // dropped on arrival, to decode when ackTimer fires
	ackTimer *time.Timer               // armed by the first ack or drop waiting
}

// New returns an Agent for cfg.Tenant on nc. A nil f reads secrets with
// NewNATSFetcher(nc, cfg.Instance). The Agent serves nothing until Start or
// Run; it never closes nc.
func New(nc *nats.Conn, f Fetcher, cfg Config) (*Agent, error) {
	if nc == nil {
		return nil, errors.New("agent: nil NATS connection")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if f == nil {
		f = NewNATSFetcher(nc, cfg.Instance)
	}
	a := &Agent{
		nc:        nc,
		fetcher:   f,
		cfg:       cfg,
		log:       cfg.Logger.With("component", "fanout/agent", "tenant", cfg.Tenant, "agent", cfg.Instance),
		source:    "rekey-agent/" + cfg.Instance,
		invPrefix: invalidatePrefix(cfg.Tenant),
		states:    make(map[string]*secretState),
		marks:     make(map[string]mark),
		kick:      make(chan struct{}, 1),
		ackTimer:  time.NewTimer(time.Hour),
	}
	a.ackTimer.Stop()
	a.usage.init()
	a.guard.init(cfg.LeakVersions)
	empty := make(map[string]*entry)
	a.cache.Store(&empty)
	a.gate.Store(gateNotStarted)
	return a, nil
}

// Instance returns the agent instance ID used in acks and use reports.
func (a *Agent) Instance() string { return a.cfg.Instance }

// Start subscribes to the tenant's invalidations, replays the last
// invalidation of each of the tenant's subjects from the INVALIDATE stream
// (a missing stream is not an error: rekeyd is not there yet), and starts
// the ack sender, the use reporter, the heartbeat and the reconnect
// resync. When it returns nil, invalidations are being received and Get
// serves. Calling it again is a no-op. If the replay fails, Start undoes
// the subscription and returns the error: without it the Agent cannot know
// whether the tenant is revoked.
func (a *Agent) Start(ctx context.Context) error {
	a.life.Lock()
	defer a.life.Unlock()
	if a.closed {
		return ErrClosed
	}
	if a.started {
		return nil
	}
	subject := schemas.InvalidateTenantSubject(a.cfg.Tenant)
	sub, err := a.nc.Subscribe(subject, a.handleMsg)
	if err != nil {
		return fmt.Errorf("agent: subscribe %s: %w", subject, err)
	}
	fail := func(err error) error {
		_ = sub.Unsubscribe() // best effort: the error below is the one that matters
		return err
	}
	if err := a.flush(ctx); err != nil {
		return fail(fmt.Errorf("agent: subscribe %s: flush: %w", subject, err))
	}
	if err := a.Resync(ctx); err != nil {
		return fail(err)
	}
	a.sub = sub
	a.chainReconnectHandler()

	loopCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	a.stop = stop
	a.startedAt = time.Now().UTC()
	a.wg.Add(4)
	go func() { defer a.wg.Done(); a.ackLoop(loopCtx) }()
	go func() { defer a.wg.Done(); a.usageLoop(loopCtx) }()
	go func() { defer a.wg.Done(); a.resyncLoop(loopCtx) }()
	go func() { defer a.wg.Done(); a.presenceLoop(loopCtx) }()

	a.started = true
	a.gate.And(^gateNotStarted)
	a.log.Debug("agent started", "subject", subject)
	return nil
}

// Run starts the Agent if it is not started, serves until ctx ends, then
// closes it (unsubscribes and publishes the last use reports) and returns
// nil. It returns an error only if Start fails.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Start(ctx); err != nil {
		if ctx.Err() != nil { // stopped before it started
			_ = a.Close()
			return nil
		}
		return err
	}
	<-ctx.Done()
	if err := a.Close(); err != nil {
		a.log.Warn("agent: close", "error", err)
	}
	return nil
}

// Close stops the Agent: Get fails with ErrClosed from now on, the
// subscription is removed, and the uses counted since the last report are
// published and flushed. It does not close the NATS connection. Calling it
// again is a no-op.
func (a *Agent) Close() error {
	a.life.Lock()
	defer a.life.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	a.gate.Or(gateClosed)
	if !a.started {
		return nil
	}
	var errs []error
	if err := a.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		errs = append(errs, fmt.Errorf("agent: unsubscribe: %w", err))
	}
	a.stop()
	a.wg.Wait()
	a.sendAcks() // the acks still waiting go out now
	if err := a.flushUsage(); err != nil {
		errs = append(errs, err)
	}
	if !a.nc.IsClosed() {
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.FetchTimeout)
		defer cancel()
		if err := a.nc.FlushWithContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("agent: flush use reports: %w", err))
		}
	}
	a.mu.Lock()
	a.replaceCacheLocked(nil, true)
	a.mu.Unlock()
	a.guard.forget()
	return errors.Join(errs...)
}

// Revoked reports whether the tenant is revoked, as far as the Agent knows.
func (a *Agent) Revoked() bool { return a.gate.Load()&gateRevoked != 0 }

// Get returns the current version of secret. A cached version is returned
// from memory without allocating; a missing, invalidated or older than TTL
// one is fetched, once for all concurrent callers. Get fails with ErrRevoked
// while the tenant is revoked, ErrNotStarted before Start, ErrClosed after
// Close. The returned Value is shared and must not be modified.
//
// No Get that starts after an invalidation of secret was applied returns
// the version that invalidation replaced.
func (a *Agent) Get(ctx context.Context, secret string) (Secret, error) {
	if g := a.gate.Load(); g != 0 {
		return Secret{}, gateErr(g)
	}
	if e := (*a.cache.Load())[secret]; e != nil && time.Since(e.secret.FetchedAt) < a.cfg.TTL {
		e.uses.add()
		return e.secret, nil
	}
	return a.getSlow(ctx, secret, Use{})
}

// GetFor is Get for a read on behalf of u.Tool in pipeline run u.Run: its
// uses are reported per (secret, version, tool, run), so that the use
// reports and the audit trail say which tool of which run read what. A
// zero u is Get.
func (a *Agent) GetFor(ctx context.Context, secret string, u Use) (Secret, error) {
	if u == (Use{}) {
		return a.Get(ctx, secret)
	}
	if err := u.Validate(); err != nil {
		return Secret{}, err
	}
	if g := a.gate.Load(); g != 0 {
		return Secret{}, gateErr(g)
	}
	if e := (*a.cache.Load())[secret]; e != nil && time.Since(e.secret.FetchedAt) < a.cfg.TTL {
		a.countUse(e.uses, e.secret, u)
		return e.secret, nil
	}
	return a.getSlow(ctx, secret, u)
}

// countUse counts a use of a cached entry (c is its counter).
func (a *Agent) countUse(c *useCounter, s Secret, u Use) {
	if u != (Use{}) && a.usage.addTagged(s.Name, s.Version, u) {
		return
	}
	c.add()
}

type fetchResult struct {
	secret Secret
	stored bool // cached; false when an invalidation arrived during the fetch
	uses   *useCounter
}

func (a *Agent) getSlow(ctx context.Context, name string, u Use) (Secret, error) {
	if err := schemas.ValidateID("secret", name); err != nil {
		return Secret{}, fmt.Errorf("agent: get: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.cfg.FetchTimeout)
		defer cancel()
	}
	var last *fetchResult
	for range maxFetchAttempts {
		e, epoch := a.beginFetch(name)
		if e != nil {
			a.countUse(e.uses, e.secret, u)
			return e.secret, nil
		}
		// The epoch is part of the key: a caller that arrives after an
		// invalidation never joins a fetch that started before it.
		key := fmt.Sprintf("%s@%d", name, epoch)
		ch := a.sf.DoChan(key, func() (any, error) { return a.fetch(ctx, name, epoch) })
		var r singleflight.Result
		select {
		case <-ctx.Done():
			return Secret{}, fmt.Errorf("agent: get %s/%s: %w", a.cfg.Tenant, name, ctx.Err())
		case r = <-ch:
		}
		if g := a.gate.Load(); g != 0 {
			return Secret{}, gateErr(g)
		}
		if r.Err != nil {
			return Secret{}, r.Err
		}
		res := r.Val.(*fetchResult)
		if res.stored {
			a.countUse(res.uses, res.secret, u)
			return res.secret, nil
		}
		last = res
	}
	// Invalidations kept arriving while fetching. The last result is not
	// stale for this caller: it started before the invalidation that
	// outdated the fetch was applied, or it would not have joined it.
	a.countTagged(name, last.secret.Version, u)
	a.log.Debug("secret changed during every fetch; returning the last one uncached", "secret", name, "attempts", maxFetchAttempts)
	return last.secret, nil
}

// countTagged counts a use of a version that is not the cached entry (or
// not in the cache at all) by u.
func (a *Agent) countTagged(name, version string, u Use) {
	if u == (Use{}) || !a.usage.addTagged(name, version, u) {
		a.countUncached(name, version)
	}
}

// countUncached counts a use of a version that is not (or no longer) the
// cached one. Its counter is retired unless the cache uses it, so that the
// use table forgets it once reported.
func (a *Agent) countUncached(name, version string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.usage.counter(name, version)
	c.add()
	if e := (*a.cache.Load())[name]; e == nil || e.uses != c {
		a.usage.retire(c)
	}
}

// beginFetch returns a fresh cached entry if one appeared since the lock-free
// lookup, or else the secret's current epoch.
func (a *Agent) beginFetch(name string) (*entry, uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := (*a.cache.Load())[name]; e != nil && time.Since(e.secret.FetchedAt) < a.cfg.TTL {
		return e, 0
	}
	st := a.states[name]
	if st == nil {
		st = &secretState{}
		a.states[name] = st
	}
	return nil, st.epoch
}

// fetch runs one shared fetch. It is not cancelled when the caller that
// started it gives up, as others may be waiting: it runs until FetchTimeout
// or the starting caller's deadline, whichever is later.
func (a *Agent) fetch(ctx context.Context, name string, epoch uint64) (*fetchResult, error) {
	d := a.cfg.FetchTimeout
	if dl, ok := ctx.Deadline(); ok {
		d = max(d, time.Until(dl))
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	defer cancel()
	s, err := a.fetcher.Fetch(fctx, a.cfg.Tenant, name)
	if err != nil {
		return nil, fmt.Errorf("agent: get %s/%s: %w", a.cfg.Tenant, name, err)
	}
	s.Name = name
	s.Value = append([]byte(nil), s.Value...) // the cache owns its copy
	s.FetchedAt = time.Now()
	a.guard.hold(name, s.Version, s.Value)

	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.states[name]
	if a.gate.Load() != 0 || st == nil || st.epoch != epoch {
		return &fetchResult{secret: s}, nil
	}
	e := &entry{secret: s, uses: a.usage.counter(name, s.Version)}
	a.replaceCacheLocked(map[string]*entry{name: e}, false)
	return &fetchResult{secret: s, stored: true, uses: e.uses}, nil
}

// replaceCacheLocked publishes a new cache map: the old one with the entries
// in set put in (nil set and all: an empty map). Entries replaced or dropped
// have their use counters retired when they changed version. The caller
// holds a.mu.
func (a *Agent) replaceCacheLocked(set map[string]*entry, all bool) {
	old := *a.cache.Load()
	next := make(map[string]*entry, len(old)+len(set))
	if !all {
		for k, v := range old {
			next[k] = v
		}
	}
	for k, v := range set {
		next[k] = v
	}
	for k, v := range old {
		if n := next[k]; n == nil || n.uses != v.uses {
			a.usage.retire(v.uses)
		}
	}
	a.cache.Store(&next)
}

// dropLocked removes one secret from the cache and bumps its epoch, so that
// a fetch in flight is neither cached nor joined. It reports whether an
// entry was dropped. The caller holds a.mu.
func (a *Agent) dropLocked(name string) bool {
	if st := a.states[name]; st != nil {
		st.epoch++
	}
	old := *a.cache.Load()
	e, ok := old[name]
	if !ok {
		return false
	}
	next := make(map[string]*entry, len(old))
	for k, v := range old {
		if k != name {
			next[k] = v
		}
	}
	a.cache.Store(&next)
	a.usage.retire(e.uses)
	return true
}

// dropAllLocked empties the cache and bumps every epoch.
func (a *Agent) dropAllLocked() bool {
	for _, st := range a.states {
		st.epoch++
	}
	had := len(*a.cache.Load()) > 0
	a.replaceCacheLocked(nil, true)
	return had
}

func (a *Agent) flush(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.cfg.FetchTimeout)
		defer cancel()
	}
	return a.nc.FlushWithContext(ctx)
}
