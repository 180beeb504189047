package backendtest

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/testutil"
)

// LogBuffer collects a backend's logs so that a test can grep them for
// secret values.
type LogBuffer struct{ testutil.SyncBuffer }

// Logger returns a text logger writing to l, debug level included.
func (l *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// RequireNoValue fails if text holds any of the values, raw or base64.
func RequireNoValue(t testing.TB, text string, values ...[]byte) {
	t.Helper()
	for _, v := range values {
		require.NotEmpty(t, v, "empty value: the check would prove nothing")
		require.NotContains(t, text, string(v), "a secret value leaked")
		require.NotContains(t, text, base64.StdEncoding.EncodeToString(v), "a base64 secret value leaked")
	}
}

// ReadsNotLogged returns read, keeping every value it returns; when t ends
// (after its parallel subtests), it fails unless some value was read and
// none of them is in logs. Give it as Fixture.Read to check that a whole
// Run logged no value.
func ReadsNotLogged(t *testing.T, logs *LogBuffer, read func(ctx context.Context, ref handlers.SecretRef) (string, []byte, error)) func(ctx context.Context, ref handlers.SecretRef) (string, []byte, error) {
	t.Helper()
	var (
		mu     sync.Mutex
		values [][]byte
	)
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		require.NotEmpty(t, values)
		RequireNoValue(t, logs.String(), values...)
	})
	return func(ctx context.Context, ref handlers.SecretRef) (string, []byte, error) {
		v, val, err := read(ctx, ref)
		if err == nil {
			mu.Lock()
			values = append(values, bytes.Clone(val))
			mu.Unlock()
		}
		return v, val, err
	}
}
