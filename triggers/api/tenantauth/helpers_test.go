package tenantauth_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	"github.com/rekey-dev/rekey/triggers/api/tenantauth"
)

// Tokens of the tests. Each test that serves requests checks at the end
// that none reached a log, an audit record or a queued request.
const (
	adminToken  = "test-admin-token-0123456789"
	acmeToken   = "rk_tenant_acme_6f1c9e2b7a4d8e0f3c5a"
	globexToken = "rk_tenant_globex_0d8b3f6a2c9e1b7d4f5a"
	hsKey       = "hs256-test-key-3e9a1c7b5d2f8e6a0c4b9d7f"
	hsKeyEnv    = "REKEY_TEST_SELFSERVICE_JWT_KEY"
)

const rekeyYAML = `
tenants:
  acme:
    secrets:
      openai-key: {backend: local}
      billing-db: {backend: vault}
  globex:
    secrets:
      openai-key: {backend: local}
`

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// tokensYAML configures the two hashed tokens; jwt and more are appended.
func tokensYAML() string {
	return `
tokens:
  - {id: acme-ci, tenant: acme, sha256: ` + sha(acmeToken) + `}
  - {id: globex-ci, tenant: globex, sha256: ` + strings.ToUpper(sha(globexToken)) + `}
`
}

type env struct {
	t     *testing.T
	bus   *orchestrator.Bus
	state *orchestrator.State
	rekey *orchestrator.Config
	url   string
	logs  *testutil.SyncBuffer
	log   *slog.Logger
	// secrets are every token used, checked for leaks by checkNoLeaks.
	secrets []string
}

// newEnv starts nats-server and the streams, builds the Service from the
// triggers.selfservice YAML, and serves the HTTP API with it.
func newEnv(t *testing.T, selfYAML string) *env {
	t.Helper()
	t.Setenv(hsKeyEnv, hsKey)
	srv := testutil.StartNATS(t, -1, "")
	ctx := context.Background()
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bus, err := orchestrator.Connect(ctx, srv.ClientURL(), "selfservice-test", orchestrator.NATSConfig{}, log)
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	require.NoError(t, bus.EnsureStreams(ctx))
	state, err := orchestrator.NewState(ctx, bus, 5*time.Second)
	require.NoError(t, err)
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)
	e := &env{t: t, bus: bus, state: state, rekey: &rekey, logs: logs, log: log,
		secrets: []string{adminToken, acmeToken, globexToken, hsKey}}
	e.url = e.serve(selfYAML)
	return e
}

// serve starts one more HTTP API (a replica) on the same NATS.
func (e *env) serve(selfYAML string) string {
	t, log := e.t, e.log
	t.Helper()
	cfg, err := tenantauth.ParseConfig([]byte(selfYAML), e.rekey)
	require.NoError(t, err)
	metrics := orchestrator.NewMetrics()
	svc, err := tenantauth.New(context.Background(), cfg, orchestrator.Deps{Rekey: e.rekey, Bus: e.bus, Metrics: metrics, Log: log})
	require.NoError(t, err)
	api, err := api.New(api.Config{AdminToken: adminToken, IdempotencyTTL: cfg.IdempotencyTTL}, api.Deps{
		Deps:  orchestrator.Deps{Rekey: e.rekey, Bus: e.bus, Audit: orchestrator.NewAuditor(e.bus, "test", log), Metrics: metrics, Log: log},
		State: e.state, Tenants: svc, Limiter: svc})
	require.NoError(t, err)
	mux := http.NewServeMux()
	api.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL
}

type reply struct {
	code   int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (e *env) callAt(base, method, path, token, body string, hdr map[string]string) reply {
	e.t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
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
	e.logs.Write(b) // replies are scanned for leaks too
	return out
}

func (e *env) call(method, path, token, body string, hdr map[string]string) reply {
	e.t.Helper()
	return e.callAt(e.url, method, path, token, body, hdr)
}

// msgs reads every message of a stream.
func (e *env) msgs(stream string) []*jetstream.RawStreamMsg {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.bus.JS.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	require.NoError(e.t, err)
	info, err := s.Info(ctx)
	require.NoError(e.t, err)
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		msg, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(e.t, err)
		out = append(out, msg)
	}
	return out
}

// rotations decodes the requests queued on REKEY_ROTATE.
func (e *env) rotations() []schemas.RotationRequested {
	e.t.Helper()
	var out []schemas.RotationRequested
	for _, m := range e.msgs(schemas.StreamRotate) {
		ev, err := schemas.Decode(m.Data)
		require.NoError(e.t, err)
		var r schemas.RotationRequested
		require.NoError(e.t, ev.DecodeData(schemas.TypeRotationRequested, &r))
		out = append(out, r)
	}
	return out
}

// audit reads every audit record of tenant.
func (e *env) audit(tenant string) []schemas.AuditRecord {
	e.t.Helper()
	var out []schemas.AuditRecord
	for _, m := range e.msgs(schemas.StreamAudit) {
		ev, err := schemas.Decode(m.Data)
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

// checkNoLeaks: no token or key is in a log line, a reply, an audit
// record, a queued request or the KV buckets.
func (e *env) checkNoLeaks() {
	e.t.Helper()
	hay := e.logs.String()
	for _, stream := range []string{schemas.StreamRotate, schemas.StreamRevoke, schemas.StreamAudit,
		"KV_" + api.BucketIdempotency} {
		for _, m := range e.msgs(stream) {
			hay += m.Subject + string(m.Data)
			for k, v := range m.Header {
				hay += k + strings.Join(v, ",")
			}
		}
	}
	for _, s := range e.secrets {
		require.NotContains(e.t, hay, s, "a token or key leaked")
	}
}
