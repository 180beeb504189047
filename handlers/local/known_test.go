package local_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/local"
)

// TestTwoWritersFromStaleRecords: two backends on one bucket (two
// replicas) take turns staging and promoting versions of one secret, each
// starting from the record it last read or wrote, which the other has
// since changed. Nothing either wrote is lost, and version numbers are
// never handed out twice.
func TestTwoWritersFromStaleRecords(t *testing.T) {
	_, js := startJS(t)
	key := newKey(t)
	a, b := newBackend(t, js, key, nil), newBackend(t, js, key, nil)
	r := ref("acme", "k")
	seen := map[string]bool{}
	var last string
	for i := range 6 {
		be := a
		if i%2 == 1 {
			be = b
		}
		v, err := be.Create(t.Context(), r, fmt.Sprintf("tok-%d", i))
		require.NoError(t, err)
		require.False(t, seen[v.ID], "version %s handed out twice", v.ID)
		seen[v.ID] = true
		require.NoError(t, be.Finish(t.Context(), r, v))
		last = v.ID
	}
	for _, be := range []*local.Backend{a, b} {
		cur, err := be.Current(t.Context(), r)
		require.NoError(t, err)
		require.Equal(t, last, cur.ID)
		staged, err := be.Staged(t.Context(), r)
		require.NoError(t, err)
		require.Empty(t, staged)
	}
	require.Len(t, seen, 6)
}
