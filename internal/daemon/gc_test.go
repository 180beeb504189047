package daemon_test

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/daemon"
)

// TestSetGCPercent: rekeyd's collector target is DefaultGCPercent unless
// GOGC says otherwise, and the value in effect is reported.
func TestSetGCPercent(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })

	t.Setenv("GOGC", "")
	require.Equal(t, "400", daemon.SetGCPercent())
	require.Equal(t, daemon.DefaultGCPercent, debug.SetGCPercent(100))

	t.Setenv("GOGC", "150") // the runtime read it at start; rekeyd leaves it
	require.Equal(t, "150", daemon.SetGCPercent())
	require.Equal(t, 100, debug.SetGCPercent(100))
}
