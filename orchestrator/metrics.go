package orchestrator

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are rekey's Prometheus metrics. Labels are tenant, secret,
// outcome and the like; never a value.
type Metrics struct {
	Registry *prometheus.Registry

	RequestsTotal              *prometheus.CounterVec   // kind, outcome
	RotationsTotal             *prometheus.CounterVec   // tenant, outcome
	RotationDuration           *prometheus.HistogramVec // backend
	RotationAttempts           prometheus.Histogram
	RevocationsTotal           *prometheus.CounterVec // action, outcome
	RevocationDuration         prometheus.Histogram
	InvalidationsTotal         *prometheus.CounterVec // kind
	InvalidationPublishLatency prometheus.Histogram   // event time -> invalidation published
	HTTPRequestsTotal          *prometheus.CounterVec // route, code
	AgentAcksTotal             prometheus.Counter
	InvalidationLatency        prometheus.Histogram // invalidation published -> agent ack
	StreamBytes                *prometheus.GaugeVec // stream
	StreamMessages             *prometheus.GaugeVec // stream
	StreamMaxBytes             *prometheus.GaugeVec // stream
	StreamUsageRatio           *prometheus.GaugeVec // stream: bytes / max_bytes
	StreamFull                 *prometheus.GaugeVec // stream: 1 while new input is refused
}

// NewMetrics registers rekey's metrics and the Go runtime collectors on a
// fresh registry.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	latency := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &Metrics{
		Registry: reg,
		RequestsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rekey_requests_total", Help: "Rotation and revocation requests handled, by kind and outcome.",
		}, []string{"kind", "outcome"}),
		RotationsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rekey_rotations_total", Help: "Rotations run, by tenant and outcome.",
		}, []string{"tenant", "outcome"}),
		RotationDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rekey_rotation_duration_seconds", Help: "Time from rotation start to promotion.", Buckets: latency,
		}, []string{"backend"}),
		RotationAttempts: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "rekey_rotation_attempts", Help: "Attempts a rotation needed.", Buckets: []float64{1, 2, 3, 5, 8, 13},
		}),
		RevocationsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rekey_revocations_total", Help: "Tenant revocations and restores, by action (revoke, restore) and outcome.",
		}, []string{"action", "outcome"}),
		RevocationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "rekey_revocation_duration_seconds", Help: "Time to complete a tenant revocation.", Buckets: latency,
		}),
		InvalidationsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rekey_invalidations_total", Help: "Invalidations published, by kind.",
		}, []string{"kind"}),
		InvalidationPublishLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "rekey_invalidation_publish_latency_seconds", Help: "Time from a completed rotation or revocation to its invalidation being published.", Buckets: latency,
		}),
		HTTPRequestsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rekey_http_requests_total", Help: "HTTP API requests, by route and status code.",
		}, []string{"route", "code"}),
		AgentAcksTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rekey_agent_acks_total", Help: "Invalidation acks received from agents.",
		}),
		InvalidationLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "rekey_invalidation_latency_seconds", Help: "Time from an invalidation being published to an agent confirming it dropped the old value.", Buckets: latency,
		}),
		StreamBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rekey_stream_bytes", Help: "Bytes stored in each JetStream stream.",
		}, []string{"stream"}),
		StreamMessages: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rekey_stream_messages", Help: "Messages stored in each JetStream stream.",
		}, []string{"stream"}),
		StreamMaxBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rekey_stream_max_bytes", Help: "Configured byte limit of each JetStream stream (nats.limits).",
		}, []string{"stream"}),
		StreamUsageRatio: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rekey_stream_usage_ratio", Help: "Bytes stored over the byte limit, per stream; a warning is logged at nats.limits.warn_at.",
		}, []string{"stream"}),
		StreamFull: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rekey_stream_full", Help: "1 while a stream is at nats.limits.full_at and new input for it is refused with 503.",
		}, []string{"stream"}),
	}
	reg.MustRegister(m.RequestsTotal, m.RotationsTotal, m.RotationDuration, m.RotationAttempts,
		m.RevocationsTotal, m.RevocationDuration, m.InvalidationsTotal, m.InvalidationPublishLatency,
		m.HTTPRequestsTotal, m.AgentAcksTotal, m.InvalidationLatency,
		m.StreamBytes, m.StreamMessages, m.StreamMaxBytes, m.StreamUsageRatio, m.StreamFull)
	return m
}

// Register registers a component's own collector on m, or returns the one
// already registered under its name (several components of a kind, or of
// a test, on one registry).
func Register[C prometheus.Collector](m *Metrics, c C) (C, error) {
	if err := m.Registry.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("register metrics: %w", err)
	}
	return c, nil
}
