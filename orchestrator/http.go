package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HTTPServer serves /healthz, /readyz, /metrics and the routes components
// register on Mux.
type HTTPServer struct {
	Mux   *http.ServeMux
	cfg   HTTPConfig
	ready func(context.Context) error
	log   *slog.Logger
	ln    net.Listener
}

// NewHTTPServer listens on cfg.Addr at once, so the address is known (and
// a port clash reported) before Run.
func NewHTTPServer(cfg HTTPConfig, metrics *Metrics, ready func(context.Context) error, log *slog.Logger) (*HTTPServer, error) {
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("http listen %s: %w", cfg.Addr, err)
	}
	s := &HTTPServer{Mux: http.NewServeMux(), cfg: cfg, ready: ready, log: log, ln: ln}
	s.Mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	s.Mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if err := s.ready(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	s.Mux.Handle("GET /metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{Registry: metrics.Registry}))
	return s, nil
}

// Addr is the address the server listens on.
func (s *HTTPServer) Addr() string { return s.ln.Addr().String() }

// Run serves until ctx ends, then stops taking connections and waits up to
// 10s for in-flight requests.
func (s *HTTPServer) Run(ctx context.Context) error {
	srv := &http.Server{
		Handler:           s.Mux,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	// Connections accepted but with no request read yet: net/http's
	// Shutdown counts them as active for 5 s, which would hold a stop that
	// long; they are closed at once instead (no request was taken).
	var mu sync.Mutex
	fresh := map[net.Conn]bool{}
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		if st == http.StateNew {
			fresh[c] = true
		} else {
			delete(fresh, c)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.ln) }()
	s.log.Info("http api listening", "component", "http", "addr", s.Addr())
	select {
	case err := <-errc:
		return fmt.Errorf("http serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(shutdownCtx) }()
	for done := false; !done; {
		mu.Lock()
		for c := range fresh {
			_ = c.Close()
		}
		mu.Unlock()
		select {
		case err := <-shut:
			if err != nil {
				return fmt.Errorf("http shutdown: %w", err)
			}
			done = true
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http serve: %w", err)
	}
	return nil
}
