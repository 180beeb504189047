package vault

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/orchestrator/configkit"
	"github.com/rekey-dev/rekey/schemas"
)

// Section is where the backend's configuration lives in rekey.yaml.
const Section = "backends.vault"

// Auth methods.
const (
	AuthToken   = "token"
	AuthAppRole = "approle"
)

// Secret kinds (SecretRef.Options["kind"]).
const (
	// KindKV is a static value kept in a KV v2 mount (the default).
	KindKV = "kv"
	// KindStaticRole is a database secrets engine static role: Vault owns
	// the password and rotate-role changes it in the database.
	KindStaticRole = "static-role"
)

// Secret options (SecretRef.Options, `options:` in rekey.yaml).
const (
	OptKind  = "kind"
	OptPath  = "path"
	OptField = "field"
	OptRole  = "role"
)

// Template placeholders.
const (
	PlaceholderTenant = "{tenant}"
	PlaceholderSecret = "{secret}"
)

// Defaults.
const (
	DefaultAddress             = "http://127.0.0.1:8200"
	DefaultKVMount             = "secret"
	DefaultPathTemplate        = "tenants/{tenant}/{secret}"
	DefaultDatabaseMount       = "database"
	DefaultDynamicRoleTemplate = "{tenant}-"
	DefaultField               = "value"
	DefaultTimeout             = 10 * time.Second
	DefaultRevokeTimeout       = 5 * time.Minute
	DefaultTokenEnv            = "VAULT_TOKEN"
	DefaultSecretIDEnv         = "VAULT_SECRET_ID"
	DefaultAppRoleMount        = "approle"
)

// stagedSegment is the path segment under a secret's path where staged
// versions live; no configured path may contain it.
const stagedSegment = "_staged"

// Config is the backends.vault section, plus the tenants and secrets of the
// whole configuration, which ParseConfig fills in.
type Config struct {
	// Address of the Vault server, e.g. https://vault.internal:8200.
	Address string     `yaml:"address"`
	Auth    AuthConfig `yaml:"auth"`
	// KVMount is the KV v2 mount; may contain {tenant} (one mount per tenant).
	KVMount string `yaml:"kv_mount"`
	// PathTemplate is a secret's path inside KVMount, with {secret} and,
	// unless the mount or namespace is per tenant, {tenant} before it.
	PathTemplate string `yaml:"path_template"`
	// DatabaseMount is the database secrets engine mount; may contain {tenant}.
	DatabaseMount string `yaml:"database_mount"`
	// DynamicRoleTemplate is the prefix of the names of a tenant's database
	// roles ({tenant}-: acme-readonly, acme-writer...). Revoking a tenant
	// revokes the leases of every dynamic role whose name starts with it;
	// a static role's default name is this prefix plus the secret.
	DynamicRoleTemplate string `yaml:"dynamic_role_template"`
	// NamespaceTemplate, when set, is sent as X-Vault-Namespace (Vault
	// Enterprise), e.g. "tenants/{tenant}". Untested here: the test server
	// is Vault OSS, which has no namespaces.
	NamespaceTemplate string `yaml:"namespace_template"`
	// Timeout bounds each call whose ctx has no deadline.
	Timeout time.Duration `yaml:"timeout"`
	// RevokeTimeout bounds RevokeTenant (revoking thousands of leases takes
	// minutes) when its ctx has no deadline.
	RevokeTimeout time.Duration `yaml:"revoke_timeout"`

	// Tenants are every tenant of the configuration (for the role-prefix
	// check); Secrets are the secrets whose backend is vault. ParseConfig
	// fills both; tests may set them directly.
	Tenants []string             `yaml:"-"`
	Secrets []handlers.SecretRef `yaml:"-"`
}

// AuthConfig says how rekey logs in to Vault. Credentials are read from the
// environment, never from the file.
type AuthConfig struct {
	// Method is token (default) or approle.
	Method string `yaml:"method"`
	// TokenEnv names the environment variable holding the token (method
	// token); default VAULT_TOKEN.
	TokenEnv string `yaml:"token_env"`
	// RoleID is the AppRole role id (method approle).
	RoleID string `yaml:"role_id"`
	// SecretIDEnv names the environment variable holding the AppRole
	// secret id; default VAULT_SECRET_ID.
	SecretIDEnv string `yaml:"secret_id_env"`
	// Mount is the AppRole auth mount; default approle.
	Mount string `yaml:"mount"`
}

// Defaults returns c with every unset field filled.
func (c Config) Defaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Address, DefaultAddress)
	def(&c.Auth.Method, AuthToken)
	def(&c.Auth.TokenEnv, DefaultTokenEnv)
	def(&c.Auth.SecretIDEnv, DefaultSecretIDEnv)
	def(&c.Auth.Mount, DefaultAppRoleMount)
	def(&c.KVMount, DefaultKVMount)
	def(&c.PathTemplate, DefaultPathTemplate)
	def(&c.DatabaseMount, DefaultDatabaseMount)
	def(&c.DynamicRoleTemplate, DefaultDynamicRoleTemplate)
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.RevokeTimeout == 0 {
		c.RevokeTimeout = DefaultRevokeTimeout
	}
	return c
}

// ParseConfig decodes the backends.vault section (raw, from
// orchestrator.Config.Backends.Vault) strictly over the defaults, adds the
// tenants and the vault secrets of rekey, and validates all of it. Errors
// are *configkit.FieldError naming the field, e.g.
// "backends.vault.auth.method" or "tenants.acme.secrets.db.options.role".
func ParseConfig(raw []byte, rekey handlers.RekeyConfig) (Config, error) {
	cfg := Config{}.Defaults()
	if err := configkit.DecodeSection(Section, raw, &cfg); err != nil {
		return Config{}, err
	}
	if rekey != nil {
		cfg.Tenants, cfg.Secrets = rekey.TenantNames(), handlers.BackendRefs(rekey, Name)
	}
	if err := cfg.validateTenants(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

var (
	// segmentRE is one path segment of a mount, path, namespace or role
	// once the templates are filled.
	segmentRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	fieldRE   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
)

// Validate checks c after Defaults: the section itself (field names
// relative to backends.vault), then the tenants and secrets (full names).
func (c Config) Validate() error {
	c = c.Defaults()
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, configkit.FieldErrorf(field, format, args...))
	}
	if u, err := url.Parse(c.Address); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("address", "%q must be an http:// or https:// URL", c.Address)
	}
	switch c.Auth.Method {
	case AuthToken:
		if !envRE.MatchString(c.Auth.TokenEnv) {
			add("auth.token_env", "%q is not an environment variable name", c.Auth.TokenEnv)
		}
	case AuthAppRole:
		if c.Auth.RoleID == "" {
			add("auth.role_id", "must be set for method approle")
		}
		if !envRE.MatchString(c.Auth.SecretIDEnv) {
			add("auth.secret_id_env", "%q is not an environment variable name", c.Auth.SecretIDEnv)
		}
		if err := checkPath(c.Auth.Mount); err != nil {
			add("auth.mount", "%v", err)
		}
	default:
		add("auth.method", "%q must be %s or %s", c.Auth.Method, AuthToken, AuthAppRole)
	}
	if c.Timeout <= 0 {
		add("timeout", "%s must be positive", c.Timeout)
	}
	if c.RevokeTimeout <= 0 {
		add("revoke_timeout", "%s must be positive", c.RevokeTimeout)
	}
	for _, tf := range []struct {
		field, tmpl string
		allowed     []string
	}{
		{"kv_mount", c.KVMount, []string{PlaceholderTenant}},
		{"path_template", c.PathTemplate, []string{PlaceholderTenant, PlaceholderSecret}},
		{"database_mount", c.DatabaseMount, []string{PlaceholderTenant}},
		{"dynamic_role_template", c.DynamicRoleTemplate, []string{PlaceholderTenant}},
		{"namespace_template", c.NamespaceTemplate, []string{PlaceholderTenant}},
	} {
		if tf.tmpl == "" {
			continue // only namespace_template may be empty after Defaults
		}
		if err := checkTemplate(tf.tmpl, tf.allowed); err != nil {
			add(tf.field, "%q: %v", tf.tmpl, err)
		}
	}
	if !strings.Contains(c.PathTemplate, PlaceholderSecret) {
		add("path_template", "%q must contain {secret}", c.PathTemplate)
	}
	if i, j := strings.Index(c.PathTemplate, PlaceholderTenant), strings.Index(c.PathTemplate, PlaceholderSecret); i >= 0 && j >= 0 && i > j {
		add("path_template", "%q: {tenant} must come before {secret}", c.PathTemplate)
	}
	if !c.tenantScopedKV() {
		add("path_template", "%q: one of namespace_template, kv_mount or path_template must contain {tenant}, so that tenants cannot share paths", c.PathTemplate)
	}
	if strings.Contains(c.DynamicRoleTemplate, "/") {
		add("dynamic_role_template", "%q must not contain /", c.DynamicRoleTemplate)
	}
	if !c.tenantScopedDB() {
		add("dynamic_role_template", "%q: one of namespace_template, database_mount or dynamic_role_template must contain {tenant}", c.DynamicRoleTemplate)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.validateTenants()
}

var envRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkTemplate accepts path segments made of [A-Za-z0-9_.-] and the allowed
// placeholders.
func checkTemplate(tmpl string, allowed []string) error {
	s := tmpl
	for _, p := range allowed {
		s = strings.ReplaceAll(s, p, "x")
	}
	if strings.ContainsAny(s, "{}") {
		return fmt.Errorf("unknown placeholder (allowed: %s)", strings.Join(allowed, ", "))
	}
	return checkPath(s)
}

// checkPath checks a slash-separated path after templates are filled.
func checkPath(p string) error {
	if p == "" {
		return errors.New("is empty")
	}
	for seg := range strings.SplitSeq(p, "/") {
		if !segmentRE.MatchString(seg) || seg == "." || seg == ".." {
			return fmt.Errorf("segment %q of %q must be made of letters, digits, '_', '.' and '-'", seg, p)
		}
		if seg == stagedSegment {
			return fmt.Errorf("%q is reserved for staged versions", stagedSegment)
		}
	}
	return nil
}

func (c Config) tenantScopedKV() bool {
	return strings.Contains(c.NamespaceTemplate, PlaceholderTenant) || strings.Contains(c.KVMount, PlaceholderTenant) ||
		strings.Contains(c.PathTemplate, PlaceholderTenant)
}

func (c Config) tenantScopedDB() bool {
	return strings.Contains(c.NamespaceTemplate, PlaceholderTenant) || strings.Contains(c.DatabaseMount, PlaceholderTenant) ||
		strings.Contains(c.DynamicRoleTemplate, PlaceholderTenant)
}

// validateTenants checks every vault secret's options and that no two
// secrets, and no two tenants' role prefixes, meet in Vault. Field names
// are full (tenants.<t>.secrets.<s>...).
func (c Config) validateTenants() error {
	c = c.Defaults()
	var errs []error
	owner := map[string]string{} // Vault location -> field of the secret using it
	claim := func(key, field string) {
		if other, ok := owner[key]; ok {
			errs = append(errs, configkit.FieldErrorf(field, "resolves to %s, as does %s: two secrets would overwrite each other", key, other))
			return
		}
		owner[key] = field
	}
	for _, ref := range c.Secrets {
		field := "tenants." + ref.Tenant + ".secrets." + ref.Secret
		loc, err := c.locate(ref)
		if err != nil {
			var fe *configkit.FieldError
			switch {
			case !errors.As(err, &fe):
				errs = append(errs, configkit.FieldErrorf(field, "%v", err))
			case strings.HasPrefix(fe.Field, "options."):
				errs = append(errs, configkit.FieldErrorf(field+"."+fe.Field, "%s", fe.Reason))
			case strings.HasPrefix(fe.Field, Section+"."):
				errs = append(errs, configkit.FieldErrorf(fe.Field, "%s (for %s)", fe.Reason, field))
			default:
				errs = append(errs, configkit.FieldErrorf(Section+"."+fe.Field, "%s (for %s)", fe.Reason, field))
			}
			continue
		}
		claim("kv "+loc.describe(), field)
		if loc.kind == KindStaticRole {
			claim("static role "+loc.namespacePrefix()+loc.dbMount+"/static-roles/"+loc.role, field)
		}
	}
	// Two tenants whose role prefixes overlap in one mount: revoking one
	// would revoke the other's leases.
	tenants := slices.Clone(c.Tenants)
	for _, ref := range c.Secrets {
		if !slices.Contains(tenants, ref.Tenant) {
			tenants = append(tenants, ref.Tenant)
		}
	}
	slices.Sort(tenants)
	for i, a := range tenants {
		for _, b := range tenants[i+1:] {
			pa, pb := c.roleScope(a), c.roleScope(b)
			if strings.HasPrefix(pa, pb) || strings.HasPrefix(pb, pa) {
				errs = append(errs, configkit.FieldErrorf(Section+".dynamic_role_template",
					"tenants %s and %s get overlapping database role prefixes %q and %q: revoking one would revoke the other's leases; end the template with a character tenant IDs cannot contain, e.g. \"{tenant}.\"",
					a, b, c.fill(c.DynamicRoleTemplate, a, ""), c.fill(c.DynamicRoleTemplate, b, "")))
			}
		}
	}
	return errors.Join(errs...)
}

// location is where one secret lives in Vault.
type location struct {
	kind      string
	namespace string
	mount     string // KV v2 mount: the value (kv) or rekey's record (static-role)
	path      string // path inside mount
	field     string // data field holding the value (kv)
	dbMount   string // database mount (static-role)
	role      string // static role name (static-role)
}

func (l location) namespacePrefix() string {
	if l.namespace == "" {
		return ""
	}
	return "[namespace " + l.namespace + "] "
}

func (l location) describe() string { return l.namespacePrefix() + l.mount + "/data/" + l.path }

func (l location) dataPath() string     { return l.mount + "/data/" + l.path }
func (l location) metadataPath() string { return l.mount + "/metadata/" + l.path }
func (l location) stagedData(id string) string {
	return l.mount + "/data/" + l.path + "/" + stagedSegment + "/" + id
}
func (l location) stagedMetadata(id string) string {
	return l.mount + "/metadata/" + l.path + "/" + stagedSegment + "/" + id
}
func (l location) stagedList() string { return l.mount + "/metadata/" + l.path + "/" + stagedSegment }

func (c Config) fill(tmpl, tenant, secret string) string {
	return strings.NewReplacer(PlaceholderTenant, tenant, PlaceholderSecret, secret).Replace(tmpl)
}

// namespace is the tenant's X-Vault-Namespace, empty without a template.
func (c Config) namespace(tenant string) string { return c.fill(c.NamespaceTemplate, tenant, "") }

// rolePrefix is the prefix of the tenant's database role names.
func (c Config) rolePrefix(tenant string) string { return c.fill(c.DynamicRoleTemplate, tenant, "") }

// roleScope identifies where a tenant's role names live, for the overlap check.
func (c Config) roleScope(tenant string) string {
	return c.namespace(tenant) + "\x00" + c.fill(c.DatabaseMount, tenant, "") + "\x00" + c.rolePrefix(tenant)
}

var optionsByKind = map[string][]string{
	KindKV:         {OptKind, OptPath, OptField},
	KindStaticRole: {OptKind, OptPath, OptRole},
}

// locate resolves a secret to its place in Vault and checks that the place
// belongs to the secret's tenant. Errors are FieldErrors relative to the
// secret (options.path...) and, at run time, wrap handlers.ErrPermanent.
func (c Config) locate(ref handlers.SecretRef) (location, error) {
	if err := schemas.ValidateRef(ref.Tenant, ref.Secret); err != nil {
		return location{}, fmt.Errorf("%w: %w", err, handlers.ErrPermanent)
	}
	bad := func(field, format string, args ...any) (location, error) {
		return location{}, fmt.Errorf("%w: %w", configkit.FieldErrorf(field, format, args...), handlers.ErrPermanent)
	}
	loc := location{kind: ref.Options[OptKind], field: DefaultField}
	if loc.kind == "" {
		loc.kind = KindKV
	}
	allowed, ok := optionsByKind[loc.kind]
	if !ok {
		return bad("options."+OptKind, "%q must be %s or %s", loc.kind, KindKV, KindStaticRole)
	}
	for _, k := range sortedKeys(ref.Options) {
		if !slices.Contains(allowed, k) {
			return bad("options."+k, "unknown option for kind %s (known: %s)", loc.kind, strings.Join(allowed, ", "))
		}
	}
	t, s := ref.Tenant, ref.Secret
	loc.namespace = c.namespace(t)
	if loc.namespace != "" {
		if err := checkPath(loc.namespace); err != nil {
			return bad(Section+".namespace_template", "%v", err)
		}
	}
	loc.mount = c.fill(c.KVMount, t, s)
	loc.dbMount = c.fill(c.DatabaseMount, t, s)
	loc.path = c.fill(c.PathTemplate, t, s)
	if p, ok := ref.Options[OptPath]; ok {
		if err := checkTemplate(p, []string{PlaceholderTenant, PlaceholderSecret}); err != nil {
			return bad("options."+OptPath, "%q: %v", p, err)
		}
		loc.path = c.fill(p, t, s)
	}
	for _, p := range []struct{ field, v string }{{"kv_mount", loc.mount}, {"database_mount", loc.dbMount}, {"options.path", loc.path}} {
		if err := checkPath(p.v); err != nil {
			return bad(p.field, "%v", err)
		}
	}
	// Structural isolation: unless the namespace or the mount is the
	// tenant's own, the path must lie under the tenant's prefix.
	if i := strings.Index(c.PathTemplate, PlaceholderSecret); i >= 0 &&
		!strings.Contains(c.NamespaceTemplate, PlaceholderTenant) && !strings.Contains(c.KVMount, PlaceholderTenant) {
		prefix := c.fill(c.PathTemplate[:i], t, "")
		if !strings.HasPrefix(loc.path, prefix) || loc.path == strings.TrimSuffix(prefix, "/") {
			return bad("options."+OptPath, "%q is outside tenant %s's prefix %q", loc.path, t, prefix)
		}
	}
	switch loc.kind {
	case KindKV:
		if f, ok := ref.Options[OptField]; ok {
			if !fieldRE.MatchString(f) || strings.HasPrefix(f, "rekey_") {
				return bad("options."+OptField, "%q must match %s and not start with rekey_", f, fieldRE)
			}
			loc.field = f
		}
	case KindStaticRole:
		loc.field = ""
		loc.role = c.rolePrefix(t) + s
		if r, ok := ref.Options[OptRole]; ok {
			if err := checkTemplate(r, []string{PlaceholderTenant, PlaceholderSecret}); err != nil || strings.Contains(r, "/") {
				return bad("options."+OptRole, "%q must be one segment of letters, digits, '_', '.' and '-'", r)
			}
			loc.role = c.fill(r, t, s)
		}
		if !strings.Contains(c.NamespaceTemplate, PlaceholderTenant) && !strings.Contains(c.DatabaseMount, PlaceholderTenant) &&
			!strings.HasPrefix(loc.role, c.rolePrefix(t)) {
			return bad("options."+OptRole, "%q must start with tenant %s's role prefix %q", loc.role, t, c.rolePrefix(t))
		}
	}
	return loc, nil
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
