package orchestrator_test

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
)

// TestStopDoesNotWaitForSilentConnections: a connection that was accepted
// but never sent a request does not hold a stop (net/http would count it
// as active for 5 s).
func TestStopDoesNotWaitForSilentConnections(t *testing.T) {
	cfg := orchestrator.Defaults().HTTP
	cfg.Addr = "127.0.0.1:0"
	srv, err := orchestrator.NewHTTPServer(cfg, orchestrator.NewMetrics(), func(context.Context) error { return nil }, slog.Default())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	conn, err := net.Dial("tcp", srv.Addr())
	require.NoError(t, err)
	defer conn.Close()
	time.Sleep(100 * time.Millisecond) // accepted
	stopped := time.Now()
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(4 * time.Second):
		t.Fatal("the stop waited for a connection that sent nothing")
	}
	t.Logf("stopped in %s", time.Since(stopped))
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(time.Second)))
	_, err = conn.Read(make([]byte, 1))
	require.Error(t, err, "the silent connection was closed")
}
