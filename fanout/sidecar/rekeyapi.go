package sidecar

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// SecretReply is the body of GET /v1/secrets/{secret}: Value is the value
// as a string when it is UTF-8, else ValueBase64 holds it.
type SecretReply struct {
	Secret      string    `json:"secret"`
	Version     string    `json:"version"`
	Value       string    `json:"value,omitempty"`
	ValueBase64 []byte    `json:"value_base64,omitempty"`
	FetchedAt   time.Time `json:"fetched_at"`
}

// ErrorReply is the body of every refusal of rekey's own API.
type ErrorReply struct {
	Code  string `json:"code"`
	Error string `json:"error"`
}

// streamPing is how often an idle event stream gets a comment line, so
// that proxies and clients see it is alive.
const streamPing = 15 * time.Second

func (s *Server) rekeyHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		switch {
		case s.src.Revoked():
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("tenant revoked\n"))
		case !s.cfg.Ready():
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not connected to rekey, or not resynced since the last reconnect\n"))
		default:
			_, _ = w.Write([]byte("ready\n"))
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{Registry: s.metrics.reg}))
	mux.HandleFunc("GET /v1/secrets/{secret}", s.rekeyAuth(s.rekeySecret))
	mux.HandleFunc("GET /v1/events", s.rekeyAuth(s.rekeyEvents))
	mux.HandleFunc("POST /v1/scan", s.rekeyAuth(s.rekeyScan))
	mux.HandleFunc("DELETE /v1/runs/{id}", s.rekeyAuth(s.rekeyEndRun))
	return mux
}

func rekeyError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ErrorReply{Code: code, Error: msg})
}

// rekeyAuth refuses forwarded requests and those without the bearer token.
func (s *Server) rekeyAuth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if forwarded(r) {
			rekeyError(w, http.StatusForbidden, "forwarded", "requests through a proxy (X-Forwarded-For, Forwarded) are refused")
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !tokenEqual(tok, s.cfg.Token) {
			rekeyError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token")
			return
		}
		h(w, r)
	}
}

func (s *Server) rekeySecret(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("secret")
	if !s.names.served(name) {
		rekeyError(w, http.StatusNotFound, "not_found", "secret not found")
		return
	}
	sec, err := s.get(r, name)
	switch classify(err) {
	case outOK:
	case outNotFound:
		rekeyError(w, http.StatusNotFound, "not_found", "secret not found")
		return
	case outDenied:
		rekeyError(w, http.StatusForbidden, "revoked", "tenant revoked")
		return
	default:
		s.log.Warn("read failed", "secret", name, "error", err)
		rekeyError(w, http.StatusServiceUnavailable, "unavailable", "secret unavailable, try again")
		return
	}
	out := SecretReply{Secret: name, Version: sec.Version, FetchedAt: sec.FetchedAt.UTC()}
	if utf8.Valid(sec.Value) {
		out.Value = string(sec.Value)
	} else {
		out.ValueBase64 = sec.Value
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(out)
}

// rekeyEvents streams invalidations as Server-Sent Events: an event named
// after the kind (rotated, revoked, restored), its id the request id, its
// data an Event. The first event, "ready", says the stream is live: an
// application that reconnects must treat everything it built as changed.
// sseField keeps a field on its line.
var sseField = strings.NewReplacer("\n", "", "\r", "")

func (s *Server) rekeyEvents(w http.ResponseWriter, r *http.Request) {
	ch, ok := s.events.subscribe()
	if !ok {
		rekeyError(w, http.StatusServiceUnavailable, "unavailable", "shutting down")
		return
	}
	defer s.events.unsubscribe(ch)
	s.metrics.streams.Inc()
	defer s.metrics.streams.Dec()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "event: ready\ndata: {\"tenant\":%q,\"revoked\":%t}\n\n", s.cfg.Tenant, s.src.Revoked())
	if err := rc.Flush(); err != nil {
		return
	}
	ping := time.NewTicker(streamPing)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-ping.C:
			_, _ = w.Write([]byte(": ping\n\n"))
		case ev, ok := <-ch:
			if !ok {
				return // lagged or shutting down: the client reconnects
			}
			b, err := json.Marshal(ev)
			if err != nil {
				return
			}
			fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", sseField.Replace(ev.RequestID), sseField.Replace(ev.Kind), b)
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
