package handlers

import (
	"fmt"
	"iter"
	"maps"
	"slices"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Catalog resolves a tenant/secret to its configuration and backend.
type Catalog struct {
	cfg      *orchestrator.Config
	backends map[string]Backend
}

// NewCatalog checks that every configured secret names a registered backend.
func NewCatalog(cfg *orchestrator.Config, backends ...Backend) (*Catalog, error) {
	c := &Catalog{cfg: cfg, backends: map[string]Backend{}}
	for _, b := range backends {
		c.backends[b.Name()] = b
	}
	for _, t := range cfg.TenantNames() {
		for _, s := range cfg.TenantSecrets(t) {
			sc, _ := cfg.Secret(t, s)
			if _, ok := c.backends[sc.Backend]; !ok {
				return nil, fmt.Errorf("tenants.%s.secrets.%s.backend: backend %q is not enabled in this rekeyd", t, s, sc.Backend)
			}
		}
	}
	return c, nil
}

// Lookup returns the ref and backend of a configured secret, or ErrNotFound.
func (c *Catalog) Lookup(tenant, secret string) (SecretRef, Backend, error) {
	sc, ok := c.cfg.Secret(tenant, secret)
	if !ok {
		return SecretRef{}, nil, fmt.Errorf("secret %s/%s is not configured: %w", tenant, secret, ErrNotFound)
	}
	return RefOf(tenant, secret, sc), c.backends[sc.Backend], nil
}

// RefOf is the ref of a configured secret: its IDs, backend, generator
// (with defaults) and options.
func RefOf(tenant, secret string, sc orchestrator.SecretConfig) SecretRef {
	g := Generator{Style: sc.Generator.Style, Length: sc.Generator.Length, Alphabet: sc.Generator.Alphabet, Prefix: sc.Generator.Prefix}
	return SecretRef{Tenant: tenant, Secret: secret, Backend: sc.Backend, Generator: g.Defaults(), Options: sc.Options}
}

// RekeyConfig is what a backend's ParseConfig reads of rekey's
// configuration; *orchestrator.Config implements it. Backend packages
// take it instead of the struct so that they need not import orchestrator.
type RekeyConfig interface {
	TenantNames() []string
	SecretsOf(backend string) iter.Seq2[schemas.Ref, orchestrator.SecretConfig]
}

var _ RekeyConfig = (*orchestrator.Config)(nil)

// BackendRefs lists the refs of cfg's secrets kept in backend, by tenant
// then secret: what a backend's ParseConfig validates.
func BackendRefs(cfg RekeyConfig, backend string) []SecretRef {
	var out []SecretRef
	for r, sc := range cfg.SecretsOf(backend) {
		out = append(out, RefOf(r.Tenant, r.Secret, sc))
	}
	return out
}

// Ref is Lookup without the backend, for callers that only need the ref.
func (c *Catalog) Ref(tenant, secret string) (SecretRef, bool) {
	ref, _, err := c.Lookup(tenant, secret)
	return ref, err == nil
}

// HasTenant reports whether the tenant is configured.
func (c *Catalog) HasTenant(tenant string) bool { return slices.Contains(c.cfg.TenantNames(), tenant) }

// Secrets returns a tenant's secrets, sorted.
func (c *Catalog) Secrets(tenant string) []string { return c.cfg.TenantSecrets(tenant) }

// Tenants returns every tenant, sorted.
func (c *Catalog) Tenants() []string { return c.cfg.TenantNames() }

// Backends returns the registered backends.
func (c *Catalog) Backends() []Backend {
	out := make([]Backend, 0, len(c.backends))
	for _, name := range slices.Sorted(maps.Keys(c.backends)) {
		out = append(out, c.backends[name])
	}
	return out
}
