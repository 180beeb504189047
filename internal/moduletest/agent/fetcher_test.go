package agent_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

// respond serves schemas.FetchSubjectAll like rekey's local backend: the
// secret name picks the answer.
func respond(t *testing.T, nc *nats.Conn) chan schemas.FetchRequest {
	t.Helper()
	reqs := make(chan schemas.FetchRequest, 16)
	sub, err := nc.Subscribe(schemas.SubjectFetchAll, func(m *nats.Msg) {
		var req schemas.FetchRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Errorf("request is not a FetchRequest: %v", err)
		}
		reqs <- req
		tokens := strings.Split(m.Subject, ".")
		var resp schemas.FetchResponse
		switch tokens[3] {
		case "ok":
			resp = schemas.FetchResponse{Tenant: tokens[2], Secret: "ok", Version: "v9", Value: []byte("s3cr3t-" + tokens[2])}
		case "other":
			// A reply naming another secret (as one that reached this
			// inbox by another path would): not taken for this one.
			resp = schemas.FetchResponse{Tenant: tokens[2], Secret: "ok", Version: "v9", Value: []byte("s3cr3t-" + tokens[2])}
		case "unnamed":
			resp = schemas.FetchResponse{Version: "v9", Value: []byte("s3cr3t-" + tokens[2])}
		case "missing":
			resp = schemas.FetchResponse{Code: schemas.FetchNotFound, Error: "no such secret"}
		case "gone":
			resp = schemas.FetchResponse{Code: schemas.FetchRevoked, Error: "tenant revoked"}
		case "broken":
			resp = schemas.FetchResponse{Code: schemas.FetchInternal, Error: "revocation state unavailable"}
		case "garbage":
			_ = m.Respond([]byte("s3cr3t not json"))
			return
		}
		b, _ := json.Marshal(resp)
		_ = m.Respond(b)
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return reqs
}

func TestNATSFetcher(t *testing.T) {
	s := startServer(t)
	server := connect(t, s)
	reqs := respond(t, server)
	nc := connect(t, s)
	f := agent.NewNATSFetcher(nc, "planner-7")
	ctx := context.Background()

	sec, err := f.Fetch(ctx, "acme", "ok")
	require.NoError(t, err)
	require.Equal(t, "ok", sec.Name)
	require.Equal(t, "v9", sec.Version)
	require.Equal(t, "s3cr3t-acme", string(sec.Value))
	require.WithinDuration(t, time.Now(), sec.FetchedAt, time.Minute)
	require.Equal(t, "planner-7", (<-reqs).Agent)

	for _, tc := range []struct {
		secret string
		is     error
		text   string
	}{
		{"missing", agent.ErrNotFound, "rekey.fetch.acme.missing"},
		{"gone", agent.ErrRevoked, "tenant revoked"},
		{"broken", nil, "internal: revocation state unavailable"},
		{"garbage", schemas.ErrMalformed, "not a JSON FetchResponse"},
		{"other", schemas.ErrMalformed, "not the secret asked for"},
		{"unnamed", schemas.ErrMalformed, "not the secret asked for"},
	} {
		t.Run(tc.secret, func(t *testing.T) {
			_, err := f.Fetch(ctx, "acme", tc.secret)
			require.Error(t, err)
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
			}
			require.Contains(t, err.Error(), tc.text)
			require.NotContains(t, err.Error(), "s3cr3t")
		})
	}

	_, err = f.Fetch(ctx, "acme", "Bad.Name")
	require.ErrorIs(t, err, schemas.ErrInvalidID)

	// No responder at all: a clear error, at once.
	alone := startServer(t)
	_, err = agent.NewNATSFetcher(connect(t, alone), "x").Fetch(ctx, "acme", "ok")
	require.ErrorIs(t, err, nats.ErrNoResponders)
}

// The NATS fetcher behind an Agent: revoked and not found reach the caller.
func TestAgentWithNATSFetcher(t *testing.T) {
	s := startServer(t)
	respond(t, connect(t, s))
	nc := connect(t, s)
	a := startAgent(t, nc, nil, agent.Config{Instance: "planner-7"})
	sec := get(t, a, "ok")
	require.Equal(t, "v9", sec.Version)
	_, err := a.Get(context.Background(), "missing")
	require.ErrorIs(t, err, agent.ErrNotFound)
	_, err = a.Get(context.Background(), "gone")
	require.ErrorIs(t, err, agent.ErrRevoked)
	require.False(t, a.Revoked(), "only an invalidation revokes the agent")
}
