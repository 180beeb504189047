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
	opts *server.Options
	mu   sync.RWMutex // srv changes on Restart
	srv  *server.Server
}

func (e *EmbeddedServer) server() *server.Server {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.srv
}

// StartEmbedded starts nats-server on addr (host:port; port 0 picks one)
// with JetStream files under storeDir, and waits until it takes clients.
//
// With auth (a LoginGate), every client must pass it; who may log in
// changes without a reload of the server.
func StartEmbedded(addr, storeDir string, auth server.Authentication, log *slog.Logger) (*EmbeddedServer, error) {
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
	}
	if auth != nil {
		opts.CustomClientAuthentication = auth
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
	addr := e.server().Addr().(*net.TCPAddr)
	e.Shutdown()
	time.Sleep(down)
	opts := e.opts.Clone()
	opts.CustomClientAuthentication = e.opts.CustomClientAuthentication
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
	e.mu.Lock()
	e.srv = srv
	e.mu.Unlock()
	return nil
}

// DisconnectUsers closes every client connection whose user matches, and
// returns how many it closed.
func (e *EmbeddedServer) DisconnectUsers(match func(user string) bool) (int, error) {
	srv := e.server()
	cz, err := srv.Connz(&server.ConnzOptions{Username: true, Limit: 1 << 20})
	if err != nil {
		return 0, fmt.Errorf("embedded nats: list connections: %w", err)
	}
	n := 0
	for _, c := range cz.Conns {
		if !match(c.AuthorizedUser) {
			continue
		}
		if err := srv.DisconnectClientByID(c.Cid); err == nil {
			n++
		}
	}
	return n, nil
}

// ClientURL is the nats:// URL clients connect to.
func (e *EmbeddedServer) ClientURL() string { return e.server().ClientURL() }

// Server exposes the underlying server (tests restart it, for instance).
func (e *EmbeddedServer) Server() *server.Server { return e.server() }

// Shutdown stops the server and waits for it to finish.
func (e *EmbeddedServer) Shutdown() {
	srv := e.server()
	srv.Shutdown()
	srv.WaitForShutdown()
}
