package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/schemas"
)

// StorageMonitor watches the size of every stream against nats.limits: it
// sets the rekey_stream_* gauges, logs a warning when a stream reaches
// warn_at of its max_bytes, and reports a stream as full from full_at, at
// which the HTTP API refuses new requests (503) for the request streams
// and for AUDIT. Those streams also refuse messages themselves at
// max_bytes (discard new); the margin between full_at and max_bytes is
// left to the audit records and completions of work already accepted, so
// that nothing accepted is dropped.
type StorageMonitor struct {
	bus      *Bus
	limits   LimitsConfig
	metrics  *Metrics
	log      *slog.Logger
	interval time.Duration

	mu     sync.RWMutex
	full   map[string]bool
	warned map[string]bool
	usage  map[string]float64
}

// NewStorageMonitor returns a monitor checking every interval (default
// 1s). bus needs the INFO of every stream.
func NewStorageMonitor(bus *Bus, limits LimitsConfig, metrics *Metrics, interval time.Duration, log *slog.Logger) *StorageMonitor {
	if interval <= 0 {
		interval = time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	return &StorageMonitor{bus: bus, limits: limits, metrics: metrics, log: log.With("component", "storage-monitor"),
		interval: interval, full: map[string]bool{}, warned: map[string]bool{}, usage: map[string]float64{}}
}

// Run checks until ctx ends.
func (m *StorageMonitor) Run(ctx context.Context) error {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		if err := m.Check(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("stream sizes unavailable", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Check reads every stream's size once.
func (m *StorageMonitor) Check(ctx context.Context) error {
	ctx, cancel := retry.WithDefaultTimeout(ctx, 2*time.Second)
	defer cancel()
	for name, lim := range m.limits.ByStream() {
		s, err := m.bus.JS.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		st := s.CachedInfo().State
		ratio := 0.0
		if lim.MaxBytes > 0 {
			ratio = float64(st.Bytes) / float64(lim.MaxBytes)
		}
		full := ratio >= m.limits.FullAt
		m.record(name, st.Bytes, st.Msgs, lim.MaxBytes, ratio, full)
	}
	return nil
}

func (m *StorageMonitor) record(name string, bytes, msgs uint64, maxBytes int64, ratio float64, full bool) {
	if m.metrics != nil {
		m.metrics.StreamBytes.WithLabelValues(name).Set(float64(bytes))
		m.metrics.StreamMessages.WithLabelValues(name).Set(float64(msgs))
		m.metrics.StreamMaxBytes.WithLabelValues(name).Set(float64(maxBytes))
		m.metrics.StreamUsageRatio.WithLabelValues(name).Set(ratio)
		f := 0.0
		if full {
			f = 1
		}
		m.metrics.StreamFull.WithLabelValues(name).Set(f)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.usage[name] = ratio
	warn := ratio >= m.limits.WarnAt
	switch {
	case full && !m.full[name]:
		m.log.Error("stream full: new requests are refused until it shrinks", "stream", name, "bytes", bytes, "max_bytes", maxBytes, "usage", ratio)
	case warn && !m.warned[name]:
		m.log.Warn("stream near its byte limit", "stream", name, "bytes", bytes, "max_bytes", maxBytes, "usage", ratio)
	case !warn && m.warned[name]:
		m.log.Info("stream back under its warning level", "stream", name, "usage", ratio)
	}
	m.full[name], m.warned[name] = full, warn
}

// Full reports whether stream is at full_at of its byte limit.
func (m *StorageMonitor) Full(stream string) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.full[stream]
}

// Refuses reports which stream, if any, makes new requests for stream
// refused: the stream itself or AUDIT (a request is audited when accepted).
func (m *StorageMonitor) Refuses(stream string) (string, bool) {
	for _, s := range []string{stream, schemas.StreamAudit} {
		if m.Full(s) {
			return s, true
		}
	}
	return "", false
}
