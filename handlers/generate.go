package handlers

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
)

// Generator styles.
const (
	StylePassword = "password"
	StyleAPIKey   = "api-key"
)

// Default alphabets per style.
const (
	AlphabetPassword = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#%+-.:=?@^_~"
	AlphabetAPIKey   = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
)

// Generator describes how a backend that stores static values makes a new
// one: a style, a length (not counting Prefix) and an optional alphabet.
type Generator struct {
	Style    string
	Length   int
	Alphabet string
	Prefix   string
}

// Defaults fills unset fields: password style, 32 characters.
func (g Generator) Defaults() Generator {
	if g.Style == "" {
		g.Style = StylePassword
	}
	if g.Length == 0 {
		g.Length = 32
	}
	if g.Alphabet == "" {
		if g.Style == StyleAPIKey {
			g.Alphabet = AlphabetAPIKey
		} else {
			g.Alphabet = AlphabetPassword
		}
	}
	return g
}

// Validate checks the generator after Defaults.
func (g Generator) Validate() error {
	if g.Style != StylePassword && g.Style != StyleAPIKey {
		return fmt.Errorf("style %q must be %q or %q", g.Style, StylePassword, StyleAPIKey)
	}
	if g.Length < 8 || g.Length > 4096 {
		return fmt.Errorf("length %d must be between 8 and 4096", g.Length)
	}
	if len(g.Alphabet) < 2 {
		return errors.New("alphabet must have at least 2 characters")
	}
	seen := map[rune]bool{}
	for _, r := range g.Alphabet {
		if r >= 127 || r < 33 {
			return fmt.Errorf("alphabet must be printable ASCII without spaces, got %q", r)
		}
		if seen[r] {
			return fmt.Errorf("alphabet repeats %q", r)
		}
		seen[r] = true
	}
	return nil
}

// Generate makes a new value with crypto/rand, uniformly over the alphabet.
// Password style guarantees at least one lower case letter, one upper case
// letter and one digit when the alphabet has them and the length allows.
func Generate(g Generator) ([]byte, error) {
	g = g.Defaults()
	if err := g.Validate(); err != nil {
		return nil, fmt.Errorf("generator: %w", err)
	}
	n := big.NewInt(int64(len(g.Alphabet)))
	for {
		out := make([]byte, 0, len(g.Prefix)+g.Length)
		out = append(out, g.Prefix...)
		for i := 0; i < g.Length; i++ {
			k, err := rand.Int(rand.Reader, n)
			if err != nil {
				return nil, fmt.Errorf("generator: random: %w", err)
			}
			out = append(out, g.Alphabet[k.Int64()])
		}
		if g.Style != StylePassword || hasClasses(out[len(g.Prefix):], g.Alphabet) {
			return out, nil
		}
	}
}

// hasClasses reports whether v has every character class that the alphabet offers.
func hasClasses(v []byte, alphabet string) bool {
	classes := []func(byte) bool{
		func(c byte) bool { return c >= 'a' && c <= 'z' },
		func(c byte) bool { return c >= 'A' && c <= 'Z' },
		func(c byte) bool { return c >= '0' && c <= '9' },
	}
	for _, in := range classes {
		offered := false
		for i := 0; i < len(alphabet); i++ {
			if in(alphabet[i]) {
				offered = true
				break
			}
		}
		if !offered {
			continue
		}
		found := false
		for _, c := range v {
			if in(c) {
				found = true
				break
			}
		}
		if !found && len(v) >= 3 {
			return false
		}
	}
	return true
}
