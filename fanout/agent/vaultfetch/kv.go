package vaultfetch

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/vault/api"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

// KV defaults, the same as rekey's Vault backend.
const (
	DefaultKVMount      = "secret"
	DefaultPathTemplate = "tenants/{tenant}/{secret}"
	DefaultField        = "value"
)

// Keys rekey's Vault backend writes into KV v2 data next to the value.
const (
	KeyVersion = "rekey_version"
	KeyTenant  = "rekey_tenant"
)

// KVConfig says where KV reads secrets; set it like the backend's
// backends.vault section (kv_mount, path_template, options path and field).
type KVConfig struct {
	// Mount is the KV v2 mount; may contain {tenant}. Default "secret".
	Mount string
	// PathTemplate is a secret's path inside Mount, with {tenant} and
	// {secret}. Default "tenants/{tenant}/{secret}".
	PathTemplate string
	// Field is the data key holding the value. Default "value".
	Field string
	// Paths overrides PathTemplate per secret name (the backend's `path`
	// option); a path may contain {tenant} and {secret}.
	Paths map[string]string
	// Fields overrides Field per secret name (the backend's `field` option).
	Fields map[string]string
}

// Defaults returns c with its unset fields filled.
func (c KVConfig) Defaults() KVConfig {
	if c.Mount == "" {
		c.Mount = DefaultKVMount
	}
	if c.PathTemplate == "" {
		c.PathTemplate = DefaultPathTemplate
	}
	if c.Field == "" {
		c.Field = DefaultField
	}
	return c
}

// Validate checks c after Defaults.
func (c KVConfig) Validate() error {
	c = c.Defaults()
	var errs []error
	errs = append(errs, checkTemplate("kv mount", c.Mount, PlaceholderTenant))
	errs = append(errs, checkTemplate("kv path_template", c.PathTemplate, PlaceholderTenant, PlaceholderSecret))
	if !strings.Contains(c.PathTemplate, PlaceholderSecret) {
		errs = append(errs, fmt.Errorf("kv path_template %q must contain {secret}", c.PathTemplate))
	}
	errs = append(errs, checkField("kv field", c.Field))
	for s, p := range c.Paths {
		if err := schemas.ValidateID("secret", s); err != nil {
			errs = append(errs, fmt.Errorf("kv paths: %w", err))
		}
		errs = append(errs, checkTemplate("kv paths["+s+"]", p, PlaceholderTenant, PlaceholderSecret))
	}
	for s, f := range c.Fields {
		if err := schemas.ValidateID("secret", s); err != nil {
			errs = append(errs, fmt.Errorf("kv fields: %w", err))
		}
		errs = append(errs, checkField("kv fields["+s+"]", f))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vaultfetch: %w", err)
	}
	return nil
}

func checkField(name, f string) error {
	if f == "" || len(f) > 128 || strings.ContainsAny(f, " \t\r\n") {
		return fmt.Errorf("%s %q is not a field name", name, f)
	}
	return nil
}

// KV is an agent.Fetcher reading KV v2 secrets as rekey's Vault backend
// writes them. It is safe for concurrent use.
type KV struct {
	cfg KVConfig
	api reader
}

var _ agent.Fetcher = (*KV)(nil)

// NewKV returns a KV fetcher reading with client (its address, token and
// namespace). It does not call Vault.
func NewKV(client *api.Client, cfg KVConfig) (*KV, error) {
	if client == nil {
		return nil, errors.New("vaultfetch: nil Vault client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &KV{cfg: cfg.Defaults(), api: client.Logical()}, nil
}

// Path returns the KV v2 data path Fetch reads for tenant's secret
// (<mount>/data/<path>).
func (k *KV) Path(tenant, secret string) string {
	tmpl := k.cfg.PathTemplate
	if p, ok := k.cfg.Paths[secret]; ok {
		tmpl = p
	}
	return fill(k.cfg.Mount, tenant, secret) + "/data/" + fill(tmpl, tenant, secret)
}

func (k *KV) field(secret string) string {
	if f, ok := k.cfg.Fields[secret]; ok {
		return f
	}
	return k.cfg.Field
}

// Fetch reads the live version of the secret. Version is the entry's
// rekey_version, or "kv-<KV version>" for a value rekey did not write (as
// the backend names it); Value is the configured field, which must be a
// string. A missing secret, a deleted or destroyed live version, or a
// missing field is agent.ErrNotFound; a 403 is ErrPermissionDenied; an
// entry whose rekey_tenant names another tenant is ErrWrongTenant.
func (k *KV) Fetch(ctx context.Context, tenant, secret string) (agent.Secret, error) {
	if err := schemas.ValidateRef(tenant, secret); err != nil {
		return agent.Secret{}, fmt.Errorf("vault kv fetch: %w", err)
	}
	path := k.Path(tenant, secret)
	op := "vault kv fetch " + tenant + "/" + secret + " at " + path
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	sec, err := k.api.ReadWithContext(ctx, path)
	if err != nil {
		return agent.Secret{}, classify(op, err)
	}
	if sec == nil || sec.Data == nil {
		return agent.Secret{}, fmt.Errorf("%s: %w", op, agent.ErrNotFound)
	}
	data, _ := sec.Data["data"].(map[string]any)
	if data == nil { // deleted or destroyed version
		return agent.Secret{}, fmt.Errorf("%s: live version deleted: %w", op, agent.ErrNotFound)
	}
	if t, ok := data[KeyTenant]; ok && str(t) != tenant {
		return agent.Secret{}, fmt.Errorf("%s: %s is %q: %w", op, KeyTenant, str(t), ErrWrongTenant)
	}
	field := k.field(secret)
	v, ok := data[field].(string)
	if !ok {
		return agent.Secret{}, fmt.Errorf("%s: field %q is missing or not a string: %w", op, field, agent.ErrNotFound)
	}
	version := str(data[KeyVersion])
	if version == "" {
		md, _ := sec.Data["metadata"].(map[string]any)
		version = fmt.Sprintf("kv-%d", toInt(md["version"]))
	}
	return agent.Secret{Name: secret, Version: version, Value: []byte(v)}, nil
}
