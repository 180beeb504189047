package vault_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/vault"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
)

// The servers are started by the first test that needs them
// (vaulttest.NeedVault, NeedDatabase) and stopped by TestMain, so
// `go test -run TestConfig` needs neither. A test that needs one that
// cannot be found fails with how to get it, never skips.
func TestMain(m *testing.M) { vaulttest.Main(m) }

// rootEnv is the environment variable the tests put the root token in.
const rootEnv = "REKEY_TEST_VAULT_ROOT_TOKEN"

// baseConfig is a token-auth config for the dev server (root token).
func baseConfig(t testing.TB, addr string) vault.Config {
	t.Helper()
	v := vaulttest.NeedVault(t)
	// os.Setenv, not t.Setenv, which parallel tests cannot use; every test
	// sets the same value.
	require.NoError(t, os.Setenv(rootEnv, v.RootToken))
	if addr == "" {
		addr = v.Addr
	}
	return vault.Config{
		Address: addr,
		Auth:    vault.AuthConfig{Method: vault.AuthToken, TokenEnv: rootEnv},
		Timeout: 10 * time.Second,
	}
}

// newBackend builds a backend and runs its Run loop for the test.
func newBackend(t testing.TB, cfg vault.Config, log *slog.Logger) *vault.Backend {
	t.Helper()
	b, err := vault.New(t.Context(), cfg, log)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done, "Run")
	})
	return b
}

// kvRef is a kv secret of tenant.
func kvRef(tenant, secret string) handlers.SecretRef {
	return handlers.SecretRef{Tenant: tenant, Secret: secret, Backend: vault.Name, Generator: handlers.Generator{}.Defaults()}
}

// rotate runs the whole saga with a fresh token.
func rotate(t testing.TB, ctx context.Context, b handlers.Backend, ref handlers.SecretRef) handlers.Version {
	t.Helper()
	v, err := b.Create(ctx, ref, testutil.Uniq("tok"))
	require.NoError(t, err, "Create")
	require.NoError(t, b.Set(ctx, ref, v), "Set")
	require.NoError(t, b.Test(ctx, ref, v), "Test")
	require.NoError(t, b.Finish(ctx, ref, v), "Finish")
	return v
}
