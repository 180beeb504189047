package api_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/api"
	"github.com/rekey-dev/rekey/triggers/triggertest"
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
	*triggertest.Env
	t     *testing.T
	bus   *orchestrator.Bus
	state *orchestrator.State
	rekey *orchestrator.Config
	api   *api.API
	mux   *http.ServeMux
	url   string
	logs  *testutil.SyncBuffer
}

type reply = triggertest.Reply

// newEnv starts nats-server and the streams, and serves the API on an
// httptest server. setup, if set, completes the API's dependencies (tenant
// tokens, deliveries) before it is built.
func newEnv(t *testing.T, natsCfg orchestrator.NATSConfig, setup func(*api.Deps)) *env {
	t.Helper()
	te := triggertest.Start(t, triggertest.Options{Name: "httpapi-test", NATS: natsCfg, JSONLogs: true})
	ctx := context.Background()
	state, err := orchestrator.NewState(ctx, te.Bus, 5*time.Second)
	require.NoError(t, err)
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)
	deps := api.Deps{Deps: orchestrator.Deps{Rekey: &rekey, Bus: te.Bus, Audit: te.Auditor(),
		Metrics: orchestrator.NewMetrics(), Log: te.Log}, State: state}
	if setup != nil {
		setup(&deps)
	}
	api, err := api.New(api.Config{AdminToken: adminToken, MaxBodyBytes: 4096}, deps)
	require.NoError(t, err)
	mux := http.NewServeMux()
	api.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return &env{Env: te, t: t, bus: te.Bus, state: state, rekey: &rekey, api: api, mux: mux, url: hs.URL, logs: te.Logs}
}

func (e *env) call(method, path, token, body string, hdr map[string]string) reply {
	e.t.Helper()
	return e.Call(e.url, method, path, token, body, hdr)
}

// lastSeq is the last sequence of a stream: how many requests were queued.
func (e *env) lastSeq(stream string) uint64 { e.t.Helper(); return e.LastSeq(stream) }

// audit reads every audit record of tenant.
func (e *env) audit(tenant string) []schemas.AuditRecord { e.t.Helper(); return e.Audits(tenant) }
