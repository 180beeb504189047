// Package testutil holds what rekey's tests share: an embedded nats-server
// with JetStream, and a goroutine-safe buffer to collect (and grep) logs.
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// StartNATS starts nats-server with JetStream on 127.0.0.1 and stops it
// when the test ends. port -1 picks a free port; dir "" uses a temporary
// directory (pass the same dir and port to restart a server on its data).
func StartNATS(tb testing.TB, port int, dir string) *server.Server {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true,
	})
	if err != nil {
		tb.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		tb.Fatalf("nats-server on 127.0.0.1:%d did not start within 10s", port)
	}
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers, e.g. a log sink.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Run starts c.Run in the background and returns a func that stops it and
// fails the test unless Run returned nil within 30s; the test's cleanup
// calls it too. Calling it twice is fine.
func Run(t testing.TB, c interface{ Run(context.Context) error }) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("Run did not return within 30s of ctx ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

var uniqN atomic.Int64

// Uniq returns prefix with a number no other call in this test binary
// got: a secret, queue or role name that no other test uses.
func Uniq(prefix string) string { return fmt.Sprintf("%s-%d", prefix, uniqN.Add(1)) }
