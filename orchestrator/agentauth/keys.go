package agentauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// minRSABits is the smallest RSA key accepted.
const minRSABits = 2048

// maxJWKSBytes bounds a JWKS document.
const maxJWKSBytes = 1 << 20

// keySet is an issuer's public keys.
type keySet struct {
	byKID map[string][]jose.JSONWebKey
	all   []jose.JSONWebKey
}

func newKeySet(keys []jose.JSONWebKey) *keySet {
	ks := &keySet{byKID: map[string][]jose.JSONWebKey{}, all: keys}
	for _, k := range keys {
		ks.byKID[k.KeyID] = append(ks.byKID[k.KeyID], k)
	}
	return ks
}

// candidates are the keys that may have signed a token with key id kid:
// those of that id and those without one; every key if kid is empty.
func (ks *keySet) candidates(kid string) []jose.JSONWebKey {
	if ks == nil {
		return nil
	}
	if kid == "" {
		return ks.all
	}
	return append(append([]jose.JSONWebKey(nil), ks.byKID[kid]...), ks.byKID[""]...)
}

// ParseJWKS reads a JWKS document ({"keys": [...]}) and returns its
// usable signing keys: public RSA (2048 bits or more), EC P-256 and
// Ed25519 keys not marked for encryption. Private key material is reduced
// to its public part. Keys it cannot use are skipped; a document without
// one usable key is an error.
func ParseJWKS(b []byte) ([]jose.JSONWebKey, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range doc.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			continue
		}
		if k, ok := usableKey(k); ok {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("jwks: no usable signing key (RSA >= 2048 bits, EC P-256, Ed25519)")
	}
	return keys, nil
}

// usableKey returns the public part of k if it is a signing key of an
// allowed kind.
func usableKey(k jose.JSONWebKey) (jose.JSONWebKey, bool) {
	if k.Use != "" && k.Use != "sig" {
		return k, false
	}
	if !k.IsPublic() {
		k = k.Public()
	}
	if !k.Valid() {
		return k, false
	}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		ok := pub.N.BitLen() >= minRSABits && (k.Algorithm == "" || k.Algorithm == string(jose.RS256))
		return k, ok
	case *ecdsa.PublicKey:
		ok := pub.Curve == elliptic.P256() && (k.Algorithm == "" || k.Algorithm == string(jose.ES256))
		return k, ok
	case ed25519.PublicKey:
		ok := len(pub) == ed25519.PublicKeySize && (k.Algorithm == "" || k.Algorithm == string(jose.EdDSA))
		return k, ok
	}
	return k, false
}

// parsePublicKeys reads a file of PEM public keys ("PUBLIC KEY" blocks)
// or a JWKS document.
func parsePublicKeys(b []byte) ([]jose.JSONWebKey, error) {
	rest := b
	var keys []jose.JSONWebKey
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("pem block %q: only PUBLIC KEY blocks are read", blk.Type)
		}
		pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pem public key: %w", err)
		}
		k, ok := usableKey(jose.JSONWebKey{Key: pub})
		if !ok {
			return nil, fmt.Errorf("pem public key %T: not an RSA (>= 2048 bits), EC P-256 or Ed25519 key", pub)
		}
		keys = append(keys, k)
	}
	if len(keys) > 0 {
		return keys, nil
	}
	return ParseJWKS(b)
}

// keySource gives the keys that may have signed a token.
type keySource interface {
	candidates(ctx context.Context, kid string) ([]jose.JSONWebKey, error)
}

type staticKeys struct{ ks *keySet }

func (s staticKeys) candidates(_ context.Context, kid string) ([]jose.JSONWebKey, error) {
	return s.ks.candidates(kid), nil
}

// jwksKeys reads a JWKS over HTTP and caches it. A token whose key id is
// not in the cache makes it read the JWKS again, at most once per
// minRefresh (so that tokens with made-up key ids cannot turn the
// verifier into a flood of requests to the issuer); the cache is read
// again anyway after maxAge. A failed read keeps the keys it had.
type jwksKeys struct {
	url        string
	client     *http.Client
	minRefresh time.Duration
	maxAge     time.Duration
	log        *slog.Logger

	keys    atomic.Pointer[cachedKeys]
	fetches atomic.Int64

	mu        sync.Mutex // one read at a time
	lastFetch time.Time
}

type cachedKeys struct {
	ks *keySet
	at time.Time
}

const jwksMaxAge = time.Hour

func newJWKSKeys(url, caFile string, minRefresh time.Duration, log *slog.Logger) (*jwksKeys, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("jwks_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("jwks_ca_file %s: no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &jwksKeys{url: url, client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		minRefresh: minRefresh, maxAge: jwksMaxAge, log: log}, nil
}

func (j *jwksKeys) candidates(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	if c := j.keys.Load(); c != nil && time.Since(c.at) < j.maxAge && (kid == "" || len(c.ks.byKID[kid]) > 0) {
		return c.ks.candidates(kid), nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	c := j.keys.Load()
	fresh := c != nil && time.Since(c.at) < j.maxAge
	if fresh && (kid == "" || len(c.ks.byKID[kid]) > 0) {
		return c.ks.candidates(kid), nil // read by another login meanwhile
	}
	if !j.lastFetch.IsZero() && time.Since(j.lastFetch) < j.minRefresh {
		if c == nil {
			return nil, errors.New("issuer keys unavailable (jwks read failed recently)")
		}
		return c.ks.candidates(kid), nil
	}
	j.lastFetch = time.Now()
	ks, err := j.fetch(ctx)
	if err != nil {
		if c == nil {
			return nil, err
		}
		j.log.Warn("jwks read failed; keeping the keys read before", "component", "agentauth", "error", err)
		return c.ks.candidates(kid), nil
	}
	j.keys.Store(&cachedKeys{ks: ks, at: time.Now()})
	return ks.candidates(kid), nil
}

func (j *jwksKeys) fetch(ctx context.Context) (*keySet, error) {
	j.fetches.Add(1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jwks: status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	if len(b) > maxJWKSBytes {
		return nil, fmt.Errorf("jwks: larger than %d bytes", maxJWKSBytes)
	}
	keys, err := ParseJWKS(b)
	if err != nil {
		return nil, err
	}
	return newKeySet(keys), nil
}
