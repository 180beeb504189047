package schemas_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// ulidMillis decodes the 48-bit timestamp held in the first 10 characters.
func ulidMillis(t *testing.T, id string) int64 {
	t.Helper()
	var ms int64
	for _, c := range id[:10] {
		i := strings.IndexRune(crockford, c)
		require.GreaterOrEqual(t, i, 0, "%q in %s", c, id)
		ms = ms<<5 | int64(i)
	}
	return ms
}

func TestNewULIDFormat(t *testing.T) {
	before := time.Now().UnixMilli()
	id := schemas.NewULID()
	after := time.Now().UnixMilli()

	require.Len(t, id, 26)
	for _, c := range id {
		require.True(t, strings.ContainsRune(crockford, c), "%q in %s is not Crockford base32", c, id)
	}
	// 128 bits in 26 characters: the first one holds 3 bits only.
	require.LessOrEqual(t, id[0], byte('7'))
	ms := ulidMillis(t, id)
	require.GreaterOrEqual(t, ms, before)
	require.LessOrEqual(t, ms, after)
}

func TestNewULIDMonotonic(t *testing.T) {
	const n = 10_000
	seen := make(map[string]bool, n)
	prev := schemas.NewULID()
	for range n {
		id := schemas.NewULID()
		require.Len(t, id, 26)
		require.Greater(t, id, prev, "not strictly increasing")
		require.False(t, seen[id], "duplicate %s", id)
		seen[id] = true
		prev = id
	}
}

func TestNewULIDConcurrent(t *testing.T) {
	const goroutines, each = 16, 2_000
	ids := make([][]string, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for range each {
				ids[g] = append(ids[g], schemas.NewULID())
			}
		})
	}
	wg.Wait()

	seen := make(map[string]bool, goroutines*each)
	for g, list := range ids {
		for i, id := range list {
			require.False(t, seen[id], "duplicate %s", id)
			seen[id] = true
			if i > 0 {
				require.Greater(t, id, list[i-1], "goroutine %d: not increasing", g)
			}
		}
	}
	require.Len(t, seen, goroutines*each)
}
