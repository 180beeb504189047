package awssm

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/orchestrator/configkit"
	"github.com/rekey-dev/rekey/schemas"
)

// Section is where the backend's configuration lives in rekey.yaml.
const Section = "backends.awssm"

// Secret options (SecretRef.Options, `options:` in rekey.yaml).
const (
	// OptName is the secret's name in Secrets Manager; it overrides
	// name_template and may use {tenant} and {secret}.
	OptName = "name"
	// OptMode is ModeStaged (default) or ModeDelegated.
	OptMode = "mode"
	// OptSetURL is an HTTPS endpoint that Set posts to (staged mode).
	OptSetURL = "set_url"
	// OptTestURL is an HTTPS endpoint that Test posts to (staged mode).
	OptTestURL = "test_url"
)

// Rotation modes (OptMode).
const (
	// ModeStaged: rekey makes the new value and drives the staging labels.
	ModeStaged = "staged"
	// ModeDelegated: the secret's rotation Lambda does the work; rekey
	// starts it with RotateSecret and waits for it to end.
	ModeDelegated = "delegated"
)

// Template placeholders.
const (
	PlaceholderTenant = "{tenant}"
	PlaceholderSecret = "{secret}"
)

// Defaults.
const (
	DefaultNameTemplate     = "/tenants/{tenant}/{secret}"
	DefaultTenantPrefix     = "/tenants/{tenant}/"
	DefaultTenantTag        = "TenantId"
	DefaultWriteTPS         = 50
	DefaultRotateTPS        = 50
	DefaultTimeout          = 10 * time.Second
	DefaultDelegatedTimeout = 15 * time.Minute
	DefaultPollInterval     = 5 * time.Second
	DefaultMaxRetries       = 8
)

// Config is the backends.awssm section, plus the tenants and the awssm
// secrets of the whole configuration, which ParseConfig fills in.
type Config struct {
	// Region is the AWS region of the secrets (required).
	Region string `yaml:"region"`
	// Endpoint overrides the Secrets Manager endpoint (the SDK's
	// BaseEndpoint), e.g. http://127.0.0.1:4566 or a VPC endpoint URL.
	Endpoint string `yaml:"endpoint"`
	// NameTemplate is a secret's name, with {tenant} and {secret}. It must
	// start with TenantPrefix.
	NameTemplate string `yaml:"name_template"`
	// TenantPrefix is the prefix, with {tenant}, under which every name of
	// a tenant's secrets must lie. No tenant's prefix may be a prefix of
	// another's.
	TenantPrefix string `yaml:"tenant_prefix"`
	// TenantTag is the tag key whose value must be the tenant on every
	// secret rekey writes to.
	TenantTag string `yaml:"tenant_tag"`
	// WriteTPS paces PutSecretValue and UpdateSecretVersionStage calls
	// (Secrets Manager's shared write quota), per process.
	WriteTPS float64 `yaml:"write_tps"`
	// RotateTPS paces RotateSecret calls, per process.
	RotateTPS float64 `yaml:"rotate_tps"`
	// Timeout bounds each Secrets Manager call, its SDK retries included,
	// and each set_url or test_url hook.
	Timeout time.Duration `yaml:"timeout"`
	// DelegatedTimeout bounds how long Finish waits for a delegated
	// rotation to end.
	DelegatedTimeout time.Duration `yaml:"delegated_timeout"`
	// PollInterval is how often Finish describes the secret while it waits
	// for a delegated rotation.
	PollInterval time.Duration `yaml:"poll_interval"`
	// MaxRetries is how many times the SDK retries a throttled or failed
	// call, with exponential back-off (0 means the default, 8).
	MaxRetries int `yaml:"max_retries"`

	// Tenants are every tenant of the configuration (for the prefix
	// overlap check); Secrets are the secrets whose backend is awssm.
	// ParseConfig fills both; tests may set them directly.
	Tenants []string             `yaml:"-"`
	Secrets []handlers.SecretRef `yaml:"-"`
}

// Defaults returns c with every unset field filled.
func (c Config) Defaults() Config {
	def(&c.NameTemplate, DefaultNameTemplate)
	def(&c.TenantPrefix, DefaultTenantPrefix)
	def(&c.TenantTag, DefaultTenantTag)
	def(&c.WriteTPS, DefaultWriteTPS)
	def(&c.RotateTPS, DefaultRotateTPS)
	def(&c.Timeout, DefaultTimeout)
	def(&c.DelegatedTimeout, DefaultDelegatedTimeout)
	def(&c.PollInterval, DefaultPollInterval)
	def(&c.MaxRetries, DefaultMaxRetries)
	return c
}

// def sets *p to v when *p is the zero value.
func def[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// ParseConfig decodes the backends.awssm section (raw, from
// orchestrator.Config.Backends.AWSSM) strictly over the defaults, adds the
// tenants and the awssm secrets of rekey, and validates all of it. Errors
// are *configkit.FieldError naming the field, e.g.
// "backends.awssm.region" or "tenants.acme.secrets.stripe-key.options.mode";
// they never quote a value of the file other than names and URLs' hosts.
func ParseConfig(raw yaml.RawMessage, rekey handlers.RekeyConfig) (Config, error) {
	cfg := Config{}.Defaults()
	if err := configkit.DecodeSection(Section, raw, &cfg); err != nil {
		return Config{}, err
	}
	if rekey != nil {
		cfg.Tenants, cfg.Secrets = rekey.TenantNames(), handlers.BackendRefs(rekey, Name)
	}
	if err := cfg.validateSecrets(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

var (
	regionRE = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)
	// nameRE is a Secrets Manager secret name.
	nameRE = regexp.MustCompile(`^[A-Za-z0-9/_+=.@-]{1,512}$`)
	// tagKeyRE is a tag key Secrets Manager accepts.
	tagKeyRE = regexp.MustCompile(`^[A-Za-z0-9 _.:/=+@-]{1,128}$`)
)

// Validate checks c after Defaults: the section itself (field names
// relative to backends.awssm), then the secrets (full names).
func (c Config) Validate() error {
	c = c.Defaults()
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, configkit.FieldErrorf(field, format, args...))
	}
	switch {
	case c.Region == "":
		add("region", "must be set (e.g. us-east-1)")
	case !regionRE.MatchString(c.Region):
		add("region", "%q is not an AWS region name (e.g. us-east-1)", c.Region)
	}
	if c.Endpoint != "" {
		if u, err := url.Parse(c.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
			add("endpoint", "must be an http:// or https:// URL without credentials or query")
		}
	}
	if err := checkTemplate(c.NameTemplate, PlaceholderTenant, PlaceholderSecret); err != nil {
		add("name_template", "%q: %v", c.NameTemplate, err)
	} else if !strings.Contains(c.NameTemplate, PlaceholderSecret) {
		add("name_template", "%q must contain {secret}", c.NameTemplate)
	}
	if err := checkTemplate(c.TenantPrefix, PlaceholderTenant); err != nil {
		add("tenant_prefix", "%q: %v", c.TenantPrefix, err)
	} else if !strings.Contains(c.TenantPrefix, PlaceholderTenant) {
		add("tenant_prefix", "%q must contain {tenant}", c.TenantPrefix)
	}
	if !strings.HasPrefix(c.NameTemplate, c.TenantPrefix) || c.NameTemplate == c.TenantPrefix {
		add("name_template", "%q must start with tenant_prefix %q, so that every name lies under its tenant's prefix", c.NameTemplate, c.TenantPrefix)
	}
	if !tagKeyRE.MatchString(c.TenantTag) || strings.HasPrefix(strings.ToLower(c.TenantTag), "aws:") {
		add("tenant_tag", "%q is not a tag key (1-128 letters, digits, spaces and _.:/=+-@, not starting with aws:)", c.TenantTag)
	}
	for _, f := range []struct {
		field string
		v     float64
	}{{"write_tps", c.WriteTPS}, {"rotate_tps", c.RotateTPS}} {
		if f.v <= 0 || f.v > 10000 {
			add(f.field, "%g must be more than 0 and at most 10000", f.v)
		}
	}
	for _, f := range []struct {
		field string
		d     time.Duration
	}{{"timeout", c.Timeout}, {"delegated_timeout", c.DelegatedTimeout}, {"poll_interval", c.PollInterval}} {
		if f.d <= 0 {
			add(f.field, "%s must be positive", f.d)
		}
	}
	if c.MaxRetries < 0 || c.MaxRetries > 20 {
		add("max_retries", "%d must be between 0 (the default, %d) and 20", c.MaxRetries, DefaultMaxRetries)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.validateSecrets()
}

// checkTemplate accepts the allowed placeholders and the characters of a
// secret name.
func checkTemplate(tmpl string, allowed ...string) error {
	s := tmpl
	for _, p := range allowed {
		s = strings.ReplaceAll(s, p, "x")
	}
	if strings.ContainsAny(s, "{}") {
		return fmt.Errorf("unknown placeholder (allowed: %s)", strings.Join(allowed, ", "))
	}
	if !nameRE.MatchString(s) {
		return errors.New("must be 1-512 letters, digits and /_+=.@-")
	}
	return nil
}

// validateSecrets checks every awssm secret's options and name, that no two
// secrets share a name, and that no tenant's prefix contains another's.
// Field names are full (tenants.<t>.secrets.<s>...).
func (c Config) validateSecrets() error {
	c = c.Defaults()
	var errs []error
	owner := map[string]string{} // name -> field of the secret using it
	for _, ref := range c.Secrets {
		field := "tenants." + ref.Tenant + ".secrets." + ref.Secret
		loc, err := c.locate(ref)
		if err != nil {
			var fe *configkit.FieldError
			if errors.As(err, &fe) {
				errs = append(errs, configkit.FieldErrorf(field+"."+fe.Field, "%s", fe.Reason))
			} else {
				errs = append(errs, configkit.FieldErrorf(field, "%v", err))
			}
			continue
		}
		if other, ok := owner[loc.name]; ok {
			errs = append(errs, configkit.FieldErrorf(field, "resolves to the secret %s, as does %s: two rekey secrets would rotate one AWS secret", loc.name, other))
			continue
		}
		owner[loc.name] = field
	}
	tenants := slices.Clone(c.Tenants)
	for _, ref := range c.Secrets {
		if !slices.Contains(tenants, ref.Tenant) {
			tenants = append(tenants, ref.Tenant)
		}
	}
	slices.Sort(tenants)
	for i, a := range tenants {
		for _, b := range tenants[i+1:] {
			pa, pb := c.prefix(a), c.prefix(b)
			if strings.HasPrefix(pa, pb) || strings.HasPrefix(pb, pa) {
				errs = append(errs, configkit.FieldErrorf(Section+".tenant_prefix",
					"tenants %s and %s get overlapping prefixes %q and %q: one tenant's names would pass the other's check; end the prefix with \"/\"", a, b, pa, pb))
			}
		}
	}
	return errors.Join(errs...)
}

// location is where one secret lives and how it rotates.
type location struct {
	name    string
	mode    string
	setURL  string
	testURL string
}

func fill(tmpl, tenant, secret string) string {
	return strings.NewReplacer(PlaceholderTenant, tenant, PlaceholderSecret, secret).Replace(tmpl)
}

// prefix is the tenant's name prefix.
func (c Config) prefix(tenant string) string { return fill(c.TenantPrefix, tenant, "") }

var knownOptions = []string{OptName, OptMode, OptSetURL, OptTestURL}

// locate resolves a secret's name and options and checks that the name lies
// under its tenant's prefix. Errors are FieldErrors relative to the secret
// (options.name...) and wrap handlers.ErrPermanent.
func (c Config) locate(ref handlers.SecretRef) (location, error) {
	if err := schemas.ValidateRef(ref.Tenant, ref.Secret); err != nil {
		return location{}, fmt.Errorf("%w: %w", err, handlers.ErrPermanent)
	}
	bad := func(field, format string, args ...any) (location, error) {
		return location{}, fmt.Errorf("%w: %w", configkit.FieldErrorf(field, format, args...), handlers.ErrPermanent)
	}
	for k := range ref.Options {
		if !slices.Contains(knownOptions, k) {
			return bad("options."+k, "unknown option (known: %s)", strings.Join(knownOptions, ", "))
		}
	}
	loc := location{name: fill(c.NameTemplate, ref.Tenant, ref.Secret), mode: ModeStaged}
	if n, ok := ref.Options[OptName]; ok {
		if err := checkTemplate(n, PlaceholderTenant, PlaceholderSecret); err != nil {
			return bad("options."+OptName, "%q: %v", n, err)
		}
		loc.name = fill(n, ref.Tenant, ref.Secret)
	}
	if p := c.prefix(ref.Tenant); !strings.HasPrefix(loc.name, p) || loc.name == p {
		return bad("options."+OptName, "%q is outside tenant %s's prefix %q", loc.name, ref.Tenant, p)
	}
	if m, ok := ref.Options[OptMode]; ok {
		if m != ModeStaged && m != ModeDelegated {
			return bad("options."+OptMode, "%q must be %s or %s", m, ModeStaged, ModeDelegated)
		}
		loc.mode = m
	}
	for _, h := range []struct {
		opt string
		dst *string
	}{{OptSetURL, &loc.setURL}, {OptTestURL, &loc.testURL}} {
		u, ok := ref.Options[h.opt]
		if !ok {
			continue
		}
		if loc.mode == ModeDelegated {
			return bad("options."+h.opt, "is not used in mode %s: the rotation Lambda sets and tests the new value", ModeDelegated)
		}
		if err := checkHookURL(u); err != nil {
			return bad("options."+h.opt, "%v", err)
		}
		*h.dst = u
	}
	return loc, nil
}

// checkHookURL accepts an https:// URL, or http:// to a loopback address
// (a sidecar), without credentials. Its error does not quote the URL,
// which may carry a token in its query.
func checkHookURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("is not an absolute URL")
	}
	if u.User != nil {
		return errors.New("must not carry credentials (user:password@)")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if h := u.Hostname(); h == "localhost" || net.ParseIP(h).IsLoopback() {
			return nil
		}
		return errors.New("must be https:// (http:// only to a loopback address)")
	}
	return errors.New("must be an https:// URL")
}

// Lookup maps a Secrets Manager secret id, as an event names it, to the
// rekey tenant and secret it belongs to. secretID is a secret name, or a
// full ARN arn:<partition>:secretsmanager:<region>:<account>:secret:<name>-<6
// characters> whose region is the configured one. The match is exact: the
// ARN's fixed parts and its 6-character suffix are stripped and the rest
// must be the name of a configured awssm secret (a name may itself contain
// "-"). Partial ARNs (without the suffix) are not matched.
func (c Config) Lookup(secretID string) (tenant, secret string, ok bool) {
	c = c.Defaults()
	name := secretID
	if strings.HasPrefix(secretID, "arn:") {
		region, n, ok := parseARN(secretID)
		if !ok || (c.Region != "" && region != c.Region) {
			return "", "", false
		}
		name = n
	}
	if !nameRE.MatchString(name) {
		return "", "", false
	}
	for _, ref := range c.Secrets {
		if loc, err := c.locate(ref); err == nil && loc.name == name {
			return ref.Tenant, ref.Secret, true
		}
	}
	return "", "", false
}

var (
	partitionRE = regexp.MustCompile(`^aws(-[a-z]+)*$`)
	accountRE   = regexp.MustCompile(`^[0-9]{12}$`)
	suffixRE    = regexp.MustCompile(`^-[A-Za-z0-9]{6}$`)
)

// parseARN splits a full Secrets Manager secret ARN into its region and the
// secret's name.
func parseARN(arn string) (region, name string, ok bool) {
	parts := strings.SplitN(arn, ":", 7)
	if len(parts) != 7 || parts[0] != "arn" || !partitionRE.MatchString(parts[1]) || parts[2] != "secretsmanager" ||
		!regionRE.MatchString(parts[3]) || !accountRE.MatchString(parts[4]) || parts[5] != "secret" {
		return "", "", false
	}
	rest := parts[6]
	if len(rest) < 8 || !suffixRE.MatchString(rest[len(rest)-7:]) {
		return "", "", false
	}
	name = rest[:len(rest)-7]
	if !nameRE.MatchString(name) {
		return "", "", false
	}
	return parts[3], name, true
}
