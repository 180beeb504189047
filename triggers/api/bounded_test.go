package api_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/api"
)

// manyAgents is a delivery as fanout would report it after a flood of
// 100,000 fake heartbeats with names of the longest allowed length.
type manyAgents struct{ n int }

func (m manyAgents) LatestInvalidation(tenant, secret string) (api.InvalidationStatus, bool) {
	s := api.InvalidationStatus{RequestID: "r", Kind: "rotated", LiveAgents: 2 * m.n}
	for i := range m.n {
		s.Acked = append(s.Acked, fmt.Sprintf("%s-%d", strings.Repeat("a", 100), i))
		s.Missing = append(s.Missing, fmt.Sprintf("%s-%d", strings.Repeat("m", 100), i))
	}
	return s, true
}

// TestAttackStatusReplyBounded: a secret's status names at most
// MaxListedAgents acked and missing agents, with the full counts, so the
// reply stays small (it was 21.9 MB after a presence flood).
func TestAttackStatusReplyBounded(t *testing.T) {
	e := newEnv(t, orchestrator.NATSConfig{}, func(d *api.Deps) { d.Deliveries = (manyAgents{n: 100000}) })
	r := e.call("GET", "/v1/tenants/acme/secrets/openai-key", adminToken, "", nil)
	require.Equal(t, 200, r.Code, "%s", r.Raw)
	require.Less(t, len(r.Raw), 512<<10)
	inv := r.Body["invalidation"].(map[string]any)
	require.Len(t, inv["acked"], api.MaxListedAgents)
	require.Len(t, inv["missing"], api.MaxListedAgents)
	require.EqualValues(t, 100000, inv["acked_count"])
	require.EqualValues(t, 100000, inv["missing_count"])
	require.Equal(t, true, inv["acked_truncated"])
	require.Equal(t, true, inv["missing_truncated"])

	small := newEnv(t, orchestrator.NATSConfig{}, func(d *api.Deps) { d.Deliveries = (manyAgents{n: 3}) })
	r = small.call("GET", "/v1/tenants/acme/secrets/openai-key", adminToken, "", nil)
	require.Equal(t, 200, r.Code, "%s", r.Raw)
	inv = r.Body["invalidation"].(map[string]any)
	require.Len(t, inv["acked"], 3)
	require.EqualValues(t, 3, inv["missing_count"])
	require.Nil(t, inv["missing_truncated"])
}
