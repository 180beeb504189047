package api_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/api"
)

// serveWith serves a second API on e's bus with cfg's caps, and the
// storage gate g (nil: none).
func serveWith(t *testing.T, e *env, cfg api.Config, g api.StorageGate) string {
	t.Helper()
	cfg.AdminToken = adminToken
	log := slog.New(slog.NewJSONHandler(e.logs, nil))
	deps := api.Deps{Deps: orchestrator.Deps{Rekey: e.rekey, Bus: e.bus, Audit: orchestrator.NewAuditor(e.bus, "test", log),
		Metrics: orchestrator.NewMetrics(), Log: log}, State: e.state}
	if g != nil {
		deps.Storage = g
	}
	api, err := api.New(cfg, deps)
	require.NoError(t, err)
	mux := http.NewServeMux()
	api.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL
}

func post(t *testing.T, url, body string) (int, http.Header) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// TestQueuedRequestsAreCapped: beyond queued_per_secret (and then
// queued_per_tenant) requests waiting in ROTATE, a rotation request gets
// 429 with Retry-After, is audited, and nothing is queued; another tenant
// is not affected.
func TestQueuedRequestsAreCapped(t *testing.T) {
	e := newEnv(t, orchestrator.NATSConfig{}, nil)
	url := serveWith(t, e, api.Config{QueuedPerTenant: 8, QueuedPerSecret: 5}, nil)
	rot := func(tenant, secret string) string {
		return url + "/v1/tenants/" + tenant + "/secrets/" + secret + "/rotate"
	}
	for i := range 5 {
		code, _ := post(t, rot("acme", "openai-key"), "")
		require.Equal(t, http.StatusAccepted, code, "request %d", i)
	}
	code, hdr := post(t, rot("acme", "openai-key"), "")
	require.Equal(t, http.StatusTooManyRequests, code)
	require.Equal(t, "1", hdr.Get("Retry-After"))
	require.EqualValues(t, 5, e.lastSeq(schemas.StreamRotate), "the refused request was not queued")

	for i := range 3 {
		code, _ := post(t, rot("acme", "billing-db"), "")
		require.Equal(t, http.StatusAccepted, code, "request %d", i)
	}
	code, _ = post(t, rot("acme", "billing-db"), "")
	require.Equal(t, http.StatusTooManyRequests, code, "the tenant's cap (8) holds across its secrets")
	require.EqualValues(t, 8, e.lastSeq(schemas.StreamRotate))

	code, _ = post(t, rot("globex", "openai-key"), "")
	require.Equal(t, http.StatusAccepted, code, "another tenant is not capped by acme's queue")

	limited := 0
	for _, r := range e.audit("acme") {
		if r.Outcome == schemas.OutcomeRateLimited {
			limited++
		}
	}
	require.Equal(t, 2, limited, "each 429 is audited")
}

type fullGate struct{ stream string }

func (g fullGate) Refuses(string) (string, bool) { return g.stream, true }

// TestStorageFullRefuses: while the audit stream is full, requests get
// 503 with Retry-After and nothing is queued.
func TestStorageFullRefuses(t *testing.T) {
	e := newEnv(t, orchestrator.NATSConfig{}, nil)
	url := serveWith(t, e, api.Config{}, fullGate{schemas.StreamAudit})
	code, hdr := post(t, url+"/v1/tenants/acme/secrets/openai-key/rotate", "")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.NotEmpty(t, hdr.Get("Retry-After"))
	code, _ = post(t, url+"/v1/tenants/acme/revoke", "")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.EqualValues(t, 0, e.lastSeq(schemas.StreamRotate))
	require.EqualValues(t, 0, e.lastSeq(schemas.StreamRevoke))
}

// TestFloodIsBounded floods the API (nothing consumes) with ROTATE
// limited to 1 MiB and the storage monitor running: the stream stays
// within its limit, every request answered 202 is in the stream (nothing
// accepted is dropped), and the others got 503 or 429, never a 5xx
// without a Retry-After.
func TestFloodIsBounded(t *testing.T) {
	lim := orchestrator.DefaultLimits()
	lim.Rotate.MaxBytes = 1 << 20
	lim.WarnAt, lim.FullAt = 0.5, 0.8
	e := newEnv(t, orchestrator.NATSConfig{Limits: lim}, nil)
	metrics := orchestrator.NewMetrics()
	mon := orchestrator.NewStorageMonitor(e.bus, lim, metrics, 20*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = mon.Run(ctx) }()
	url := serveWith(t, e, api.Config{QueuedPerTenant: 1 << 20, QueuedPerSecret: 1 << 20}, mon)

	reason := strings.Repeat("r", 400) // about 1 KiB per stored request
	var accepted, refused, other atomic.Int64
	var wg sync.WaitGroup
	for c := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 250 {
				// Do, not post: require only on the test's goroutine.
				r, err := e.Do(url, http.MethodPost, "/v1/tenants/acme/secrets/openai-key/rotate", adminToken, fmt.Sprintf(`{"reason":"%d-%d %s"}`, c, i, reason), nil)
				switch {
				case err != nil:
					t.Errorf("flood request: %v", err)
					other.Add(1)
				case r.Code == http.StatusAccepted:
					accepted.Add(1)
				case (r.Code == http.StatusServiceUnavailable || r.Code == http.StatusTooManyRequests) && r.Header.Get("Retry-After") != "":
					refused.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("flood of 2000: %d accepted, %d refused", accepted.Load(), refused.Load())
	require.Zero(t, other.Load(), "every refusal is a 503 or 429 with Retry-After")
	require.Positive(t, refused.Load(), "the flood reached the limit")

	s, err := e.bus.JS.Stream(ctx, schemas.StreamRotate)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.LessOrEqual(t, info.State.Bytes, uint64(lim.Rotate.MaxBytes), "the stream stays within max_bytes")
	require.EqualValues(t, accepted.Load(), info.State.Msgs, "every accepted request is still queued: none was dropped")
	require.EqualValues(t, info.State.Msgs, info.State.LastSeq, "nothing was discarded from the stream")
	require.NoError(t, mon.Check(ctx))
	require.True(t, mon.Full(schemas.StreamRotate))
}

// TestInputGaps: trailing data, invalid UTF-8 in reason, a wrong type, an
// unknown field, over-long headers and a body that does not arrive.
func TestInputGaps(t *testing.T) {
	e := newEnv(t, orchestrator.NATSConfig{}, nil)
	rot := "/v1/tenants/acme/secrets/openai-key/rotate"
	for _, tc := range []struct {
		name, body string
		hdr        map[string]string
		code       int
		field      string
	}{
		{"data after the JSON value", `{"reason":"a"} {"reason":"b"}`, nil, 400, "body"},
		{"garbage after the JSON value", `{"reason":"a"}x`, nil, 400, "body"},
		{"invalid UTF-8 in reason", "{\"reason\":\"bad \xff\xfe\"}", nil, 400, "reason"},
		{"lone surrogate in reason", `{"reason":"bad \udc00"}`, nil, 400, "reason"},
		{"reason of the wrong type", `{"reason":42}`, nil, 400, "reason"},
		{"unknown field", `{"reason":"a","force":true}`, nil, 400, "force"},
		{"not an object", `[1,2]`, nil, 400, "body"},
		{"over-long Idempotency-Key", "", map[string]string{"Idempotency-Key": strings.Repeat("k", 201)}, 431, "Idempotency-Key"},
		{"over-long Authorization", "", map[string]string{"Authorization": "Bearer " + strings.Repeat("t", 5000)}, 431, "Authorization"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.lastSeq(schemas.StreamRotate)
			r := e.call("POST", rot, adminToken, tc.body, tc.hdr)
			require.Equal(t, tc.code, r.Code, "body %s", r.Raw)
			require.Equal(t, tc.field, r.Body["field"], "body %s", r.Raw)
			require.Equal(t, before, e.lastSeq(schemas.StreamRotate), "nothing queued")
		})
	}

	t.Run("headers over the server's limit", func(t *testing.T) {
		hs := httptest.NewUnstartedServer(e.mux)
		hs.Config.MaxHeaderBytes = 4 << 10
		hs.Start()
		defer hs.Close()
		req, err := http.NewRequest("POST", hs.URL+rot, nil)
		require.NoError(t, err)
		req.Header.Set("X-Padding", strings.Repeat("p", 16<<10))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	})

	t.Run("slow body", func(t *testing.T) {
		hs := httptest.NewUnstartedServer(e.mux)
		hs.Config.ReadTimeout = 300 * time.Millisecond
		hs.Start()
		defer hs.Close()
		before := e.lastSeq(schemas.StreamRotate)
		conn, err := net.Dial("tcp", hs.Listener.Addr().String())
		require.NoError(t, err)
		defer conn.Close()
		_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"reason\":", rot, adminToken)
		require.NoError(t, err)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err, "an answer, not a closed connection")
		resp.Body.Close()
		require.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
		require.Equal(t, before, e.lastSeq(schemas.StreamRotate), "nothing queued")
	})
}
