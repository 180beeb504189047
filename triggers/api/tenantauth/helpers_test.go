package tenantauth_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/api"
	"github.com/rekey-dev/rekey/triggers/api/tenantauth"
	"github.com/rekey-dev/rekey/triggers/triggertest"
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
	*triggertest.Env
	t     *testing.T
	state *orchestrator.State
	rekey *orchestrator.Config
	url   string
	// secrets are every token used, checked for leaks by checkNoLeaks.
	secrets []string
}

type reply = triggertest.Reply

// newEnv starts nats-server and the streams, builds the Service from the
// triggers.selfservice YAML, and serves the HTTP API with it.
func newEnv(t *testing.T, selfYAML string) *env {
	t.Helper()
	t.Setenv(hsKeyEnv, hsKey)
	te := triggertest.Start(t, triggertest.Options{Name: "selfservice-test", JSONLogs: true})
	state, err := orchestrator.NewState(context.Background(), te.Bus, 5*time.Second)
	require.NoError(t, err)
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)
	e := &env{Env: te, t: t, state: state, rekey: &rekey,
		secrets: []string{adminToken, acmeToken, globexToken, hsKey}}
	e.url = e.serve(selfYAML)
	return e
}

// serve starts one more HTTP API (a replica) on the same NATS.
func (e *env) serve(selfYAML string) string {
	t, log := e.t, e.Log
	t.Helper()
	cfg, err := tenantauth.ParseConfig([]byte(selfYAML), e.rekey)
	require.NoError(t, err)
	metrics := orchestrator.NewMetrics()
	svc, err := tenantauth.New(context.Background(), cfg, orchestrator.Deps{Rekey: e.rekey, Bus: e.Bus, Metrics: metrics, Log: log})
	require.NoError(t, err)
	api, err := api.New(api.Config{AdminToken: adminToken, IdempotencyTTL: cfg.IdempotencyTTL}, api.Deps{
		Deps:  orchestrator.Deps{Rekey: e.rekey, Bus: e.Bus, Audit: e.Auditor(), Metrics: metrics, Log: log},
		State: e.state, Tenants: svc, Limiter: svc})
	require.NoError(t, err)
	mux := http.NewServeMux()
	api.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL
}

// callAt calls the replica at base; its reply is scanned for leaks too.
func (e *env) callAt(base, method, path, token, body string, hdr map[string]string) reply {
	e.t.Helper()
	return e.Call(base, method, path, token, body, hdr)
}

func (e *env) call(method, path, token, body string, hdr map[string]string) reply {
	e.t.Helper()
	return e.Call(e.url, method, path, token, body, hdr)
}

// msgs reads every message of a stream.
func (e *env) msgs(stream string) []*jetstream.RawStreamMsg {
	e.t.Helper()
	return e.Messages(stream, "")
}

// rotations decodes the requests queued on REKEY_ROTATE.
func (e *env) rotations() []schemas.RotationRequested { e.t.Helper(); return e.Rotations() }

// audit reads every audit record of tenant.
func (e *env) audit(tenant string) []schemas.AuditRecord { e.t.Helper(); return e.Audits(tenant) }

// checkNoLeaks: no token or key is in a log line, a reply, an audit
// record, a queued request or the KV buckets.
func (e *env) checkNoLeaks() {
	e.t.Helper()
	e.RequireNoLeak(e.secrets, "KV_"+api.BucketIdempotency)
}
