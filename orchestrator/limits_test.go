package orchestrator_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

const limitsBase = "tenants:\n  acme:\n    secrets:\n      k: {backend: local}\n"

// TestLimitsConfig: defaults, a partial override keeps the other
// defaults, and every bad limit is refused naming its field; an audit age
// under 90 days is refused at start (rekey does not export audit before an
// age limit drops it).
func TestLimitsConfig(t *testing.T) {
	cfg, err := orchestrator.Parse([]byte(limitsBase))
	require.NoError(t, err)
	require.Equal(t, orchestrator.DefaultLimits(), cfg.NATS.Limits)
	require.Equal(t, 3*time.Second, cfg.NATS.AckWait)
	require.Equal(t, 3*time.Second, cfg.Rotation.LockTTL)

	cfg, err = orchestrator.Parse([]byte(limitsBase + "nats:\n  ack_wait: 5s\n  limits:\n    audit: {max_bytes: 104857600}\n    queued_per_tenant: 50\n    queued_per_secret: 10\n"))
	require.NoError(t, err)
	require.Equal(t, 5*time.Second, cfg.NATS.AckWait)
	require.EqualValues(t, 100<<20, cfg.NATS.Limits.Audit.MaxBytes)
	require.Equal(t, orchestrator.DefaultLimits().Audit.MaxAge, cfg.NATS.Limits.Audit.MaxAge, "an unset field keeps its default")
	require.Equal(t, 50, cfg.NATS.Limits.QueuedPerTenant)

	for _, tc := range []struct{ name, yaml, field string }{
		{"audit kept under 90 days", "nats: {limits: {audit: {max_age: 720h}}}\n", "nats.limits.audit.max_age"},
		{"tiny stream", "nats: {limits: {rotate: {max_bytes: 1000}}}\n", "nats.limits.rotate.max_bytes"},
		{"negative age", "nats: {limits: {events: {max_age: -1h}}}\n", "nats.limits.events.max_age"},
		{"no tenant cap", "nats: {limits: {queued_per_tenant: 0}}\n", "nats.limits.queued_per_tenant"},
		{"secret cap over tenant cap", "nats: {limits: {queued_per_tenant: 5, queued_per_secret: 6}}\n", "nats.limits.queued_per_secret"},
		{"warn over full", "nats: {limits: {warn_at: 0.9, full_at: 0.8}}\n", "nats.limits.full_at"},
		{"warn at 0", "nats: {limits: {warn_at: 0}}\n", "nats.limits.warn_at"},
		{"ack wait too short", "nats: {ack_wait: 100ms}\n", "nats.ack_wait"},
		{"unknown stream", "nats: {limits: {rotation: {max_bytes: 1048576}}}\n", "rotation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := orchestrator.Parse([]byte(limitsBase + tc.yaml))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.field)
		})
	}
}

// TestStreamsHonourLimits: the streams are created with the configured
// limits; requests and audit refuse when full instead of dropping, and the
// monitor reports a stream full from full_at.
func TestStreamsHonourLimits(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	ctx := context.Background()
	lim := orchestrator.DefaultLimits()
	lim.Audit.MaxBytes = 1 << 20
	lim.WarnAt, lim.FullAt = 0.1, 0.2
	bus, err := orchestrator.Connect(ctx, srv.ClientURL(), "limits-test", orchestrator.NATSConfig{Limits: lim}, nil)
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	require.NoError(t, bus.EnsureStreams(ctx))
	for _, sc := range bus.StreamConfigs() {
		s, err := bus.JS.Stream(ctx, sc.Name)
		require.NoError(t, err)
		got := s.CachedInfo().Config
		want := lim.ByStream()[sc.Name]
		require.Equal(t, want.MaxBytes, got.MaxBytes, sc.Name)
		require.Equal(t, want.MaxAge, got.MaxAge, sc.Name)
		switch sc.Name {
		case schemas.StreamRotate, schemas.StreamRevoke, schemas.StreamAudit:
			require.Equal(t, jetstream.DiscardNew, got.Discard, "%s never drops what it accepted", sc.Name)
		default:
			require.Equal(t, jetstream.DiscardOld, got.Discard, sc.Name)
		}
	}

	metrics := orchestrator.NewMetrics()
	mon := orchestrator.NewStorageMonitor(bus, lim, metrics, time.Second, nil)
	require.NoError(t, mon.Check(ctx))
	_, refused := mon.Refuses(schemas.StreamRotate)
	require.False(t, refused)

	// Fill AUDIT past full_at, then to its limit: the stream refuses the
	// publish that would exceed it and keeps every earlier record.
	payload := make([]byte, 64<<10)
	var stored uint64
	for {
		_, err := bus.JS.Publish(ctx, schemas.AuditSubject("acme"), payload)
		if err != nil {
			break
		}
		stored++
		require.Less(t, stored, uint64(100), "AUDIT never refused a publish")
	}
	require.NoError(t, mon.Check(ctx))
	full, refused := mon.Refuses(schemas.StreamRotate)
	require.True(t, refused, "a full audit stream refuses new requests")
	require.Equal(t, schemas.StreamAudit, full)
	s, err := bus.JS.Stream(ctx, schemas.StreamAudit)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, stored, info.State.Msgs, "no audit record was dropped")
	require.EqualValues(t, 1, info.State.FirstSeq)
}
