package vaultevents

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Section is the configuration section this package reads.
const Section = "triggers.vaultevents"

// Defaults of Config.
const (
	DefaultTokenEnv      = "VAULT_TOKEN"
	DefaultEventType     = "kv-v2/*"
	DefaultTimeout       = 10 * time.Second
	DefaultOwnWriteGrace = 5 * time.Second
	DefaultReconnectMin  = 500 * time.Millisecond
	DefaultReconnectMax  = 30 * time.Second
	DefaultResyncEvery   = 5 * time.Minute
)

// Config is the triggers.vaultevents section of rekey.yaml.
type Config struct {
	// Enabled runs the subscriber (default true when the section is set).
	Enabled bool `yaml:"enabled"`
	// Address of Vault (default: backends.vault's address, which the
	// daemon fills in).
	Address string `yaml:"address"`
	// TokenEnv names the environment variable holding the token the
	// subscriber uses (default VAULT_TOKEN). Its policy needs `read` and
	// `subscribe` on sys/events/subscribe/<event type> and `read` on the
	// secrets' <mount>/data/* and <mount>/metadata/* paths.
	TokenEnv string `yaml:"token_env"`
	// EventType is the event type subscribed to, a Vault glob (default
	// kv-v2/*: data-write, data-patch, data-delete, data-destroy,
	// data-undelete, metadata-delete...).
	EventType string `yaml:"event_type"`
	// Tenants, when not empty, is the allow-list of tenants whose secrets'
	// events are acted on.
	Tenants []string `yaml:"tenants"`
	// Timeout bounds each Vault read (default 10s).
	Timeout time.Duration `yaml:"timeout"`
	// OwnWriteGrace is how long a write whose data carries rekey's
	// version key may wait for rekey's bookkeeping (custom_metadata
	// rekey_kv_version naming that KV version) before it is taken as an
	// outside write (default 5s).
	OwnWriteGrace time.Duration `yaml:"own_write_grace"`
	// ReconnectMin and ReconnectMax bound the backoff between two
	// connection attempts (default 500ms, 30s).
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
	// ResyncEvery is how often every secret is read again while
	// connected (default 5m; 0 turns it off): Vault's event stream gives
	// no sequence numbers, so an event it drops is found this way.
	ResyncEvery time.Duration `yaml:"resync_every"`

	// Secrets are the kind kv secrets of the Vault backend with their
	// mount and path (vault.Config.KVLocations). The daemon fills them;
	// they are not read from the section.
	Secrets []Location `yaml:"-"`
}

// Location is where a secret lives: its KV v2 mount and its path under
// <mount>/data/.
type Location struct {
	Tenant, Secret, Mount, Path string
}

// Defaults returns the configuration of an empty section.
func Defaults() Config {
	return Config{Enabled: true, TokenEnv: DefaultTokenEnv, EventType: DefaultEventType, Timeout: DefaultTimeout,
		OwnWriteGrace: DefaultOwnWriteGrace, ReconnectMin: DefaultReconnectMin, ReconnectMax: DefaultReconnectMax,
		ResyncEvery: DefaultResyncEvery}
}

// ParseConfig decodes the raw section over the defaults, validates it,
// and checks its tenants against the rekey configuration.
func ParseConfig(raw []byte, rekey *orchestrator.Config) (Config, error) {
	cfg := Defaults()
	if s := strings.TrimSpace(string(raw)); s == "null" || s == "~" {
		raw = nil
	}
	if err := orchestrator.DecodeSection(Section, raw, &cfg); err != nil {
		return Config{}, err
	}
	if rekey != nil {
		for i, t := range cfg.Tenants {
			if _, ok := rekey.Tenants[t]; !ok {
				return Config{}, orchestrator.FieldErrorf(fmt.Sprintf("%s.tenants[%d]", Section, i), "tenant %q is not configured in tenants", t)
			}
		}
	}
	return cfg, nil
}

// Validate checks every field, each error naming it within the section.
func (c *Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, orchestrator.FieldErrorf(field, format, args...))
	}
	if c.Address != "" {
		if u, err := url.Parse(c.Address); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("address", "%q must be an http:// or https:// URL", c.Address)
		}
	}
	if c.TokenEnv == "" {
		add("token_env", "must name an environment variable")
	}
	if c.EventType == "" || strings.ContainsAny(c.EventType, " ?#") || !strings.HasPrefix(c.EventType, "kv-v2/") {
		add("event_type", "%q must be a kv-v2 event type or glob (kv-v2/*, kv-v2/data-*)", c.EventType)
	}
	for i, t := range c.Tenants {
		if err := schemas.ValidateID("tenant", t); err != nil {
			add(fmt.Sprintf("tenants[%d]", i), "%v", err)
		}
	}
	if c.Timeout < 100*time.Millisecond || c.Timeout > 5*time.Minute {
		add("timeout", "%s must be between 100ms and 5m", c.Timeout)
	}
	if c.OwnWriteGrace < 0 || c.OwnWriteGrace > time.Minute {
		add("own_write_grace", "%s must be between 0 and 1m", c.OwnWriteGrace)
	}
	if c.ReconnectMin < 10*time.Millisecond || c.ReconnectMax < c.ReconnectMin || c.ReconnectMax > 10*time.Minute {
		add("reconnect_min", "%s..%s: need 10ms <= reconnect_min <= reconnect_max <= 10m", c.ReconnectMin, c.ReconnectMax)
	}
	if c.ResyncEvery != 0 && (c.ResyncEvery < time.Second || c.ResyncEvery > 24*time.Hour) {
		add("resync_every", "%s must be between 1s and 24h (0: off)", c.ResyncEvery)
	}
	return errors.Join(errs...)
}
