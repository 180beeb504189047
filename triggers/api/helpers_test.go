package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/api"
)

const adminToken = "test-admin-token-0123456789"

const rekeyYAML = `
tenants:
  acme:
    secrets:
      openai-key: {backend: local}
      billing-db: {backend: local}
  globex:
    secrets:
      openai-key: {backend: local}
`

type env struct {
	t     *testing.T
	bus   *orchestrator.Bus
	state *orchestrator.State
	rekey *orchestrator.Config
	api   *api.API
	mux   *http.ServeMux
	url   string
	logs  *testutil.SyncBuffer
}

// newEnv starts nats-server and the streams, and serves the API on an
// httptest server. setup, if set, completes the API's dependencies (tenant
// tokens, deliveries) before it is built.
func newEnv(t *testing.T, natsCfg orchestrator.NATSConfig, setup func(*api.Deps)) *env {
	t.Helper()
	srv := testutil.StartNATS(t, -1, "")
	ctx := context.Background()
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bus, err := orchestrator.Connect(ctx, srv.ClientURL(), "httpapi-test", natsCfg, log)
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	require.NoError(t, bus.EnsureStreams(ctx))
	state, err := orchestrator.NewState(ctx, bus, 5*time.Second)
	require.NoError(t, err)
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)
	deps := api.Deps{Deps: orchestrator.Deps{Rekey: &rekey, Bus: bus, Audit: orchestrator.NewAuditor(bus, "test", log),
		Metrics: orchestrator.NewMetrics(), Log: log}, State: state}
	if setup != nil {
		setup(&deps)
	}
	api, err := api.New(api.Config{AdminToken: adminToken, MaxBodyBytes: 4096}, deps)
	require.NoError(t, err)
	mux := http.NewServeMux()
	api.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return &env{t: t, bus: bus, state: state, rekey: &rekey, api: api, mux: mux, url: hs.URL, logs: logs}
}

type reply struct {
	code   int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (e *env) call(method, path, token, body string, hdr map[string]string) reply {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	out := reply{code: resp.StatusCode, header: resp.Header, raw: b}
	if len(bytes.TrimSpace(b)) > 0 && b[0] == '{' {
		require.NoError(e.t, json.Unmarshal(b, &out.body), "body %s", b)
	}
	return out
}

// lastSeq is the last sequence of a stream: how many requests were queued.
func (e *env) lastSeq(stream string) uint64 {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.bus.JS.Stream(ctx, stream)
	require.NoError(e.t, err)
	info, err := s.Info(ctx)
	require.NoError(e.t, err)
	return info.State.LastSeq
}

// audit reads every audit record of tenant.
func (e *env) audit(tenant string) []schemas.AuditRecord {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.bus.JS.Stream(ctx, schemas.StreamAudit)
	require.NoError(e.t, err)
	info, err := s.Info(ctx)
	require.NoError(e.t, err)
	var out []schemas.AuditRecord
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		msg, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(e.t, err)
		ev, err := schemas.Decode(msg.Data)
		require.NoError(e.t, err)
		if ev.Tenant != tenant {
			continue
		}
		var r schemas.AuditRecord
		require.NoError(e.t, ev.DecodeData(schemas.TypeAuditRecord, &r))
		out = append(out, r)
	}
	return out
}
