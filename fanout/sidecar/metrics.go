package sidecar

import (
	"bufio"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the sidecar's Prometheus metrics. Labels are the API, the
// HTTP status and the invalidation kind: never a secret name or value.
type metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	invalidations *prometheus.CounterVec
	streams       prometheus.Gauge
	leaks         prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rekey_sidecar_requests_total", Help: "Requests served by rekey-agent, by API and HTTP status.",
		}, []string{"api", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rekey_sidecar_request_duration_seconds", Help: "Time to answer a request, by API.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05, .25, 1, 5},
		}, []string{"api"}),
		invalidations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rekey_sidecar_invalidations_total", Help: "Invalidations applied by the agent, by kind.",
		}, []string{"kind"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "rekey_sidecar_event_streams", Help: "Open /v1/events streams.",
		}),
		leaks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rekey_sidecar_scan_leaks_total", Help: "Secret versions found and redacted by POST /v1/scan.",
		}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.invalidations, m.streams, m.leaks,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// statusWriter records the status of a response. It passes Flush through
// (for the event stream) and unwraps for http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if h, ok := w.ResponseWriter.(http.Hijacker); ok {
		return h.Hijack()
	}
	return nil, nil, errors.New("not a hijacker")
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// header returns a request header for a log, cut to 64 bytes.
func header(r *http.Request, name string) string {
	v := r.Header.Get(name)
	if len(v) > 64 {
		v = v[:64]
	}
	return v
}

// instrument counts and times every request of api. Request logs carry
// the method, the path's route (not the query), the status and the tool
// and run the client named; never a value.
func (s *Server) instrument(api string, h http.Handler) http.Handler {
	codes := sync.Map{} // status -> counter, to skip WithLabelValues on the hot path
	lat := s.metrics.latency.WithLabelValues(api)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		lat.Observe(time.Since(start).Seconds())
		c, ok := codes.Load(sw.code)
		if !ok {
			c, _ = codes.LoadOrStore(sw.code, s.metrics.requests.WithLabelValues(api, strconv.Itoa(sw.code)))
		}
		c.(prometheus.Counter).Inc()
		switch {
		case sw.code >= 400:
			s.log.Info("request refused", "api", api, "method", r.Method, "status", sw.code,
				"tool", header(r, "X-Rekey-Tool"), "run", header(r, "X-Rekey-Run"))
		case s.log.Enabled(r.Context(), slog.LevelDebug):
			s.log.Debug("request served", "api", api, "method", r.Method, "status", sw.code,
				"tool", header(r, "X-Rekey-Tool"), "run", header(r, "X-Rekey-Run"))
		}
	})
}
