package cron

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDue: the tick to fire is the latest one in (after, now] whose
// jittered time has come; the count says how many were collapsed into it.
func TestDue(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		require.NoError(t, err)
		return v
	}
	noJitter := func(time.Time) time.Duration { return 0 }
	tenMin := func(time.Time) time.Duration { return 10 * time.Minute }
	for _, tc := range []struct {
		name, spec, after, now string
		jitter                 func(time.Time) time.Duration
		want                   string // "" when nothing is due
		missed                 int
	}{
		{"none yet", "0 3 * * *", "2026-01-10T04:00:00Z", "2026-01-11T02:59:59Z", noJitter, "", 0},
		{"exactly at the tick", "0 3 * * *", "2026-01-10T04:00:00Z", "2026-01-11T03:00:00Z", noJitter, "2026-01-11T03:00:00Z", 1},
		{"four missed", "0 3 * * *", "2026-01-10T10:00:00Z", "2026-01-14T05:00:00Z", noJitter, "2026-01-14T03:00:00Z", 4},
		{"a year of minutes", "* * * * *", "2025-01-14T05:00:00Z", "2026-01-14T05:00:30Z", noJitter, "2026-01-14T05:00:00Z", maxCounted},
		{"jitter not come", "0 3 * * *", "2026-01-10T10:00:00Z", "2026-01-14T03:05:00Z", tenMin, "2026-01-13T03:00:00Z", 3},
		{"jitter come", "0 3 * * *", "2026-01-10T10:00:00Z", "2026-01-14T03:10:00Z", tenMin, "2026-01-14T03:00:00Z", 4},
		{"every", "@every 1s", "2026-01-14T05:00:00.5Z", "2026-01-14T05:00:03.2Z", noJitter, "2026-01-14T05:00:03Z", 3},
		{"every none", "@every 1m", "2026-01-14T05:00:00Z", "2026-01-14T05:00:59Z", noJitter, "", 0},
		{"yearly after years", "@yearly", "2019-06-01T00:00:00Z", "2026-03-01T00:00:00Z", noJitter, "2026-01-01T00:00:00Z", 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSchedule(tc.spec, "")
			require.NoError(t, err)
			tick, missed, ok := s.due(at(tc.after), at(tc.now), tc.jitter)
			if tc.want == "" {
				require.False(t, ok, "due %s", tick)
				return
			}
			require.True(t, ok)
			require.True(t, at(tc.want).Equal(tick), "tick %s, want %s", tick.UTC(), tc.want)
			require.Equal(t, tc.missed, missed)
		})
	}
}
