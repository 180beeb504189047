package sidecar

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/rekey-dev/rekey/schemas"
)

// Template placeholders, as in rekey's backends.
const (
	phTenant = "{tenant}"
	phSecret = "{secret}"
)

// Mapping says how outside names map to the tenant's rekey secret ids. The
// templates are the backends' (backends.awssm.name_template and `name`;
// backends.vault kv_mount, path_template, `path`, field and the database
// roles), so that a program reads through the sidecar with the very name
// it would read from AWS or Vault. {tenant} is always the sidecar's tenant:
// a name that only another tenant's template produces maps to nothing.
type Mapping struct {
	// Secrets, if set, are the only secret ids served; others are "not
	// found" without asking rekey. Empty: rekey's fetch decides.
	Secrets []string `yaml:"secrets"`

	// AWSNameTemplate is a secret's Secrets Manager name. Default
	// "/tenants/{tenant}/{secret}".
	AWSNameTemplate string `yaml:"aws_name_template"`
	// AWSNames overrides the template per secret id.
	AWSNames map[string]string `yaml:"aws_names"`
	// AWSRegion and AWSAccount make the ARNs served (and accepted).
	// Defaults us-east-1 and 000000000000.
	AWSRegion  string `yaml:"aws_region"`
	AWSAccount string `yaml:"aws_account"`

	// VaultKVMount is the KV v2 mount; may contain {tenant}. Default "secret".
	VaultKVMount string `yaml:"vault_kv_mount"`
	// VaultPathTemplate is a secret's path in the mount. Default
	// "tenants/{tenant}/{secret}".
	VaultPathTemplate string `yaml:"vault_path_template"`
	// VaultPaths overrides the path template per secret id.
	VaultPaths map[string]string `yaml:"vault_paths"`
	// VaultField is the data key a KV read returns the value under.
	// Default "value".
	VaultField string `yaml:"vault_field"`
	// VaultDatabaseMount is the database secrets engine mount; may contain
	// {tenant}. Default "database".
	VaultDatabaseMount string `yaml:"vault_database_mount"`
	// VaultStaticRoles and VaultDynamicRoles map a secret id to a role
	// (may contain {tenant}), read at <mount>/static-creds/<role> and
	// <mount>/creds/<role>. The secret's value is the JSON object
	// {"username": ..., "password": ...}, as vaultfetch.Database returns.
	VaultStaticRoles  map[string]string `yaml:"vault_static_roles"`
	VaultDynamicRoles map[string]string `yaml:"vault_dynamic_roles"`
	// VaultRunRoles map a secret id to a dynamic role whose credentials
	// are made per pipeline run (vaultfetch.DatabaseConfig.RunRoles): a
	// read naming its run (X-Rekey-Run) gets credentials made for that
	// run alone, revoked by DELETE /v1/runs/{id}; served at
	// <mount>/creds/<role> like a dynamic role.
	VaultRunRoles map[string]string `yaml:"vault_run_roles"`
}

// Defaults returns m with its unset fields filled.
func (m Mapping) Defaults() Mapping {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&m.AWSNameTemplate, "/tenants/{tenant}/{secret}")
	def(&m.AWSRegion, DefaultRegion)
	def(&m.AWSAccount, DefaultAccount)
	def(&m.VaultKVMount, "secret")
	def(&m.VaultPathTemplate, "tenants/{tenant}/{secret}")
	def(&m.VaultField, "value")
	def(&m.VaultDatabaseMount, "database")
	return m
}

var (
	awsNameRE   = regexp.MustCompile(`^[A-Za-z0-9/_+=.@-]{1,512}$`)
	vaultPathRE = regexp.MustCompile(`^[A-Za-z0-9_.@=+-]+(/[A-Za-z0-9_.@=+-]+)*$`)
	regionRE    = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)
	accountRE   = regexp.MustCompile(`^[0-9]{12}$`)
	fieldRE     = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)
)

// Validate checks m after Defaults, naming the field at fault.
func (m Mapping) Validate() error {
	m = m.Defaults()
	var errs []error
	check := func(field, tmpl string, re *regexp.Regexp, needSecret bool) {
		if needSecret && strings.Count(tmpl, phSecret) != 1 {
			errs = append(errs, fmt.Errorf("%s %q: must contain {secret} once", field, tmpl))
		}
		rest := strings.NewReplacer(phTenant, "t", phSecret, "s").Replace(tmpl)
		if strings.ContainsAny(rest, "{}") || !re.MatchString(rest) {
			errs = append(errs, fmt.Errorf("%s %q: bad characters or unknown placeholder (allowed: {tenant}, {secret})", field, tmpl))
		}
	}
	for _, s := range m.Secrets {
		if err := schemas.ValidateID("secret", s); err != nil {
			errs = append(errs, fmt.Errorf("secrets: %w", err))
		}
	}
	check("aws_name_template", m.AWSNameTemplate, awsNameRE, true)
	if !regionRE.MatchString(m.AWSRegion) {
		errs = append(errs, fmt.Errorf("aws_region %q: lower-case letters, digits and -", m.AWSRegion))
	}
	if !accountRE.MatchString(m.AWSAccount) {
		errs = append(errs, fmt.Errorf("aws_account %q: 12 digits", m.AWSAccount))
	}
	check("vault_kv_mount", m.VaultKVMount, vaultPathRE, false)
	check("vault_database_mount", m.VaultDatabaseMount, vaultPathRE, false)
	check("vault_path_template", m.VaultPathTemplate, vaultPathRE, true)
	if !fieldRE.MatchString(m.VaultField) {
		errs = append(errs, fmt.Errorf("vault_field %q: letters, digits, _ . -", m.VaultField))
	}
	// Per-secret names, paths and roles.
	for _, per := range []struct {
		field string
		names map[string]string
		re    *regexp.Regexp
	}{
		{"aws_names", m.AWSNames, awsNameRE}, {"vault_paths", m.VaultPaths, vaultPathRE},
		{"vault_static_roles", m.VaultStaticRoles, fieldRE}, {"vault_dynamic_roles", m.VaultDynamicRoles, fieldRE},
		{"vault_run_roles", m.VaultRunRoles, fieldRE},
	} {
		for s, n := range per.names {
			errs = append(errs, idErr(per.field, s))
			check(per.field+"["+s+"]", n, per.re, false)
		}
	}
	for s := range m.VaultStaticRoles {
		if _, ok := m.VaultDynamicRoles[s]; ok {
			errs = append(errs, fmt.Errorf("vault roles: secret %s is both static and dynamic", s))
		}
	}
	for s := range m.VaultRunRoles {
		_, st := m.VaultStaticRoles[s]
		_, dy := m.VaultDynamicRoles[s]
		if st || dy {
			errs = append(errs, fmt.Errorf("vault roles: secret %s is both per run and static or dynamic", s))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mapping: %w", err)
	}
	return nil
}

func idErr(field, s string) error {
	if err := schemas.ValidateID("secret", s); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

// names applies a Mapping for one tenant.
type names struct {
	tenant string
	m      Mapping
}

// render replaces {tenant} and {secret} in tmpl in one pass, as
// strings.NewReplacer(phTenant, tenant, phSecret, secret).Replace would,
// without building a replacer on every read.
func render(tmpl, tenant, secret string) string {
	if strings.IndexByte(tmpl, '{') < 0 {
		return tmpl
	}
	var b strings.Builder
	b.Grow(len(tmpl) + len(tenant) + len(secret))
	for {
		i := strings.IndexByte(tmpl, '{')
		if i < 0 {
			b.WriteString(tmpl)
			return b.String()
		}
		b.WriteString(tmpl[:i])
		switch rest := tmpl[i:]; {
		case strings.HasPrefix(rest, phTenant):
			b.WriteString(tenant)
			tmpl = rest[len(phTenant):]
		case strings.HasPrefix(rest, phSecret):
			b.WriteString(secret)
			tmpl = rest[len(phSecret):]
		default:
			b.WriteByte('{')
			tmpl = rest[1:]
		}
	}
}

// reverse finds the secret id whose rendering of tmpl is name. tmpl has
// {secret} exactly once.
func reverse(tmpl, tenant, name string) (string, bool) {
	pre, suf, ok := strings.Cut(render(tmpl, tenant, phSecret), phSecret)
	if !ok || !strings.HasPrefix(name, pre) || !strings.HasSuffix(name, suf) || len(name) < len(pre)+len(suf) {
		return "", false
	}
	s := name[len(pre) : len(name)-len(suf)]
	if schemas.ValidateID("secret", s) != nil {
		return "", false
	}
	return s, true
}

// served reports whether secret may be served at all.
func (n names) served(secret string) bool {
	return schemas.ValidateID("secret", secret) == nil && (len(n.m.Secrets) == 0 || slices.Contains(n.m.Secrets, secret))
}

// fromOverrides finds the secret whose override renders to name.
func (n names) fromOverrides(over map[string]string, name string) (string, bool) {
	for s, t := range over {
		if render(t, n.tenant, s) == name {
			return s, true
		}
	}
	return "", false
}

// awsName is the Secrets Manager name of secret.
func (n names) awsName(secret string) string {
	if t, ok := n.m.AWSNames[secret]; ok {
		return render(t, n.tenant, secret)
	}
	return render(n.m.AWSNameTemplate, n.tenant, secret)
}

// awsARN is the ARN served for secret: the name plus a suffix of six
// characters derived from the tenant and the name (AWS appends six random
// ones).
func (n names) awsARN(secret string) string {
	name := n.awsName(secret)
	return "arn:aws:secretsmanager:" + n.m.AWSRegion + ":" + n.m.AWSAccount + ":secret:" + name + "-" + arnSuffix(n.tenant, name)
}

func arnSuffix(tenant, name string) string {
	h := sha256.Sum256([]byte(tenant + "\x00" + name))
	return hex.EncodeToString(h[:3])
}

// fromAWS maps a SecretId (a name, a full ARN as served, or a partial ARN
// without the suffix) to a secret id.
func (n names) fromAWS(id string) (string, bool) {
	name := id
	if rest, ok := strings.CutPrefix(id, "arn:aws:secretsmanager:"); ok {
		parts := strings.SplitN(rest, ":", 4)
		if len(parts) != 4 || parts[0] != n.m.AWSRegion || parts[1] != n.m.AWSAccount || parts[2] != "secret" {
			return "", false
		}
		name = parts[3]
		if i := len(name) - 7; i > 0 && name[i] == '-' {
			if base := name[:i]; arnSuffix(n.tenant, base) == name[i+1:] {
				name = base
			}
		}
	}
	if !awsNameRE.MatchString(name) {
		return "", false
	}
	return n.lookup(n.m.AWSNames, n.m.AWSNameTemplate, name)
}

// lookup maps an outside name to the secret whose override, or else
// (when it has none) the template, renders to it.
func (n names) lookup(over map[string]string, tmpl, name string) (string, bool) {
	s, ok := n.fromOverrides(over, name)
	if !ok {
		s, ok = reverse(tmpl, n.tenant, name)
		if _, renamed := over[s]; ok && renamed { // this secret has another name
			return "", false
		}
	}
	if !ok || !n.served(s) {
		return "", false
	}
	return s, true
}

// vaultKV maps a path inside the KV mount to a secret id.
func (n names) vaultKV(path string) (string, bool) {
	return n.lookup(n.m.VaultPaths, n.m.VaultPathTemplate, path)
}

// vaultRole maps a database role to a secret id and whether it is static.
func (n names) vaultRole(role string, static bool) (string, bool) {
	roles := n.m.VaultDynamicRoles
	if static {
		roles = n.m.VaultStaticRoles
	}
	for s, r := range roles {
		if render(r, n.tenant, s) == role && n.served(s) {
			return s, true
		}
	}
	if !static {
		for s, r := range n.m.VaultRunRoles {
			if render(r, n.tenant, s) == role && n.served(s) {
				return s, true
			}
		}
	}
	return "", false
}

func (n names) kvMount() string { return render(n.m.VaultKVMount, n.tenant, "") }
func (n names) dbMount() string { return render(n.m.VaultDatabaseMount, n.tenant, "") }
