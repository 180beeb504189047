// Package vaultfetch holds agent.Fetcher implementations that read secrets
// straight from HashiCorp Vault with the agent's own token: rekey rotates
// and invalidates, the agent reads. Use them with agent.New:
//
//	kv, _ := vaultfetch.NewKV(client, vaultfetch.KVConfig{})
//	a, _ := agent.New(nc, kv, agent.Config{Tenant: "acme"})
//
// KV reads a KV v2 secret laid out the way rekey's Vault backend writes it
// (handlers/vault): <mount>/data/<path_template> with the value in a field
// ("value") and the rekey version in rekey_version next to it.
//
// Database reads database secrets engine credentials: the current password
// of a static role, or new dynamic credentials whose lease it renews while
// the agent can still be holding them (see Database). Their value is the
// JSON object {"username": "...", "password": "..."}; ParseCredentials
// decodes it.
//
// Mux routes each secret name to one of several fetchers, so one agent can
// read rekey's local secrets, Vault KV secrets and database credentials.
//
// The fetchers use the client as it is configured (address, token,
// namespace, TLS); they never log, nor put in an error, a secret value.
package vaultfetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/rekey-dev/rekey/fanout/agent"
)

// Sentinel errors, besides agent.ErrNotFound; check them with errors.Is.
var (
	// ErrPermissionDenied is returned when Vault refuses the agent's token
	// the path (HTTP 403): a policy that does not grant it, or a token that
	// expired or was revoked.
	ErrPermissionDenied = errors.New("vaultfetch: permission denied by Vault")
	// ErrWrongTenant is returned when the KV entry read records, in
	// rekey_tenant, a tenant other than the one asked for: the path
	// configuration points at another tenant's secret, and the value is
	// not returned.
	ErrWrongTenant = errors.New("vaultfetch: secret belongs to another tenant")
	// ErrNotConfigured is returned by a fetcher asked for a secret it has
	// no configuration for (Database, Mux without a default).
	ErrNotConfigured = errors.New("vaultfetch: secret not configured")
)

// DefaultTimeout bounds a Vault call whose context has no deadline.
const DefaultTimeout = 10 * time.Second

// Template placeholders, as in rekey's Vault backend configuration.
const (
	PlaceholderTenant = "{tenant}"
	PlaceholderSecret = "{secret}"
)

// reader is the part of Vault's API the fetchers read with
// (*api.Logical).
type reader interface {
	ReadWithContext(ctx context.Context, path string) (*api.Secret, error)
}

// Credentials are database credentials, the Value of a Database secret
// encoded as JSON. String and GoString leave the password out.
type Credentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// String describes c without its password.
func (c Credentials) String() string { return "credentials of " + c.Username + " (password redacted)" }

// GoString describes c without its password, for %#v.
func (c Credentials) GoString() string {
	return fmt.Sprintf("vaultfetch.Credentials{Username:%q, Password:<redacted>}", c.Username)
}

// ParseCredentials decodes the Value of a Database secret. Its error never
// quotes the input.
func ParseCredentials(value []byte) (Credentials, error) {
	var c Credentials
	if err := json.Unmarshal(value, &c); err != nil {
		return Credentials{}, errors.New("vaultfetch: value is not a JSON credentials object")
	}
	if c.Username == "" || c.Password == "" {
		return Credentials{}, errors.New("vaultfetch: credentials without username or password")
	}
	return c, nil
}

// fill replaces the placeholders of tmpl. tenant and secret are valid
// rekey ids (no "/", no ".."), so the result has the template's shape.
func fill(tmpl, tenant, secret string) string {
	return strings.NewReplacer(PlaceholderTenant, tenant, PlaceholderSecret, secret).Replace(tmpl)
}

// checkTemplate checks a mount, path or role template: non-empty segments
// separated by "/", none "." or "..", and no placeholder besides allowed.
func checkTemplate(field, tmpl string, allowed ...string) error {
	if tmpl == "" {
		return fmt.Errorf("%s is empty", field)
	}
	rest := tmpl
	for _, p := range allowed {
		rest = strings.ReplaceAll(rest, p, "x")
	}
	if strings.ContainsAny(rest, "{}") {
		return fmt.Errorf("%s %q: unknown placeholder (allowed: %s)", field, tmpl, strings.Join(allowed, ", "))
	}
	for _, seg := range strings.Split(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%s %q: empty, . or .. path segment", field, tmpl)
		}
		if strings.ContainsAny(seg, "?#% \t\r\n") {
			return fmt.Errorf("%s %q: character not allowed in a Vault path", field, tmpl)
		}
	}
	return nil
}

// classify wraps a Vault error: 404 is agent.ErrNotFound, 403
// ErrPermissionDenied. Vault's errors name paths, never values.
func classify(op string, err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case 404:
			return fmt.Errorf("%s: %w", op, agent.ErrNotFound)
		case 403:
			return fmt.Errorf("%s: %w (check the token's policy): %w", op, ErrPermissionDenied, err)
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}

func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func toInt(v any) int {
	switch n := v.(type) {
	case json.Number:
		i, _ := n.Int64()
		return int(i)
	case float64:
		return int(n)
	case int:
		return n
	}
	return 0
}
