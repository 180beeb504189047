package tenantauth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/api/tenantauth"
)

func TestParseConfig(t *testing.T) {
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)

	cfg, err := tenantauth.ParseConfig(nil, &rekey)
	require.NoError(t, err)
	require.False(t, cfg.HasTokens(), "no section, no tenant tokens")
	require.Equal(t, time.Minute, cfg.MinInterval)
	require.Equal(t, 24*time.Hour, cfg.IdempotencyTTL)

	cfg, err = tenantauth.ParseConfig([]byte(tokensYAML()+`
min_interval: 30s
idempotency_ttl: 1h
jwt:
  algorithm: HS256
  hs256_key_env: `+hsKeyEnv+`
  issuer: https://auth.example.test
  audience: rekey
`), &rekey)
	require.NoError(t, err)
	require.True(t, cfg.HasTokens())
	require.Len(t, cfg.Tokens, 2)
	require.Equal(t, 30*time.Second, cfg.MinInterval)
	require.Equal(t, time.Hour, cfg.IdempotencyTTL)
	require.Equal(t, "tenant", cfg.JWT.TenantClaim, "default tenant claim")

	ok := sha(acmeToken)
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"unknown tenant", `tokens: [{id: a, tenant: initech, sha256: ` + ok + `}]`,
			[]string{`triggers.selfservice.tokens[0].tenant: tenant "initech" is not configured`}},
		{"bad hash", `tokens: [{id: a, tenant: acme, sha256: "abc"}]`,
			[]string{"triggers.selfservice.tokens[0].sha256: must be the 64 hex digits"}},
		{"bad id and tenant", `tokens: [{id: "CI", tenant: "a.b", sha256: ` + ok + `}]`,
			[]string{"triggers.selfservice.tokens[0].id: token id", "triggers.selfservice.tokens[0].tenant: tenant id"}},
		{"duplicates", `tokens: [{id: a, tenant: acme, sha256: ` + ok + `}, {id: a, tenant: globex, sha256: ` + ok + `}]`,
			[]string{"tokens[1].id: \"a\" is also the id of tokens[0]", "tokens[1].sha256: is also the hash of tokens[0]"}},
		{"no tokens", `min_interval: 5m`, []string{"triggers.selfservice.tokens: set tokens or jwt"}},
		{"bad algorithm", `jwt: {algorithm: none}`, []string{`triggers.selfservice.jwt.algorithm: "none" must be HS256, RS256 or ES256`}},
		{"hs256 without key", `jwt: {algorithm: HS256}`, []string{"triggers.selfservice.jwt.hs256_key_env: must name"}},
		{"rs256 without file", `jwt: {algorithm: RS256}`, []string{"triggers.selfservice.jwt.public_key_file: must name"}},
		{"es256 with hs key", `jwt: {algorithm: ES256, public_key_file: k.pem, hs256_key_env: K}`,
			[]string{"triggers.selfservice.jwt.hs256_key_env: is for HS256, not ES256"}},
		{"bad duration", `{min_interval: soon, tokens: [{id: a, tenant: acme, sha256: ` + ok + `}]}`,
			[]string{`triggers.selfservice.min_interval: "soon" is not a duration`}},
		{"negative interval", `{min_interval: -1s, tokens: [{id: a, tenant: acme, sha256: ` + ok + `}]}`,
			[]string{"triggers.selfservice.min_interval: -1s must be between 0 (off) and 24h"}},
		{"short ttl", `{idempotency_ttl: 1s, tokens: [{id: a, tenant: acme, sha256: ` + ok + `}]}`,
			[]string{"triggers.selfservice.idempotency_ttl: 1s must be between 1m and 720h"}},
		{"unknown field", `{tokenz: [], tokens: [{id: a, tenant: acme, sha256: ` + ok + `}]}`,
			[]string{"triggers.selfservice", "tokenz"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tenantauth.ParseConfig([]byte(tc.yaml), &rekey)
			require.Error(t, err)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}

	cfg, err = tenantauth.ParseConfig([]byte(`{min_interval: 0s, tokens: [{id: a, tenant: acme, sha256: `+ok+`}]}`), &rekey)
	require.NoError(t, err)
	require.Zero(t, cfg.MinInterval, "0 turns the minimum interval off")
}

// TestNewKeyErrors: New reads the JWT key and names the field at fault.
func TestNewKeyErrors(t *testing.T) {
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)
	dir := t.TempDir()
	writePEM := func(name string, pub any) string {
		der, err := x509.MarshalPKIXPublicKey(pub)
		require.NoError(t, err)
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600))
		return path
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	t.Setenv("REKEY_TEST_SHORT_KEY", "too-short")

	for _, tc := range []struct {
		name, jwt, want string
	}{
		{"unset env", `{algorithm: HS256, hs256_key_env: REKEY_TEST_UNSET_KEY}`,
			"triggers.selfservice.jwt.hs256_key_env: environment variable REKEY_TEST_UNSET_KEY is empty or unset"},
		{"short key", `{algorithm: HS256, hs256_key_env: REKEY_TEST_SHORT_KEY}`, "holds 9 bytes; an HS256 key needs at least 32"},
		{"missing file", `{algorithm: RS256, public_key_file: ` + filepath.Join(dir, "nope.pem") + `}`,
			"triggers.selfservice.jwt.public_key_file: open"},
		{"small rsa", `{algorithm: RS256, public_key_file: ` + writePEM("small.pem", &small.PublicKey) + `}`, "RSA key of 1024 bits"},
		{"ec for rs256", `{algorithm: RS256, public_key_file: ` + writePEM("p256.pem", &p256.PublicKey) + `}`, "not a PEM RSA public key"},
		{"p384 for es256", `{algorithm: ES256, public_key_file: ` + writePEM("p384.pem", &p384.PublicKey) + `}`, "ES256 needs a P-256 key, not P-384"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tenantauth.ParseConfig([]byte("min_interval: 0s\njwt: "+tc.jwt), &rekey)
			require.NoError(t, err)
			_, err = tenantauth.New(context.Background(), cfg, orchestrator.Deps{Rekey: &rekey, Metrics: orchestrator.NewMetrics(), Log: slog.New(slog.DiscardHandler)})
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "too-short")
		})
	}
}
