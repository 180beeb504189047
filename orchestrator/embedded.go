package orchestrator

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedServer is a nats-server running inside this process with
// JetStream storing on disk.
type EmbeddedServer struct {
	mu   sync.Mutex // SetUsers
	srv  *server.Server
	opts *server.Options
}

// StartEmbedded starts nats-server on addr (host:port; port 0 picks one)
// with JetStream files under storeDir, and waits until it takes clients.
//
// With users, every client must authenticate as one of them (rekeyd's own
// user and the per-tenant agent users of NATSAuth.Users).
func StartEmbedded(addr, storeDir string, users []*server.User, log *slog.Logger) (*EmbeddedServer, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: port %q: %w", portStr, err)
	}
	if port == 0 {
		port = -1 // nats-server's "pick a random port"
	}
	if err := os.MkdirAll(storeDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded nats: store dir: %w", err)
	}
	opts := &server.Options{
		ServerName: "rekeyd",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 1 << 20,
		Users:      users,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(15 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded nats on %s: not ready after 15s (is the port in use?)", addr)
	}
	if log != nil {
		log.Info("embedded nats started", "component", "nats", "url", srv.ClientURL(), "store_dir", storeDir)
	}
	return &EmbeddedServer{srv: srv, opts: opts}, nil
}

// Restart stops the server and starts it again on the same port and store
// (tests use it to show that nothing is lost when NATS restarts).
func (e *EmbeddedServer) Restart(down time.Duration) error {
	addr := e.srv.Addr().(*net.TCPAddr)
	e.Shutdown()
	time.Sleep(down)
	e.mu.Lock()
	opts := e.opts.Clone()
	e.mu.Unlock()
	opts.Port = addr.Port
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("embedded nats restart: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(15 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("embedded nats restart on port %d: not ready after 15s", addr.Port)
	}
	e.srv = srv
	return nil
}

// SetUsers replaces the users that may log in, without a restart: a user
// no longer listed cannot log in, and its live connections are closed by
// the server at once (nats-server re-checks every client on a reload).
func (e *EmbeddedServer) SetUsers(users []*server.User) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	opts := e.opts.Clone()
	opts.Users = users
	if addr, ok := e.srv.Addr().(*net.TCPAddr); ok {
		opts.Port = addr.Port
	}
	if err := e.srv.ReloadOptions(opts); err != nil {
		return fmt.Errorf("embedded nats: reload users: %w", err)
	}
	e.opts = opts
	return nil
}

// ClientURL is the nats:// URL clients connect to.
func (e *EmbeddedServer) ClientURL() string { return e.srv.ClientURL() }

// Server exposes the underlying server (tests restart it, for instance).
func (e *EmbeddedServer) Server() *server.Server { return e.srv }

// Shutdown stops the server and waits for it to finish.
func (e *EmbeddedServer) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}
