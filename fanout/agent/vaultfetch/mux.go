package vaultfetch

import (
	"context"
	"errors"
	"fmt"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

// MuxConfig configures a Mux.
type MuxConfig struct {
	// Routes maps a secret name to the fetcher that reads it.
	Routes map[string]agent.Fetcher
	// Default reads every other secret; nil: they are ErrNotConfigured
	// (wrapping agent.ErrNotFound).
	Default agent.Fetcher
}

// Validate checks the secret names and that no fetcher is nil.
func (c MuxConfig) Validate() error {
	var errs []error
	for s, f := range c.Routes {
		if err := schemas.ValidateID("secret", s); err != nil {
			errs = append(errs, fmt.Errorf("mux route: %w", err))
		}
		if f == nil {
			errs = append(errs, fmt.Errorf("mux route %s: nil fetcher", s))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vaultfetch: %w", err)
	}
	return nil
}

// Mux is an agent.Fetcher that hands each secret to the fetcher routed for
// its name, or to the default one, so that one agent reads rekey's local
// secrets (agent.NewNATSFetcher), Vault KV secrets and database
// credentials. For example:
//
//	routes := map[string]agent.Fetcher{"openai-key": kv}
//	for _, s := range db.Secrets() {
//		routes[s] = db
//	}
//	mux, err := vaultfetch.NewMux(vaultfetch.MuxConfig{Routes: routes, Default: agent.NewNATSFetcher(nc, instance)})
type Mux struct {
	routes   map[string]agent.Fetcher
	fallback agent.Fetcher
}

var _ agent.Fetcher = (*Mux)(nil)

// NewMux returns a Mux for cfg; it copies the routes.
func NewMux(cfg MuxConfig) (*Mux, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Mux{routes: make(map[string]agent.Fetcher, len(cfg.Routes)), fallback: cfg.Default}
	for s, f := range cfg.Routes {
		m.routes[s] = f
	}
	return m, nil
}

// Fetch implements agent.Fetcher.
func (m *Mux) Fetch(ctx context.Context, tenant, secret string) (agent.Secret, error) {
	f, ok := m.routes[secret]
	if !ok {
		f = m.fallback
	}
	if f == nil {
		return agent.Secret{}, fmt.Errorf("fetch %s/%s: no route and no default: %w: %w", tenant, secret, ErrNotConfigured, agent.ErrNotFound)
	}
	return f.Fetch(ctx, tenant, secret)
}
