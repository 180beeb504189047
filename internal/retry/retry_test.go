package retry_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/retry"
)

func TestDelayDoublesUpToMax(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name string
		b    retry.Backoff
		want []time.Duration // delays before retries 1, 2, ...
	}{
		{"triggers", retry.Backoff{Initial: 500 * ms, Max: 30 * time.Second},
			[]time.Duration{500 * ms, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}},
		{"local writes", retry.Backoff{Initial: 2 * ms, Max: 50 * ms},
			[]time.Duration{2 * ms, 4 * ms, 8 * ms, 16 * ms, 32 * ms, 50 * ms, 50 * ms}},
		{"max below initial", retry.Backoff{Initial: time.Second, Max: 300 * ms},
			[]time.Duration{300 * ms, 300 * ms}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, want := range tc.want {
				require.Equal(t, want, tc.b.Delay(i+1), "retry %d", i+1)
			}
			require.Equal(t, tc.b.Max, tc.b.Delay(1<<20), "no overflow after many retries")
		})
	}
}

func TestDelayJitterStaysInItsSpread(t *testing.T) {
	b := retry.Backoff{Initial: time.Second, Max: 30 * time.Second, Jitter: 0.2}
	lo, hi := time.Hour, time.Duration(0)
	for range 2000 {
		d := b.Delay(2) // 2s +-20%
		require.GreaterOrEqual(t, d, 1600*time.Millisecond)
		require.LessOrEqual(t, d, 2400*time.Millisecond)
		lo, hi = min(lo, d), max(hi, d)
	}
	require.Less(t, lo, 1800*time.Millisecond, "delays are spread, not constant")
	require.Greater(t, hi, 2200*time.Millisecond, "delays are spread, not constant")
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	require.True(t, retry.Sleep(ctx, time.Millisecond))
	require.True(t, retry.Sleep(ctx, 0))
	cancel()
	require.False(t, retry.Sleep(ctx, time.Hour), "a sleep of an hour ends when ctx does")
	require.False(t, retry.Sleep(ctx, 0))
}

func TestWithDefaultTimeoutKeepsCallersDeadline(t *testing.T) {
	ctx, cancel := retry.WithDefaultTimeout(context.Background(), time.Minute)
	defer cancel()
	dl, ok := ctx.Deadline()
	require.True(t, ok)
	require.WithinDuration(t, time.Now().Add(time.Minute), dl, 5*time.Second)

	mine, cancelMine := context.WithTimeout(context.Background(), time.Hour)
	defer cancelMine()
	ctx2, cancel2 := retry.WithDefaultTimeout(mine, time.Minute)
	defer cancel2()
	dl2, _ := ctx2.Deadline()
	want, _ := mine.Deadline()
	require.Equal(t, want, dl2)
}
