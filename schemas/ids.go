// Package schemas holds the messages rekey components exchange over NATS:
// the CloudEvents envelope, the typed event payloads, the subjects they
// travel on and the rules for tenant and secret identifiers.
//
// It depends on the standard library only, so that agents and third-party
// producers can import it without pulling in the rest of rekey.
package schemas

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"unicode"
	"unicode/utf8"
)

// ErrInvalidID is returned (wrapped) for a tenant or secret ID that does not
// match IDPattern.
var ErrInvalidID = errors.New("invalid id")

// IDPattern is the grammar of tenant and secret IDs. Every ID that passes is
// a safe NATS subject token: no '.', '*', '>' or whitespace.
const IDPattern = `^[a-z0-9][a-z0-9_-]{0,62}$`

// ValidateID checks one ID; kind names it in the error ("tenant", "secret").
func ValidateID(kind, id string) error {
	if id == "" {
		return fmt.Errorf("%s id is empty: %w", kind, ErrInvalidID)
	}
	if !validID(id) {
		return fmt.Errorf("%s id %q must match %s: %w", kind, truncate(id, 80), IDPattern, ErrInvalidID)
	}
	return nil
}

// InstancePattern is the grammar of agent instance IDs: a NATS subject
// token (no '.', '*', '>' or whitespace) of at most 128 characters.
// Kubernetes pod names with dots are mapped to it by replacing them.
const InstancePattern = `^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`

// MaxInstanceLen is the longest instance ID.
const MaxInstanceLen = 128

// ValidateInstance checks an agent instance ID.
func ValidateInstance(id string) error {
	if id == "" {
		return fmt.Errorf("instance id is empty: %w", ErrInvalidID)
	}
	if !validInstance(id) {
		return fmt.Errorf("instance id %q must match %s: %w", truncate(id, 80), InstancePattern, ErrInvalidID)
	}
	return nil
}

func validInstance(id string) bool {
	if len(id) == 0 || len(id) > MaxInstanceLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// ValidateRef checks a tenant and a secret ID together.
func ValidateRef(tenant, secret string) error {
	if err := ValidateID("tenant", tenant); err != nil {
		return err
	}
	return ValidateID("secret", secret)
}

// validID is IDPattern without a regexp: it runs on every message.
func validID(id string) bool {
	if len(id) == 0 || len(id) > 63 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// Ref names one secret of one tenant.
type Ref struct {
	Tenant string `json:"tenant"`
	Secret string `json:"secret"`
}

// ParseRef parses "tenant/secret" and validates both parts.
func ParseRef(s string) (Ref, error) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			r := Ref{Tenant: s[:i], Secret: s[i+1:]}
			if err := ValidateRef(r.Tenant, r.Secret); err != nil {
				return Ref{}, err
			}
			return r, nil
		}
	}
	return Ref{}, fmt.Errorf("%q is not of the form tenant/secret: %w", truncate(s, 80), ErrInvalidID)
}

// String returns "tenant/secret", the form used in the CloudEvents subject.
func (r Ref) String() string { return r.Tenant + "/" + r.Secret }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

var safeVersion = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// VersionToken is a secret version as a KV key token and request-id part:
// the version itself when it is made of [A-Za-z0-9_-] (at most 64), else
// "=" and a hash ('=' never occurs in the first form, so the two cannot
// collide). Versions are backend-made and may hold any character.
func VersionToken(v string) string {
	if safeVersion.MatchString(v) {
		return v
	}
	h := sha256.Sum256([]byte(v))
	return "=" + hex.EncodeToString(h[:16])
}

// Printable reports whether s is valid UTF-8 made of printable characters
// only (what agent-reported fields such as versions and tool names must be
// before they reach a log or the audit trail).
func Printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}
