package siem

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Section is the configuration section this package reads.
const Section = "triggers.siem"

// Defaults of Config and SourceConfig.
const (
	DefaultMaxBodyBytes = 1 << 20
	DefaultMaxAlerts    = 100
	DefaultDedupWindow  = 10 * time.Minute
	DefaultRatePerSec   = 10
	DefaultRateBurst    = 20
	DefaultMaxSkew      = 5 * time.Minute
)

// Actions a rule can ask for.
const (
	ActionRotate = "rotate"
	ActionRevoke = "revoke"
)

// Config is the triggers.siem section of rekey.yaml.
type Config struct {
	// Enabled: false turns the webhooks off while keeping the section
	// (default true; rekeyd reads it through orchestrator.Config.TriggerOn).
	Enabled *bool `yaml:"enabled"`
	// Sources are the webhook senders, by name: POST /v1/hooks/{name}.
	Sources map[string]SourceConfig `yaml:"sources"`
	// MaxBodyBytes bounds a webhook body (default 1 MiB); larger get 413.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// DedupWindow is how long an alert delivered again (same source, id,
	// tenant and secret) is dropped as a duplicate (default 10m).
	DedupWindow time.Duration `yaml:"dedup_window"`
	// MaxAlerts bounds the alerts of one delivery (default 100); a
	// delivery with more gets 413.
	MaxAlerts int `yaml:"max_alerts"`
}

// SourceConfig is one webhook sender. Zero values take the defaults.
type SourceConfig struct {
	// Format is alertmanager, grafana, splunk, datadog, pagerduty or generic.
	Format string `yaml:"format"`
	// Tenants is the allow-list: the only tenants this source may name.
	Tenants []string `yaml:"tenants"`
	// Auth is how a request proves it comes from the sender (required).
	Auth AuthConfig `yaml:"auth"`
	// Rules turn alerts into requests; for each alert the first rule
	// whose match holds and whose min_severity it reaches applies.
	Rules []RuleConfig `yaml:"rules"`
	// RateLimit bounds accepted webhook requests; over it: 429.
	RateLimit RateLimitConfig `yaml:"rate_limit"`
	// DedupWindow overrides Config.DedupWindow for this source.
	DedupWindow time.Duration `yaml:"dedup_window"`
	// RequireTimestamp refuses alerts that do not say when they started
	// firing (see Alert.FiredAt), so that a captured delivery replayed
	// after the dedup window is refused as stale instead of taken as new.
	RequireTimestamp bool `yaml:"require_timestamp"`
	// MaxBodyBytes overrides Config.MaxBodyBytes for this source.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxAlerts overrides Config.MaxAlerts for this source.
	MaxAlerts int `yaml:"max_alerts"`
	// SeverityLabel, when set, is the label the severity is read from,
	// instead of the format's own (see the parsers).
	SeverityLabel string `yaml:"severity_label"`
	// Severities maps vendor severities (case-insensitive) to info,
	// warning, error or critical, before the built-in mapping.
	Severities map[string]string `yaml:"severities"`
	// DefaultSeverity applies to alerts whose severity is unknown.
	DefaultSeverity string `yaml:"default_severity"`
	// Generic is the field mapping of format generic (and only of it).
	Generic *GenericMapping `yaml:"generic"`
	// Preset names a built-in generic mapping (see Presets): splunk,
	// azure-monitor, sumologic, kibana, panther, opsgenie. It implies
	// format generic; generic, if set too, overrides its fields.
	Preset string `yaml:"preset"`
}

// format is the source's format (generic when only a preset is named).
func (s SourceConfig) format() string {
	if s.Format == "" && s.Preset != "" {
		return FormatGeneric
	}
	return s.Format
}

// mapping is the generic mapping the source uses: its preset's with its
// own over it, or its own.
func (s SourceConfig) mapping() *GenericMapping {
	if p, ok := Presets[s.Preset]; ok {
		m := p.merge(s.Generic)
		return &m
	}
	return s.Generic
}

// AuthConfig holds exactly one authentication method.
type AuthConfig struct {
	HMAC   *HMACAuth   `yaml:"hmac"`
	Bearer *BearerAuth `yaml:"bearer"`
	Basic  *BasicAuth  `yaml:"basic"`
	// URLSecret is for senders that cannot set a header (Splunk's webhook
	// alert action, Azure Monitor's plain webhooks).
	URLSecret *URLSecretAuth `yaml:"url_secret"`
	// EntraID is Azure Monitor's secure webhook: a Microsoft Entra ID
	// bearer token.
	EntraID *EntraIDAuth `yaml:"entra_id"`
}

// URLSecretAuth checks a secret carried in the URL: as the path segment
// after the source (POST /v1/hooks/{source}/{secret}) or as the query
// parameter Param (POST /v1/hooks/{source}?key=...). Compared in constant
// time; never logged, counted, audited or repeated in a reply. Anything
// between the sender and rekeyd that logs URLs (a proxy, a load
// balancer) sees it: prefer a header method where the sender has one.
type URLSecretAuth struct {
	// Secrets and SecretsEnv (names of environment variables holding
	// one each): every one is accepted, so that a new secret can be
	// given to the sender before the old one is removed. Each at least
	// 16 bytes of A-Z a-z 0-9 - . _ ~ (it goes in a URL as is).
	Secrets    []Secret `yaml:"secrets"`
	SecretsEnv []string `yaml:"secrets_env"`
	// Param is the query parameter (default "key").
	Param string `yaml:"param"`
}

// DefaultURLSecretParam is URLSecretAuth.Param's default.
const DefaultURLSecretParam = "key"

// EntraIDAuth checks "Authorization: Bearer <JWT>" issued by Microsoft
// Entra ID, as Azure Monitor action groups send with "secure webhook": an
// RS256 signature by a key of the JWKS, an issuer of Issuers, an audience
// of Audiences, an unexpired exp.
type EntraIDAuth struct {
	// TenantID is the Entra ID (directory) tenant; it sets the default
	// issuers and JWKS URL, and the token's tid claim must equal it.
	TenantID string `yaml:"tenant_id"`
	// Audiences: the token's aud must be one of them (required): the
	// Application ID URI or client id of the app registration the action
	// group names.
	Audiences []string `yaml:"audiences"`
	// Issuers (default https://sts.windows.net/<tenant_id>/ and
	// https://login.microsoftonline.com/<tenant_id>/v2.0).
	Issuers []string `yaml:"issuers"`
	// JWKSURL (default https://login.microsoftonline.com/<tenant_id>/discovery/v2.0/keys):
	// https, or http to a loopback address.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSCAFile, if set, is the PEM CA bundle JWKSURL's certificate must
	// chain to.
	JWKSCAFile string `yaml:"jwks_ca_file"`
	// AppIDs, if set: the token's appid (v1) or azp (v2) must be one of
	// them (Azure Monitor's is 461e8683-5575-4561-ac7f-899cc907d62a).
	AppIDs []string `yaml:"app_ids"`
	// Leeway for exp and nbf (default 1m, at most 5m).
	Leeway time.Duration `yaml:"leeway"`
}

// withDefaults fills the issuers and the JWKS URL from the tenant id.
func (e EntraIDAuth) withDefaults() EntraIDAuth {
	if len(e.Issuers) == 0 && e.TenantID != "" {
		e.Issuers = []string{"https://sts.windows.net/" + e.TenantID + "/", "https://login.microsoftonline.com/" + e.TenantID + "/v2.0"}
	}
	if e.JWKSURL == "" && e.TenantID != "" {
		e.JWKSURL = "https://login.microsoftonline.com/" + e.TenantID + "/discovery/v2.0/keys"
	}
	if e.Leeway == 0 {
		e.Leeway = time.Minute
	}
	return e
}

// HMACAuth checks an HMAC-SHA256 of the raw body sent in a header.
type HMACAuth struct {
	// Secret or SecretEnv (the name of an environment variable holding
	// it): the shared key, at least 16 bytes.
	Secret    Secret `yaml:"secret"`
	SecretEnv string `yaml:"secret_env"`
	// Header carries the signature. Default X-PagerDuty-Signature for
	// pagerduty, X-Grafana-Alerting-Signature for grafana; required for
	// other formats.
	Header string `yaml:"header"`
	// Prefix precedes each signature: "sha256=" (GitHub style), "v1="
	// (PagerDuty, the default for pagerduty) or "" (Grafana, the default
	// for the others). The header may hold several comma-separated
	// signatures (PagerDuty during a key rotation); one valid is enough.
	Prefix *string `yaml:"prefix"`
	// Encoding of the signature: hex (default) or base64.
	Encoding string `yaml:"encoding"`
	// TimestampHeader, when set, carries a Unix time (seconds) that must
	// be within MaxSkew of now, and the signature is over
	// "<timestamp>:<body>" (Grafana's scheme) instead of the body alone.
	TimestampHeader string        `yaml:"timestamp_header"`
	MaxSkew         time.Duration `yaml:"max_skew"`
}

// BearerAuth checks "Authorization: Bearer <token>".
type BearerAuth struct {
	Token    Secret `yaml:"token"`
	TokenEnv string `yaml:"token_env"`
}

// BasicAuth checks HTTP basic authentication.
type BasicAuth struct {
	Username    string `yaml:"username"`
	Password    Secret `yaml:"password"`
	PasswordEnv string `yaml:"password_env"`
}

// RateLimitConfig is a token bucket per source.
type RateLimitConfig struct {
	// PerSecond is the sustained rate (default 10); Burst the bucket size
	// (default 20).
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// RuleConfig turns a matching alert into requests.
type RuleConfig struct {
	// Name appears in audit records and request reasons (default rule-<n>).
	Name string `yaml:"name"`
	// Match: every label must equal its value. MatchRE: every label must
	// match its regular expression (RE2, anchored). Both empty: any alert.
	Match   map[string]string `yaml:"match"`
	MatchRE map[string]string `yaml:"match_re"`
	// The tenant: fixed (Tenant) or read from a label (TenantLabel).
	Tenant      string `yaml:"tenant"`
	TenantLabel string `yaml:"tenant_label"`
	// For rotate, the secrets: fixed (Secrets), read from a label
	// (SecretLabel, comma-separated for several) or every secret of the
	// tenant (AllSecrets). Revoke is tenant-wide and takes none.
	Secrets     []string `yaml:"secrets"`
	SecretLabel string   `yaml:"secret_label"`
	AllSecrets  bool     `yaml:"all_secrets"`
	// Action is rotate (default) or revoke.
	Action string `yaml:"action"`
	// MinSeverity: info, warning, error or critical; empty matches any
	// alert, even one without a severity.
	MinSeverity string `yaml:"min_severity"`
}

// Secret is a credential from the configuration. It prints, logs and
// encodes as "[redacted]", never as its value.
type Secret string

const redacted = "[redacted]"

func (Secret) String() string               { return redacted }
func (Secret) GoString() string             { return `"` + redacted + `"` }
func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (Secret) MarshalYAML() (any, error)    { return redacted, nil }

// Defaults returns the section's defaults, with no sources.
func Defaults() Config {
	return Config{MaxBodyBytes: DefaultMaxBodyBytes, DedupWindow: DefaultDedupWindow, MaxAlerts: DefaultMaxAlerts}
}

// ParseConfig decodes the raw triggers.siem section over the defaults,
// validates it, and checks it against the rekey configuration: every
// allow-listed tenant and every fixed secret must be configured. Errors
// name their field, e.g. "triggers.siem.sources.prod-am.auth.hmac.header".
func ParseConfig(raw []byte, rekey *orchestrator.Config) (Config, error) {
	cfg := Defaults()
	if err := orchestrator.DecodeSection(Section, raw, &cfg); err != nil {
		return Config{}, err
	}
	if err := cfg.checkAgainst(rekey); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// checkAgainst checks tenants and fixed secrets exist in rekey's config.
func (c Config) checkAgainst(rekey *orchestrator.Config) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, orchestrator.FieldErrorf(Section+"."+field, format, args...))
	}
	for _, name := range sortedKeys(c.Sources) {
		s := c.Sources[name]
		sf := "sources." + name
		for i, t := range s.Tenants {
			if _, ok := rekey.Tenants[t]; !ok {
				add(fmt.Sprintf("%s.tenants[%d]", sf, i), "tenant %q is not configured in tenants", t)
			}
		}
		for i, r := range s.Rules {
			if r.Tenant == "" {
				continue
			}
			for j, sec := range r.Secrets {
				if _, ok := rekey.Secret(r.Tenant, sec); !ok {
					add(fmt.Sprintf("%s.rules[%d].secrets[%d]", sf, i, j), "secret %q of tenant %q is not configured", sec, r.Tenant)
				}
			}
		}
	}
	return errors.Join(errs...)
}

type fieldProblem struct{ field, reason string }

// Validate checks every field and returns every problem found, each a
// *orchestrator.FieldError naming its field relative to the section
// ("sources.prod-am.auth.hmac.header"). Zero values stand for defaults.
func (c Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, orchestrator.FieldErrorf(field, format, args...))
	}
	if c.MaxBodyBytes != 0 && (c.MaxBodyBytes < 1024 || c.MaxBodyBytes > 64<<20) {
		add("max_body_bytes", "%d must be between 1024 and 67108864", c.MaxBodyBytes)
	}
	if c.DedupWindow != 0 && (c.DedupWindow < time.Second || c.DedupWindow > 7*24*time.Hour) {
		add("dedup_window", "%s must be between 1s and 168h", c.DedupWindow)
	}
	if c.MaxAlerts < 0 || c.MaxAlerts > 100000 {
		add("max_alerts", "%d must be between 0 and 100000 (0: default %d)", c.MaxAlerts, DefaultMaxAlerts)
	}
	for _, name := range sortedKeys(c.Sources) {
		sf := "sources." + name
		if err := schemas.ValidateID("source", name); err != nil {
			add(sf, "source name: %v", err)
			continue
		}
		for _, p := range c.Sources[name].validate() {
			add(sf+"."+p.field, "%s", p.reason)
		}
	}
	return errors.Join(errs...)
}

func (s SourceConfig) validate() []fieldProblem {
	var out []fieldProblem
	add := func(field, format string, args ...any) {
		out = append(out, fieldProblem{field, fmt.Sprintf(format, args...)})
	}
	format := s.format()
	if !slices.Contains(Formats, format) {
		add("format", "%q must be one of %s", s.Format, strings.Join(Formats, ", "))
	}
	if _, ok := Presets[s.Preset]; s.Preset != "" && !ok {
		add("preset", "%q must be one of %s", s.Preset, strings.Join(PresetNames(), ", "))
	} else if s.Preset != "" && format != FormatGeneric {
		add("preset", "is only for format generic")
	}
	if format == FormatGeneric {
		if m := s.mapping(); m == nil {
			add("generic", "must be set for format generic (or preset)")
		} else {
			for _, p := range m.validate() {
				add("generic."+p.field, "%s", p.reason)
			}
		}
	} else if s.Generic != nil {
		add("generic", "is only for format generic")
	}
	allowed := map[string]bool{}
	if len(s.Tenants) == 0 {
		add("tenants", "at least one tenant is required (the tenants this source may name)")
	}
	for i, t := range s.Tenants {
		if err := schemas.ValidateID("tenant", t); err != nil {
			add(fmt.Sprintf("tenants[%d]", i), "%v", err)
		}
		allowed[t] = true
	}
	out = append(out, s.Auth.validate(format)...)
	if len(s.Rules) == 0 {
		add("rules", "at least one rule is required")
	}
	names := map[string]bool{}
	for i, r := range s.Rules {
		rf := fmt.Sprintf("rules[%d]", i)
		for _, p := range r.validate(allowed) {
			add(rf+"."+p.field, "%s", p.reason)
		}
		if n := r.name(i); names[n] {
			add(rf+".name", "%q is used by another rule", n)
		} else {
			names[n] = true
		}
	}
	if s.RateLimit.PerSecond < 0 || s.RateLimit.PerSecond > 10000 {
		add("rate_limit.per_second", "%g must be between 0 and 10000 (0: default %d)", s.RateLimit.PerSecond, DefaultRatePerSec)
	}
	if s.RateLimit.Burst < 0 || s.RateLimit.Burst > 100000 {
		add("rate_limit.burst", "%d must be between 0 and 100000 (0: default %d)", s.RateLimit.Burst, DefaultRateBurst)
	}
	if s.DedupWindow != 0 && (s.DedupWindow < time.Second || s.DedupWindow > 7*24*time.Hour) {
		add("dedup_window", "%s must be between 1s and 168h", s.DedupWindow)
	}
	if s.MaxBodyBytes != 0 && (s.MaxBodyBytes < 1024 || s.MaxBodyBytes > 64<<20) {
		add("max_body_bytes", "%d must be between 1024 and 67108864", s.MaxBodyBytes)
	}
	if s.MaxAlerts < 0 || s.MaxAlerts > 100000 {
		add("max_alerts", "%d must be between 0 and 100000 (0: the section's)", s.MaxAlerts)
	}
	for _, k := range sortedKeys(s.Severities) {
		if _, ok := SeverityLevel(s.Severities[k]); !ok {
			add("severities."+k, "%q must be info, warning, error or critical", s.Severities[k])
		}
	}
	if s.DefaultSeverity != "" {
		if _, ok := SeverityLevel(s.DefaultSeverity); !ok {
			add("default_severity", "%q must be info, warning, error or critical", s.DefaultSeverity)
		}
	}
	return out
}

func (a AuthConfig) validate(format string) []fieldProblem {
	var out []fieldProblem
	add := func(field, format string, args ...any) {
		out = append(out, fieldProblem{field, fmt.Sprintf(format, args...)})
	}
	n := 0
	for _, set := range []bool{a.HMAC != nil, a.Bearer != nil, a.Basic != nil, a.URLSecret != nil, a.EntraID != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		add("auth", "exactly one of hmac, bearer, basic, url_secret or entra_id is required")
	}
	secret := func(field, envField string, v Secret, env string) {
		switch {
		case v != "" && env != "":
			add(field, "set %s or %s, not both", field[strings.LastIndexByte(field, '.')+1:], envField[strings.LastIndexByte(envField, '.')+1:])
		case v == "" && env == "":
			add(field, "is required (or %s)", envField[strings.LastIndexByte(envField, '.')+1:])
		case v != "" && len(v) < 16:
			add(field, "must be at least 16 bytes")
		}
	}
	if h := a.HMAC; h != nil {
		secret("auth.hmac.secret", "auth.hmac.secret_env", h.Secret, h.SecretEnv)
		e := h.withDefaults(format)
		if e.Header == "" {
			add("auth.hmac.header", "must be set for format %s (e.g. X-Hub-Signature-256)", format)
		} else if !validHeaderName(e.Header) {
			add("auth.hmac.header", "%q is not a header name", e.Header)
		}
		if e.Encoding != "hex" && e.Encoding != "base64" {
			add("auth.hmac.encoding", "%q must be hex or base64", e.Encoding)
		}
		if h.TimestampHeader != "" && !validHeaderName(h.TimestampHeader) {
			add("auth.hmac.timestamp_header", "%q is not a header name", h.TimestampHeader)
		}
		if h.MaxSkew < 0 || h.MaxSkew > time.Hour {
			add("auth.hmac.max_skew", "%s must be between 0 and 1h (0: default %s)", h.MaxSkew, DefaultMaxSkew)
		}
	}
	if b := a.Bearer; b != nil {
		secret("auth.bearer.token", "auth.bearer.token_env", b.Token, b.TokenEnv)
	}
	if b := a.Basic; b != nil {
		if b.Username == "" || strings.Contains(b.Username, ":") {
			add("auth.basic.username", "must be set, without ':'")
		}
		secret("auth.basic.password", "auth.basic.password_env", b.Password, b.PasswordEnv)
	}
	if u := a.URLSecret; u != nil {
		out = append(out, u.validate()...)
	}
	if e := a.EntraID; e != nil {
		out = append(out, e.validate()...)
	}
	return out
}

func (u URLSecretAuth) validate() []fieldProblem {
	var out []fieldProblem
	if len(u.Secrets)+len(u.SecretsEnv) == 0 {
		out = append(out, fieldProblem{"auth.url_secret.secrets", "at least one secret is required (or secrets_env)"})
	}
	if len(u.Secrets)+len(u.SecretsEnv) > maxURLSecrets {
		out = append(out, fieldProblem{"auth.url_secret.secrets", fmt.Sprintf("at most %d secrets (with secrets_env)", maxURLSecrets)})
	}
	for i, s := range u.Secrets {
		if err := checkURLSecret(string(s)); err != nil {
			out = append(out, fieldProblem{fmt.Sprintf("auth.url_secret.secrets[%d]", i), err.Error()})
		}
	}
	for i, env := range u.SecretsEnv {
		if env == "" {
			out = append(out, fieldProblem{fmt.Sprintf("auth.url_secret.secrets_env[%d]", i), "is empty"})
		}
	}
	if u.Param != "" && !validHeaderName(u.Param) {
		out = append(out, fieldProblem{"auth.url_secret.param", fmt.Sprintf("%q must be letters, digits, - or _", u.Param)})
	}
	return out
}

// maxURLSecrets bounds the secrets a url_secret source accepts at once.
const maxURLSecrets = 4

// checkURLSecret says why s cannot be a URL secret, without repeating it.
func checkURLSecret(s string) error {
	if len(s) < 16 {
		return errors.New("must be at least 16 bytes")
	}
	if len(s) > 256 {
		return errors.New("must be at most 256 bytes")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return errors.New("must hold only A-Z a-z 0-9 - . _ ~ (it goes in a URL as is)")
		}
	}
	return nil
}

func (e EntraIDAuth) validate() []fieldProblem {
	var out []fieldProblem
	add := func(field, format string, args ...any) {
		out = append(out, fieldProblem{"auth.entra_id." + field, fmt.Sprintf(format, args...)})
	}
	if e.TenantID != "" && !entraTenantRE.MatchString(e.TenantID) {
		add("tenant_id", "%q must be a directory (tenant) id, a GUID", shortText(e.TenantID, 64))
	}
	if len(e.Audiences) == 0 {
		add("audiences", "at least one audience is required (the app registration's Application ID URI or client id)")
	}
	for i, a := range e.Audiences {
		if strings.TrimSpace(a) == "" {
			add(fmt.Sprintf("audiences[%d]", i), "is empty")
		}
	}
	d := e.withDefaults()
	if len(d.Issuers) == 0 {
		add("issuers", "must be set, or tenant_id")
	}
	for i, is := range d.Issuers {
		if strings.TrimSpace(is) == "" {
			add(fmt.Sprintf("issuers[%d]", i), "is empty")
		}
	}
	if d.JWKSURL == "" {
		add("jwks_url", "must be set, or tenant_id")
	} else if err := orchestrator.CheckJWKSURL(d.JWKSURL); err != nil {
		add("jwks_url", "%v", err)
	}
	if e.Leeway < 0 || e.Leeway > 5*time.Minute {
		add("leeway", "%s must be between 0 and 5m (0: default 1m)", e.Leeway)
	}
	return out
}

var entraTenantRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// withDefaults fills the format's default header, prefix and encoding.
func (h HMACAuth) withDefaults(format string) HMACAuth {
	if h.Header == "" {
		switch format {
		case FormatPagerDuty:
			h.Header = "X-PagerDuty-Signature"
		case FormatGrafana:
			h.Header = "X-Grafana-Alerting-Signature"
		}
	}
	if h.Prefix == nil {
		p := ""
		if format == FormatPagerDuty {
			p = "v1="
		}
		h.Prefix = &p
	}
	if h.Encoding == "" {
		h.Encoding = "hex"
	}
	if h.MaxSkew == 0 {
		h.MaxSkew = DefaultMaxSkew
	}
	return h
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (r RuleConfig) name(i int) string {
	if r.Name != "" {
		return r.Name
	}
	return fmt.Sprintf("rule-%d", i+1)
}

func (r RuleConfig) validate(allowed map[string]bool) []fieldProblem {
	var out []fieldProblem
	add := func(field, format string, args ...any) {
		out = append(out, fieldProblem{field, fmt.Sprintf(format, args...)})
	}
	if r.Name != "" {
		if err := schemas.ValidateID("rule", r.Name); err != nil {
			add("name", "%v", err)
		}
	}
	for _, k := range sortedKeys(r.Match) {
		if k == "" {
			add("match", "a label name is empty")
		}
	}
	for _, k := range sortedKeys(r.MatchRE) {
		if _, err := regexp.Compile("^(?:" + r.MatchRE[k] + ")$"); err != nil {
			add("match_re."+k, "%v", err)
		}
	}
	switch {
	case (r.Tenant == "") == (r.TenantLabel == ""):
		add("tenant", "exactly one of tenant or tenant_label is required")
	case r.Tenant != "":
		if err := schemas.ValidateID("tenant", r.Tenant); err != nil {
			add("tenant", "%v", err)
		} else if !allowed[r.Tenant] {
			add("tenant", "%q is not in the source's tenants", r.Tenant)
		}
	}
	action := r.Action
	if action == "" {
		action = ActionRotate
	}
	nsec := 0
	if len(r.Secrets) > 0 {
		nsec++
	}
	if r.SecretLabel != "" {
		nsec++
	}
	if r.AllSecrets {
		nsec++
	}
	switch action {
	case ActionRotate:
		if nsec != 1 {
			add("secrets", "exactly one of secrets, secret_label or all_secrets is required for rotate")
		}
		for i, s := range r.Secrets {
			if err := schemas.ValidateID("secret", s); err != nil {
				add(fmt.Sprintf("secrets[%d]", i), "%v", err)
			}
		}
	case ActionRevoke:
		if nsec != 0 {
			add("secrets", "revoke is tenant-wide: secrets, secret_label and all_secrets must not be set")
		}
	default:
		add("action", "%q must be rotate or revoke", r.Action)
	}
	if r.MinSeverity != "" {
		if _, ok := SeverityLevel(r.MinSeverity); !ok {
			add("min_severity", "%q must be info, warning, error or critical", r.MinSeverity)
		}
	}
	return out
}

// resolveSecret returns the value, or the environment variable's.
func resolveSecret(field string, v Secret, env string) (Secret, error) {
	if env == "" {
		return v, nil
	}
	s := os.Getenv(env)
	if s == "" {
		return "", orchestrator.FieldErrorf(field, "environment variable %s is empty or unset", env)
	}
	if len(s) < 16 {
		return "", orchestrator.FieldErrorf(field, "environment variable %s must hold at least 16 bytes", env)
	}
	return Secret(s), nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
