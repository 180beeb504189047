package usage

import (
	"context"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// TestRedeliveredReportCountsOnce: a report whose count was stored but
// whose ack was lost comes back with the same stream sequence and is not
// counted again; the rotation is decided once, by the report that reached
// the limit.
func TestRedeliveredReportCountsOnce(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	log := slog.New(slog.DiscardHandler)
	bus, err := orchestrator.Connect(context.Background(), srv.ClientURL(), "usage-internal", orchestrator.NATSConfig{}, log)
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	ctx := context.Background()
	kv, err := bus.KV(ctx, Bucket, 0)
	require.NoError(t, err)
	state, err := orchestrator.NewState(ctx, bus, 0)
	require.NoError(t, err)
	c := &counter{t: &Trigger{log: log}, kv: kv, state: state}
	var floor uint64 // the tenant consumer's ack floor
	var epoch int64  // the stream's incarnation

	rep := schemas.UsageReport{Tenant: "acme", Secret: "db", Version: "1", Agent: "a", Count: 600}
	cnt, dup, err := c.count(ctx, rep, pos{seq: 10, epoch: epoch, floor: floor}, 1000, time.Time{}, log)
	require.NoError(t, err)
	require.False(t, dup)
	require.Equal(t, int64(600), cnt.Uses)
	require.Nil(t, cnt.Rotation)

	cnt, dup, err = c.count(ctx, rep, pos{seq: 10, epoch: epoch, floor: floor}, 1000, time.Time{}, log) // redelivered
	require.NoError(t, err)
	require.True(t, dup)
	require.Equal(t, int64(600), cnt.Uses)

	cnt, dup, err = c.count(ctx, rep, pos{seq: 11, epoch: epoch, floor: floor}, 1000, time.Time{}, log) // reaches the limit
	require.NoError(t, err)
	require.False(t, dup)
	require.Equal(t, int64(1200), cnt.Uses)
	require.NotNil(t, cnt.Rotation)
	require.Equal(t, uint64(11), cnt.Rotation.Seq)
	require.Equal(t, "usage.acme.db.1", cnt.Rotation.RequestID)

	cnt, _, err = c.count(ctx, rep, pos{seq: 12, epoch: epoch, floor: floor}, 1000, time.Time{}, log) // later reports keep the decision
	require.NoError(t, err)
	require.Equal(t, int64(1800), cnt.Uses)
	require.Equal(t, uint64(11), cnt.Rotation.Seq)
	require.Equal(t, []uint64{10, 11, 12}, cnt.Applied)

	floor = 11 // 10 and 11 were acked
	cnt, _, err = c.count(ctx, rep, pos{seq: 13, epoch: epoch, floor: floor}, 1000, time.Time{}, log)
	require.NoError(t, err)
	require.Equal(t, []uint64{12, 13}, cnt.Applied)
	require.Equal(t, uint64(11), cnt.AckFloor)

	// A copy of 10 still in flight when the first was acked and pruned.
	floor = 0 // as seen by a replica that has not caught up
	cnt, dup, err = c.count(ctx, rep, pos{seq: 10, epoch: epoch, floor: floor}, 1000, time.Time{}, log)
	require.NoError(t, err)
	require.True(t, dup)
	require.Equal(t, int64(2400), cnt.Uses)

	// The stream was recreated: its sequences start over.
	epoch++
	cnt, dup, err = c.count(ctx, rep, pos{seq: 10, epoch: epoch, floor: floor}, 1000, time.Time{}, log)
	require.NoError(t, err)
	require.False(t, dup)
	require.Equal(t, int64(3000), cnt.Uses)
	require.Equal(t, []uint64{10}, cnt.Applied)
}

func TestPruneKeepsTheNewest(t *testing.T) {
	var seqs []uint64
	for i := range maxApplied + 10 {
		seqs = append(seqs, uint64(maxApplied+10-i)) // descending
	}
	got := prune(seqs, 3)
	require.Len(t, got, maxApplied)
	require.Equal(t, uint64(11), got[0])
	require.Equal(t, uint64(maxApplied+10), got[len(got)-1])
}

func TestSaturatingAdd(t *testing.T) {
	require.Equal(t, int64(math.MaxInt64), satAdd(math.MaxInt64-1, 5))
	require.Equal(t, int64(7), satAdd(3, 4))
}
