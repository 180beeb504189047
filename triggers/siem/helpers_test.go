package siem_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/siem"
	"github.com/rekey-dev/rekey/triggers/triggertest"
)

// The credentials of the test sources. A test at the end of each
// environment checks none of them reached a log, a reply, an event or an
// audit record.
const (
	hmacSecret   = "whsec-0c6f1b2e9a7d4f3c8e5a"
	hmacSecret2  = "whsec-rotated-5b8d2e0f7a1c9e4b"
	bearerToken  = "tok-3e9a1c7b5d2f8e6a0c4b"
	basicUser    = "splunk"
	basicPass    = "pw-7f2c9e1a4b6d8e0c3a5f"
	envSecretVar = "REKEY_TEST_SIEM_GENERIC_SECRET"
)

var secretValues = []string{hmacSecret, hmacSecret2, bearerToken, basicPass}

const rekeyYAML = `
tenants:
  acme:
    secrets:
      openai-key: {backend: local}
      stripe-key: {backend: local}
      db-password: {backend: local}
      decoy-key: {backend: local, policy: {canary: true}}
  globex:
    secrets:
      openai-key: {backend: local}
      db-password: {backend: local}
  initech:
    secrets:
      api-key: {backend: local}
`

// siemYAML has one source per format and authentication the tests use.
const siemYAML = `
dedup_window: 10m
sources:
  am-bearer:
    format: alertmanager
    tenants: [acme, globex]
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - name: tenant-compromised
        match: {alertname: TenantCompromised}
        tenant_label: tenant
        action: revoke
        min_severity: critical
      - name: leaked-credential
        match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
        min_severity: warning
  am-hmac:
    format: alertmanager
    tenants: [acme]
    auth:
      hmac:
        secret: ` + hmacSecret + `
        header: X-Hub-Signature-256
        prefix: "sha256="
    rules:
      - name: leaked-credential
        match_re: {alertname: "Leaked.*"}
        tenant_label: tenant
        secret_label: secret
  grafana-hmac:
    format: grafana
    tenants: [acme]
    auth:
      hmac:
        secret: ` + hmacSecret + `
        timestamp_header: X-Grafana-Alerting-Timestamp
        max_skew: 5m
    rules:
      - name: payments-key-misuse
        match: {team: payments}
        tenant_label: tenant
        secrets: [stripe-key]
        min_severity: warning
  grafana-basic:
    format: grafana
    tenants: [acme]
    auth:
      basic: {username: grafana, password: ` + basicPass + `}
    rules:
      - match: {team: payments}
        tenant: acme
        secrets: [stripe-key]
  splunk-basic:
    format: splunk
    tenants: [globex]
    auth:
      basic: {username: ` + basicUser + `, password: ` + basicPass + `}
    rules:
      - name: db-brute-force
        match: {search_name: DB credential brute force}
        tenant_label: tenant
        secret_label: credential
        min_severity: error
  splunk-bearer:
    format: splunk
    tenants: [globex]
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - match: {app: search}
        tenant_label: tenant
        secret_label: credential
  datadog-bearer:
    format: datadog
    tenants: [globex]
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - name: token-replay
        match: {service: agents}
        tenant_label: tenant
        action: revoke
        min_severity: critical
  datadog-hmac:
    format: datadog
    tenants: [globex]
    auth:
      hmac:
        secret: ` + hmacSecret + `
        header: X-Signature
        encoding: base64
    rules:
      - match: {service: agents}
        tenant_label: tenant
        all_secrets: true
  pd-hmac:
    format: pagerduty
    tenants: [acme]
    auth:
      hmac: {secret: ` + hmacSecret + `}
    rules:
      - name: card-testing
        match: {service: acme-payments}
        tenant: acme
        secrets: [stripe-key]
        min_severity: error
  generic-hmac:
    format: generic
    tenants: [acme]
    auth:
      hmac:
        secret_env: ` + envSecretVar + `
        header: X-Signature-256
        prefix: "sha256="
    generic:
      alerts: detections
      id: uuid
      name: title
      status: state
      resolved: [closed]
      severity: level
      labels: {tenant: target.tenant, secret: target.credential}
      labels_from: tags
    rules:
      - name: swept
        match: {env: prod}
        tenant_label: tenant
        secret_label: secret
        min_severity: error
  capped:
    format: alertmanager
    tenants: [acme]
    max_alerts: 3
    rate_limit: {per_second: 0.01, burst: 5}
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
  limited:
    format: alertmanager
    tenants: [acme]
    rate_limit: {per_second: 0.01, burst: 2}
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
  small:
    format: alertmanager
    tenants: [acme]
    max_body_bytes: 1024
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
  stamped:
    format: alertmanager
    tenants: [acme]
    dedup_window: 2s
    require_timestamp: true
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
  short-window:
    format: alertmanager
    tenants: [acme]
    dedup_window: 2s
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
`

type env struct {
	*triggertest.Env
	t     *testing.T
	bus   *orchestrator.Bus
	rekey *orchestrator.Config
	cfg   siem.Config
	logs  *testutil.SyncBuffer
	url   string
	// bodies are every reply body, checked for secrets at the end.
	bodies *testutil.SyncBuffer
}

// newEnv starts nats-server, the streams and an HTTP server with the
// handler. dupWindow is JetStream's duplicate window (0: the default).
func newEnv(t *testing.T, dupWindow time.Duration) *env {
	t.Helper()
	t.Setenv(envSecretVar, hmacSecret)
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)
	cfg, err := siem.ParseConfig([]byte(siemYAML), &rekey)
	require.NoError(t, err)

	te := triggertest.Start(t, triggertest.Options{Name: "siem-test", NATS: orchestrator.NATSConfig{DuplicateWindow: dupWindow}})
	e := &env{Env: te, t: t, bus: te.Bus, rekey: &rekey, cfg: cfg, logs: te.Logs, bodies: te.Replies}
	e.url = e.serve()
	t.Cleanup(e.checkNoSecrets)
	return e
}

// serve starts another handler (a restart, or another replica) on the
// same bus and returns its base URL.
func (e *env) serve() string {
	e.t.Helper()
	h, err := siem.New(e.cfg, orchestrator.Deps{Rekey: e.rekey, Bus: e.bus, Audit: e.Auditor(), Metrics: orchestrator.NewMetrics(), Log: e.Log})
	require.NoError(e.t, err)
	mux := http.NewServeMux()
	h.Register(mux)
	hs := httptest.NewServer(mux)
	e.t.Cleanup(hs.Close)
	return hs.URL
}

// signer adds a source's credentials to a request for body.
type signer func(r *http.Request, body []byte)

func bearer(tok string) signer {
	return func(r *http.Request, _ []byte) { r.Header.Set("Authorization", "Bearer "+tok) }
}

func basic(user, pass string) signer {
	return func(r *http.Request, _ []byte) { r.SetBasicAuth(user, pass) }
}

func hmacHeader(header, prefix, secret string) signer {
	return func(r *http.Request, body []byte) {
		r.Header.Set(header, prefix+siem.SignHMAC([]byte(secret), body))
	}
}

func hmacBase64(header, secret string) signer {
	return func(r *http.Request, body []byte) {
		raw, _ := hex.DecodeString(siem.SignHMAC([]byte(secret), body))
		r.Header.Set(header, base64.StdEncoding.EncodeToString(raw))
	}
}

// grafanaSigned signs "<ts>:<body>" with a timestamp age ago.
func grafanaSigned(secret string, age time.Duration) signer {
	return func(r *http.Request, body []byte) {
		ts := strconv.FormatInt(time.Now().Add(-age).Unix(), 10)
		r.Header.Set("X-Grafana-Alerting-Timestamp", ts)
		r.Header.Set("X-Grafana-Alerting-Signature", siem.SignHMACTimestamp([]byte(secret), ts, body))
	}
}

func pdSigned(secrets ...string) signer {
	return func(r *http.Request, body []byte) {
		v := ""
		for i, s := range secrets {
			if i > 0 {
				v += ","
			}
			v += "v1=" + siem.SignHMAC([]byte(s), body)
		}
		r.Header.Set("X-PagerDuty-Signature", v)
	}
}

func noAuth(*http.Request, []byte) {}

// post sends body to source and decodes the reply.
func (e *env) post(base, source string, body []byte, sign signer) (int, http.Header, siem.Response) {
	e.t.Helper()
	code, h, out, err := e.tryPost(base, source, body, sign)
	require.NoError(e.t, err)
	return code, h, out
}

// tryPost is post without require, for goroutines of a test: it returns
// what went wrong instead of failing the test.
func (e *env) tryPost(base, source string, body []byte, sign signer) (int, http.Header, siem.Response, error) {
	var out siem.Response
	req, err := http.NewRequest(http.MethodPost, base+"/v1/hooks/"+source, bytes.NewReader(body))
	if err != nil {
		return 0, nil, out, err
	}
	req.Header.Set("Content-Type", "application/json")
	sign(req, body)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, out, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, nil, out, err
	}
	_, _ = e.bodies.Write(raw)
	if err := json.Unmarshal(raw, &out); err != nil {
		return 0, nil, out, fmt.Errorf("reply %s: %w", raw, err)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		return 0, nil, out, fmt.Errorf("reply Content-Type %q, want application/json", ct)
	}
	return res.StatusCode, res.Header, out, nil
}

func load(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return b
}

// events returns every message of a stream, decoded.
func (e *env) events(stream string) []schemas.Event { e.t.Helper(); return e.Events(stream, "") }

func (e *env) rotations() []schemas.RotationRequested { e.t.Helper(); return e.Rotations() }

func (e *env) revocations() []schemas.RevocationRequested { e.t.Helper(); return e.Revocations() }

func (e *env) audits() []schemas.AuditRecord { e.t.Helper(); return e.Audits("") }

// checkNoSecrets greps logs, replies and every stream for the credentials.
func (e *env) checkNoSecrets() { e.RequireNoLeak(secretValues) }

// alertmanager returns an Alertmanager v4 payload with one firing alert.
func alertmanager(fingerprint string, labels map[string]string) []byte {
	b, _ := json.Marshal(map[string]any{
		"version": "4", "status": "firing", "receiver": "rekey", "groupKey": "{}:{}",
		"alerts": []map[string]any{{"status": "firing", "labels": labels, "fingerprint": fingerprint,
			"startsAt": "2026-03-02T08:14:05Z", "endsAt": "0001-01-01T00:00:00Z"}},
	})
	return b
}
