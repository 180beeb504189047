package orchestrator_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
)

// TestStatusUpdatesFromAStaleKnownStatus: two States on one bucket (two
// replicas) take turns updating one secret's status, each starting from
// the status it last wrote, which the other has since changed. No update
// is lost: every increment of the other replica is seen.
func TestStatusUpdatesFromAStaleKnownStatus(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	ctx := context.Background()
	var states []*orchestrator.State
	for _, name := range []string{"a", "b"} {
		bus, err := orchestrator.Connect(ctx, srv.ClientURL(), name, orchestrator.NATSConfig{}, slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		t.Cleanup(bus.Close)
		st, err := orchestrator.NewState(ctx, bus, 0)
		require.NoError(t, err)
		states = append(states, st)
	}
	for i := range 10 {
		s := states[i%2]
		got, err := s.UpdateSecretStatus(ctx, "acme", "k", func(st *orchestrator.SecretStatus) error {
			st.Rotations++
			st.LastRequestID = []string{"a", "b"}[i%2]
			return nil
		})
		require.NoError(t, err)
		require.EqualValues(t, i+1, got.Rotations, "update %d started from what the other replica wrote", i)
	}
	for _, s := range states {
		st, err := s.SecretStatus(ctx, "acme", "k")
		require.NoError(t, err)
		require.EqualValues(t, 10, st.Rotations)
		require.Equal(t, "b", st.LastRequestID)
	}
}
