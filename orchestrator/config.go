// Package orchestrator holds what every rekey component shares: the
// configuration, the NATS bus (embedded server, JetStream streams, publish
// and consume helpers), the state kept in JetStream KV, the audit trail and
// the runner that starts components and stops them cleanly. It never imports
// triggers, handlers or fanout: cmd/ builds those and hands them to Run.
package orchestrator

import (
	"errors"
	"fmt"
	"iter"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/rekey-dev/rekey/orchestrator/configkit"
	"github.com/rekey-dev/rekey/schemas"
)

// Config is the whole of rekey.yaml.
type Config struct {
	DataDir  string                  `yaml:"data_dir"`
	Log      LogConfig               `yaml:"log"`
	NATS     NATSConfig              `yaml:"nats"`
	HTTP     HTTPConfig              `yaml:"http"`
	Rotation RotationConfig          `yaml:"rotation"`
	Fanout   FanoutConfig            `yaml:"fanout"`
	Backends BackendsConfig          `yaml:"backends"`
	Tenants  map[string]TenantConfig `yaml:"tenants"`
	// Triggers holds one section per trigger kind (cron, usage, siem,
	// selfservice...). Each trigger package decodes its own section with
	// DecodeSection; internal/daemon's table of triggers names the known
	// kinds and refuses others. Whether one runs: TriggerOn.
	Triggers map[string]yaml.RawMessage `yaml:"triggers"`
}

// TriggerOn is the one rule for whether the trigger of a section runs: as
// its section's enabled key says when it has one; else on when the
// section is present, and when it is absent as defaultOn (cron and usage,
// whose work is set on each secret, are on without a section).
func (c *Config) TriggerOn(name string, defaultOn bool) (bool, error) {
	raw, ok := c.Triggers[name]
	if !ok {
		return defaultOn, nil
	}
	var s struct {
		Enabled *bool `yaml:"enabled"`
	}
	if err := yaml.Unmarshal(raw, &s); err != nil {
		return false, FieldErrorf("triggers."+name+".enabled", "%v", err)
	}
	if s.Enabled == nil {
		return true, nil
	}
	return *s.Enabled, nil
}

// LogConfig selects the slog handler.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text, json
}

// NATSConfig chooses between the embedded server (URL empty) and an
// external NATS.
type NATSConfig struct {
	URL      string         `yaml:"url"`
	Embedded EmbeddedConfig `yaml:"embedded"`
	// Replicas of every stream and KV bucket; 1 for a single server.
	Replicas int `yaml:"replicas"`
	// DuplicateWindow is how long JetStream remembers message ids.
	DuplicateWindow time.Duration `yaml:"duplicate_window"`
	// LeaseTTL is how long the replica running a one-replica-only part
	// (the cron scheduler, invalidation confirmations) keeps it without
	// renewing: when that replica dies, another takes over after it.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// AgentAuth, when set, lets agents log in with a workload identity
	// (a JWT) and get a NATS user scoped to their tenant and instance
	// (orchestrator/agentauth). Absent: agents log in with their tenant's
	// derived password only.
	AgentAuth *AgentAuthConfig `yaml:"agent_auth"`
	// AckWait is how long JetStream waits for a request held by a worker
	// (rotation, revocation, sync) before it hands it to another consumer:
	// the bound on how long a dead process's requests wait. Workers keep
	// the requests they hold alive every AckWait/4 while they run, so a
	// long saga step does not cause a second delivery.
	AckWait time.Duration `yaml:"ack_wait"`
	// Limits bound what NATS stores.
	Limits LimitsConfig `yaml:"limits"`
}

// LimitsConfig bounds JetStream storage and the requests one tenant may
// queue.
type LimitsConfig struct {
	Rotate     StreamLimits `yaml:"rotate"`
	Revoke     StreamLimits `yaml:"revoke"`
	Usage      StreamLimits `yaml:"usage"` // each tenant's REKEY_USAGE_<t>
	Invalidate StreamLimits `yaml:"invalidate"`
	Events     StreamLimits `yaml:"events"`
	Audit      StreamLimits `yaml:"audit"`
	// QueuedPerTenant and QueuedPerSecret cap the requests of a tenant (a
	// secret) waiting in ROTATE and REVOKE: the HTTP API answers 429 with
	// Retry-After beyond them.
	QueuedPerTenant int `yaml:"queued_per_tenant"`
	QueuedPerSecret int `yaml:"queued_per_secret"`
	// WarnAt and FullAt are fractions of a stream's max_bytes: at WarnAt
	// rekeyd logs a warning (and rekey_stream_usage_ratio shows it); at
	// FullAt the HTTP API refuses new requests with 503 for the request
	// streams and for AUDIT, so that no accepted request or audit record is
	// ever discarded.
	WarnAt float64 `yaml:"warn_at"`
	FullAt float64 `yaml:"full_at"`
}

// StreamLimits bound one stream. The request streams and AUDIT refuse new
// messages when full (discard new); the others drop their oldest.
type StreamLimits struct {
	MaxBytes int64         `yaml:"max_bytes"`
	MaxAge   time.Duration `yaml:"max_age"` // 0: no age limit
}

// MinAuditAge is the shortest audit retention rekeyd accepts: an age limit
// drops audit records without exporting them, so it is refused at start
// rather than allowed to lose less than 90 days of audit.
const MinAuditAge = 90 * 24 * time.Hour

// ByStream returns the limits by stream name (schemas.Stream*) of the
// shared streams; Usage bounds each tenant's REKEY_USAGE_<t>
// (Bus.UsageStreamConfig), which drops its oldest reports when full.
func (l LimitsConfig) ByStream() map[string]StreamLimits {
	return map[string]StreamLimits{
		schemas.StreamRotate: l.Rotate, schemas.StreamRevoke: l.Revoke,
		schemas.StreamInvalidate: l.Invalidate, schemas.StreamEvents: l.Events, schemas.StreamAudit: l.Audit,
	}
}

// DefaultLimits are the default storage limits (about 3.3 GiB in all).
func DefaultLimits() LimitsConfig {
	const mib = 1 << 20
	day := 24 * time.Hour
	return LimitsConfig{
		Rotate:          StreamLimits{MaxBytes: 256 * mib, MaxAge: 7 * day},
		Revoke:          StreamLimits{MaxBytes: 64 * mib, MaxAge: 7 * day},
		Usage:           StreamLimits{MaxBytes: UsageStreamMaxBytes, MaxAge: day}, // per tenant
		Invalidate:      StreamLimits{MaxBytes: 128 * mib},
		Events:          StreamLimits{MaxBytes: 512 * mib, MaxAge: 30 * day},
		Audit:           StreamLimits{MaxBytes: 2048 * mib, MaxAge: 400 * day},
		QueuedPerTenant: 10000,
		QueuedPerSecret: 1000,
		WarnAt:          0.8,
		FullAt:          0.95,
	}
}

func (l LimitsConfig) validate() error {
	var errs []error
	names := map[string]StreamLimits{"rotate": l.Rotate, "revoke": l.Revoke, "usage": l.Usage,
		"invalidate": l.Invalidate, "events": l.Events, "audit": l.Audit}
	for _, n := range sortedKeys(names) {
		f := "nats.limits." + n
		if sl := names[n]; sl.MaxBytes < 1<<20 {
			errs = append(errs, fieldErr(f+".max_bytes", "%d must be at least 1048576 (1 MiB)", sl.MaxBytes))
		}
		if sl := names[n]; sl.MaxAge < 0 || (sl.MaxAge > 0 && sl.MaxAge < time.Minute) {
			errs = append(errs, fieldErr(f+".max_age", "%s must be 0 (no limit) or at least 1m", sl.MaxAge))
		}
	}
	if l.Audit.MaxAge != 0 && l.Audit.MaxAge < MinAuditAge {
		errs = append(errs, fieldErr("nats.limits.audit.max_age", "%s is under 90 days (2160h): rekey does not export audit records before an age limit drops them, so it refuses to keep less", l.Audit.MaxAge))
	}
	if l.QueuedPerTenant < 1 {
		errs = append(errs, fieldErr("nats.limits.queued_per_tenant", "%d must be at least 1", l.QueuedPerTenant))
	}
	if l.QueuedPerSecret < 1 || l.QueuedPerSecret > l.QueuedPerTenant {
		errs = append(errs, fieldErr("nats.limits.queued_per_secret", "%d must be between 1 and queued_per_tenant (%d)", l.QueuedPerSecret, l.QueuedPerTenant))
	}
	if l.WarnAt <= 0 || l.WarnAt >= 1 {
		errs = append(errs, fieldErr("nats.limits.warn_at", "%g must be between 0 and 1 (a fraction of max_bytes)", l.WarnAt))
	}
	if l.FullAt <= l.WarnAt || l.FullAt > 1 {
		errs = append(errs, fieldErr("nats.limits.full_at", "%g must be above warn_at (%g) and at most 1", l.FullAt, l.WarnAt))
	}
	return errors.Join(errs...)
}

// EmbeddedConfig configures the nats-server started inside rekeyd.
type EmbeddedConfig struct {
	// Addr is host:port for client connections; port 0 picks a free port.
	Addr string `yaml:"addr"`
	// StoreDir is where JetStream keeps its files; default <data_dir>/jetstream.
	StoreDir string `yaml:"store_dir"`
}

// HTTPConfig configures the HTTP API.
type HTTPConfig struct {
	Addr              string        `yaml:"addr"`
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`
	WriteTimeout      time.Duration `yaml:"write_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
	MaxBodyBytes      int64         `yaml:"max_body_bytes"`
}

// RotationConfig tunes the workers.
type RotationConfig struct {
	MaxAttempts    int           `yaml:"max_attempts"`
	BackoffInitial time.Duration `yaml:"backoff_initial"`
	BackoffMax     time.Duration `yaml:"backoff_max"`
	Concurrency    int           `yaml:"concurrency"`
	StepTimeout    time.Duration `yaml:"step_timeout"`
	LockTTL        time.Duration `yaml:"lock_ttl"`
	// MinInterval is the least time between the starts of two rotations
	// of one secret requested through the ROTATE stream. Requests that
	// arrive sooner wait, and one rotation then satisfies all of them, so
	// a storm lasting a few seconds costs a couple of rotations. Kill
	// switch rotations do not wait. 0 disables it.
	MinInterval time.Duration `yaml:"min_interval"`
}

// FanoutConfig tunes the fanout of invalidations.
type FanoutConfig struct {
	// ConfirmTimeout is how long fanout waits for every live agent to ack
	// an invalidation before it reports the ones that did not.
	ConfirmTimeout time.Duration `yaml:"confirm_timeout"`
	// MaxAgentsPerTenant bounds the agents tracked per tenant (their
	// heartbeats, and the acks kept for one invalidation); beyond it a
	// new agent is refused and audited.
	MaxAgentsPerTenant int `yaml:"max_agents_per_tenant"`
	// PresenceIntervalMin and PresenceIntervalMax bound the heartbeat
	// interval an agent may announce; heartbeats outside are refused.
	PresenceIntervalMin time.Duration `yaml:"presence_interval_min"`
	PresenceIntervalMax time.Duration `yaml:"presence_interval_max"`
	// MaxEarlyAcksPerTenant bounds the acks kept per tenant for
	// invalidations not heard of yet (published by another replica).
	MaxEarlyAcksPerTenant int `yaml:"max_early_acks_per_tenant"`
	// MaxListedAgents bounds the agents named in an invalidation_confirmed
	// event and its audit record; beyond it they are counted.
	MaxListedAgents int `yaml:"max_listed_agents"`
	// AckDelayPerAgent times a tenant's live agents is how long an
	// invalidation asks them to hold their acks back (fanout.Config);
	// 0 asks nothing.
	AckDelayPerAgent time.Duration `yaml:"ack_delay_per_agent"`
}

// BackendsConfig holds one section per backend kind.
type BackendsConfig struct {
	Local LocalBackendConfig `yaml:"local"`
	// Vault is decoded by handlers/vault (DecodeSection); empty: no Vault.
	Vault yaml.RawMessage `yaml:"vault"`
	// AWSSM is decoded by handlers/awssm; empty: no Secrets Manager.
	AWSSM yaml.RawMessage `yaml:"awssm"`
}

// LocalBackendConfig configures the backend that keeps values in JetStream KV.
type LocalBackendConfig struct {
	// Key is a base64 AES-256 key. When empty, KeyFile is read, or created
	// with a random key (mode 0600) if it does not exist.
	Key string `yaml:"key"`
	// KeyFile defaults to <data_dir>/local.key.
	KeyFile string `yaml:"key_file"`
}

// TenantConfig lists a tenant's secrets.
type TenantConfig struct {
	Secrets map[string]SecretConfig `yaml:"secrets"`
}

// SecretConfig is one secret: where it lives and when it rotates.
type SecretConfig struct {
	Backend   string            `yaml:"backend"`
	Generator GeneratorConfig   `yaml:"generator"`
	Policy    PolicyConfig      `yaml:"policy"`
	Options   map[string]string `yaml:"options"`
}

// GeneratorConfig says how a new value is made for backends that store
// static values.
type GeneratorConfig struct {
	Style    string `yaml:"style"` // password (default) or api-key
	Length   int    `yaml:"length"`
	Alphabet string `yaml:"alphabet"`
	Prefix   string `yaml:"prefix"`
}

// PolicyConfig says when a secret rotates on its own.
type PolicyConfig struct {
	Schedule string        `yaml:"schedule"`
	Jitter   time.Duration `yaml:"jitter"`
	TimeZone string        `yaml:"timezone"`
	MaxUses  int64         `yaml:"max_uses"`
	// OnLeak is what a leak report of the secret does: "rotate" (the
	// default) or "revoke" (the tenant's kill switch).
	OnLeak string `yaml:"on_leak"`
	// Canary marks a secret no one uses: any sign of its use (found by a
	// leak guard, a SIEM alert naming it) is proof of a leak, and does
	// OnCanary.
	Canary bool `yaml:"canary"`
	// OnCanary: "revoke" (default: the tenant's kill switch) or
	// "rotate_tenant" (every secret of the tenant rotated).
	OnCanary string `yaml:"on_canary"`
	// CanaryFetchers, if set, are the agent instances (path.Match
	// patterns, e.g. "honeypot-*") that may fetch a canary: a fetch by
	// any other is a sign of use. Empty: fetches are not watched.
	CanaryFetchers []string `yaml:"canary_fetchers"`
}

// CanaryFetchAllowed reports whether instance may fetch this canary
// without it counting as a sign of use (always true for a secret that is
// not a canary or has no canary_fetchers).
func (p PolicyConfig) CanaryFetchAllowed(instance string) bool {
	if !p.Canary || len(p.CanaryFetchers) == 0 {
		return true
	}
	for _, pat := range p.CanaryFetchers {
		if ok, _ := path.Match(pat, instance); ok {
			return true
		}
	}
	return false
}

// Leak and canary actions (PolicyConfig.OnLeak, OnCanary).
const (
	LeakRotate       = "rotate"
	LeakRevoke       = "revoke"
	LeakRotateTenant = "rotate_tenant"
)

// LeakAction is what a leak of the secret does: OnCanary (default
// "revoke") for a canary, else OnLeak (default "rotate").
func (p PolicyConfig) LeakAction() string {
	switch {
	case p.Canary && p.OnCanary != "":
		return p.OnCanary
	case p.Canary:
		return LeakRevoke
	case p.OnLeak != "":
		return p.OnLeak
	}
	return LeakRotate
}

// KnownBackends are the backend names a secret may name. Whether a
// backend is enabled (configured) is checked when rekeyd starts.
var KnownBackends = []string{"local", "vault", "awssm"}

// Defaults returns a configuration with every default set and no tenants.
func Defaults() Config {
	return Config{
		DataDir: "./rekey-data",
		Log:     LogConfig{Level: "info", Format: "text"},
		NATS: NATSConfig{
			Embedded:        EmbeddedConfig{Addr: "127.0.0.1:4222"},
			Replicas:        1,
			DuplicateWindow: 2 * time.Minute,
			LeaseTTL:        15 * time.Second,
			AckWait:         3 * time.Second,
			Limits:          DefaultLimits(),
		},
		HTTP: HTTPConfig{
			Addr:              "127.0.0.1:7420",
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxBodyBytes:      1 << 20,
		},
		Rotation: RotationConfig{
			MaxAttempts:    5,
			BackoffInitial: 500 * time.Millisecond,
			BackoffMax:     30 * time.Second,
			Concurrency:    8,
			StepTimeout:    30 * time.Second,
			LockTTL:        3 * time.Second,
			MinInterval:    2 * time.Second,
		},
		Fanout: FanoutConfig{ConfirmTimeout: 10 * time.Second, MaxAgentsPerTenant: 10000,
			PresenceIntervalMin: 500 * time.Millisecond, PresenceIntervalMax: 5 * time.Minute,
			MaxEarlyAcksPerTenant: 10000, MaxListedAgents: 100, AckDelayPerAgent: 60 * time.Microsecond},
	}
}

// Load reads a YAML file over the defaults and validates it. Unknown fields
// are errors, so a typo does not silently fall back to a default.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes YAML over the defaults and validates the result.
func Parse(b []byte) (Config, error) {
	cfg := Defaults()
	if err := configkit.Unmarshal(b, &cfg); err != nil {
		if fe := (*FieldError)(nil); errors.As(err, &fe) {
			return Config{}, err
		}
		return Config{}, fmt.Errorf("parse: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// FieldError names the configuration field that is wrong; it is
// configkit's, so that backend packages need not import orchestrator.
type FieldError = configkit.FieldError

func fieldErr(field, format string, args ...any) error {
	return configkit.FieldErrorf(field, format, args...)
}

// FieldErrorf returns a *FieldError; trigger and backend packages use it in
// their Validate so that DecodeSection can prefix the field.
func FieldErrorf(field, format string, args ...any) error {
	return configkit.FieldErrorf(field, format, args...)
}

// DecodeSection strictly decodes one raw section of the configuration (a
// trigger's or a backend's) into v and validates it: configkit.DecodeSection.
func DecodeSection(prefix string, raw []byte, v interface{ Validate() error }) error {
	return configkit.DecodeSection(prefix, raw, v)
}

// Validate checks every field and returns all problems found, each naming
// its field (e.g. "tenants.acme.secrets.openai-key.backend").
func (c *Config) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c.DataDir == "" {
		add(fieldErr("data_dir", "must be set"))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add(fieldErr("log.level", "%q must be debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add(fieldErr("log.format", "%q must be text or json", c.Log.Format))
	}
	if c.NATS.URL == "" && c.NATS.Embedded.Addr == "" {
		add(fieldErr("nats.embedded.addr", "must be set when nats.url is empty"))
	}
	if c.NATS.URL != "" && !strings.Contains(c.NATS.URL, "://") {
		add(fieldErr("nats.url", "%q must be a URL such as nats://host:4222", c.NATS.URL))
	}
	if c.NATS.Replicas < 1 || c.NATS.Replicas > 5 {
		add(fieldErr("nats.replicas", "%d must be between 1 and 5", c.NATS.Replicas))
	}
	if c.NATS.DuplicateWindow < time.Second {
		add(fieldErr("nats.duplicate_window", "%s must be at least 1s", c.NATS.DuplicateWindow))
	}
	if c.NATS.LeaseTTL < time.Second || c.NATS.LeaseTTL > 10*time.Minute {
		add(fieldErr("nats.lease_ttl", "%s must be between 1s and 10m", c.NATS.LeaseTTL))
	}
	if c.NATS.AgentAuth != nil {
		add(c.NATS.AgentAuth.validate("nats.agent_auth", c.NATS.URL != ""))
	}
	if c.NATS.AckWait < time.Second || c.NATS.AckWait > 10*time.Minute {
		add(fieldErr("nats.ack_wait", "%s must be between 1s and 10m", c.NATS.AckWait))
	}
	add(c.NATS.Limits.validate())
	if c.HTTP.Addr == "" {
		add(fieldErr("http.addr", "must be set"))
	}
	for name, d := range map[string]time.Duration{
		"http.read_header_timeout": c.HTTP.ReadHeaderTimeout,
		"http.read_timeout":        c.HTTP.ReadTimeout,
		"http.write_timeout":       c.HTTP.WriteTimeout,
		"http.idle_timeout":        c.HTTP.IdleTimeout,
		"rotation.backoff_initial": c.Rotation.BackoffInitial,
		"rotation.backoff_max":     c.Rotation.BackoffMax,
		"rotation.step_timeout":    c.Rotation.StepTimeout,
		"rotation.lock_ttl":        c.Rotation.LockTTL,
		"fanout.confirm_timeout":   c.Fanout.ConfirmTimeout,
	} {
		if d <= 0 {
			add(fieldErr(name, "%s must be positive", d))
		}
	}
	if c.Fanout.MaxAgentsPerTenant < 1 || c.Fanout.MaxAgentsPerTenant > 1000000 {
		add(fieldErr("fanout.max_agents_per_tenant", "%d must be between 1 and 1000000", c.Fanout.MaxAgentsPerTenant))
	}
	if c.Fanout.PresenceIntervalMin <= 0 || c.Fanout.PresenceIntervalMax < c.Fanout.PresenceIntervalMin || c.Fanout.PresenceIntervalMax > 24*time.Hour {
		add(fieldErr("fanout.presence_interval_max", "%s must be between fanout.presence_interval_min %s (positive) and 24h",
			c.Fanout.PresenceIntervalMax, c.Fanout.PresenceIntervalMin))
	}
	if c.Fanout.MaxEarlyAcksPerTenant < 0 || c.Fanout.MaxEarlyAcksPerTenant > 1000000 {
		add(fieldErr("fanout.max_early_acks_per_tenant", "%d must be between 0 and 1000000", c.Fanout.MaxEarlyAcksPerTenant))
	}
	if c.Fanout.AckDelayPerAgent < 0 || c.Fanout.AckDelayPerAgent > 10*time.Millisecond {
		add(fieldErr("fanout.ack_delay_per_agent", "%s must be between 0 and 10ms", c.Fanout.AckDelayPerAgent))
	}
	if c.Fanout.MaxListedAgents < 1 || c.Fanout.MaxListedAgents > 5000 {
		add(fieldErr("fanout.max_listed_agents", "%d must be between 1 and 5000 (a confirmation stays under 1 MiB)", c.Fanout.MaxListedAgents))
	}
	if c.HTTP.MaxBodyBytes < 1024 {
		add(fieldErr("http.max_body_bytes", "%d must be at least 1024", c.HTTP.MaxBodyBytes))
	}
	if c.Rotation.MaxAttempts < 1 || c.Rotation.MaxAttempts > 100 {
		add(fieldErr("rotation.max_attempts", "%d must be between 1 and 100", c.Rotation.MaxAttempts))
	}
	if c.Rotation.MinInterval < 0 || c.Rotation.MinInterval > time.Hour {
		add(fieldErr("rotation.min_interval", "%s must be between 0 and 1h", c.Rotation.MinInterval))
	}
	if c.Rotation.Concurrency < 1 {
		add(fieldErr("rotation.concurrency", "%d must be at least 1", c.Rotation.Concurrency))
	}
	if c.Rotation.BackoffMax < c.Rotation.BackoffInitial {
		add(fieldErr("rotation.backoff_max", "%s is less than rotation.backoff_initial %s", c.Rotation.BackoffMax, c.Rotation.BackoffInitial))
	}
	if len(c.Tenants) == 0 {
		add(fieldErr("tenants", "at least one tenant is required"))
	}
	for _, t := range sortedKeys(c.Tenants) {
		add(c.validateTenant(t, c.Tenants[t]))
	}
	return errors.Join(errs...)
}

func (c *Config) validateTenant(name string, t TenantConfig) error {
	field := "tenants." + name
	if err := schemas.ValidateID("tenant", name); err != nil {
		return fieldErr(field, "%v", err)
	}
	if len(t.Secrets) == 0 {
		return fieldErr(field+".secrets", "at least one secret is required")
	}
	var errs []error
	for _, s := range sortedKeys(t.Secrets) {
		sc := t.Secrets[s]
		sf := field + ".secrets." + s
		if err := schemas.ValidateID("secret", s); err != nil {
			errs = append(errs, fieldErr(sf, "%v", err))
			continue
		}
		if !slices.Contains(KnownBackends, sc.Backend) {
			errs = append(errs, fieldErr(sf+".backend", "%q is not one of %s", sc.Backend, strings.Join(KnownBackends, ", ")))
		}
		g := sc.Generator
		if g.Style != "" && g.Style != "password" && g.Style != "api-key" {
			errs = append(errs, fieldErr(sf+".generator.style", "%q must be password or api-key", g.Style))
		}
		if g.Length != 0 && (g.Length < 8 || g.Length > 4096) {
			errs = append(errs, fieldErr(sf+".generator.length", "%d must be between 8 and 4096", g.Length))
		}
		if g.Alphabet != "" && len(g.Alphabet) < 2 {
			errs = append(errs, fieldErr(sf+".generator.alphabet", "must have at least 2 characters"))
		}
		if sc.Policy.MaxUses < 0 {
			errs = append(errs, fieldErr(sf+".policy.max_uses", "%d must not be negative", sc.Policy.MaxUses))
		}
		if p := sc.Policy.OnLeak; p != "" && p != LeakRotate && p != LeakRevoke {
			errs = append(errs, fieldErr(sf+".policy.on_leak", "%q must be rotate or revoke", p))
		}
		if p := sc.Policy.OnCanary; p != "" && (!sc.Policy.Canary || p != LeakRevoke && p != LeakRotateTenant) {
			errs = append(errs, fieldErr(sf+".policy.on_canary", "%q must be revoke or rotate_tenant, on a secret with canary: true", p))
		}
		for i, pat := range sc.Policy.CanaryFetchers {
			if _, err := path.Match(pat, ""); err != nil || !sc.Policy.Canary {
				errs = append(errs, fieldErr(fmt.Sprintf("%s.policy.canary_fetchers[%d]", sf, i), "%q must be a path.Match pattern, on a secret with canary: true", pat))
			}
		}
		if sc.Policy.Jitter < 0 {
			errs = append(errs, fieldErr(sf+".policy.jitter", "%s must not be negative", sc.Policy.Jitter))
		}
		if sc.Policy.TimeZone != "" {
			if _, err := time.LoadLocation(sc.Policy.TimeZone); err != nil {
				errs = append(errs, fieldErr(sf+".policy.timezone", "%v", err))
			}
		}
	}
	return errors.Join(errs...)
}

// Secret looks up one secret's configuration.
func (c *Config) Secret(tenant, secret string) (SecretConfig, bool) {
	t, ok := c.Tenants[tenant]
	if !ok {
		return SecretConfig{}, false
	}
	s, ok := t.Secrets[secret]
	return s, ok
}

// TenantSecrets returns a tenant's secret names, sorted.
func (c *Config) TenantSecrets(tenant string) []string {
	return sortedKeys(c.Tenants[tenant].Secrets)
}

// TenantNames returns every tenant, sorted.
func (c *Config) TenantNames() []string { return sortedKeys(c.Tenants) }

// SecretsOf returns the secrets whose backend is backend, with their
// configuration, by tenant then secret name.
func (c *Config) SecretsOf(backend string) iter.Seq2[schemas.Ref, SecretConfig] {
	return func(yield func(schemas.Ref, SecretConfig) bool) {
		for _, t := range c.TenantNames() {
			for _, s := range c.TenantSecrets(t) {
				if sc := c.Tenants[t].Secrets[s]; sc.Backend == backend && !yield(schemas.Ref{Tenant: t, Secret: s}, sc) {
					return
				}
			}
		}
	}
}

// StoreDir is where the embedded JetStream keeps its files.
func (c *Config) StoreDir() string {
	if c.NATS.Embedded.StoreDir != "" {
		return c.NATS.Embedded.StoreDir
	}
	return filepath.Join(c.DataDir, "jetstream")
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
