package siem_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/siem"
)

// BenchmarkWebhookAlertmanager sends signed Alertmanager payloads through
// the handler (no HTTP socket: the mux is called directly) to an embedded
// JetStream: authenticate, parse, match, dedup lookup, publish, audit.
// Each iteration is a new alert (a new fingerprint), so every one is
// published; "duplicate" sends one alert again and again, which the
// in-memory dedup answers. No assertion on speed.
func BenchmarkWebhookAlertmanager(b *testing.B) {
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := siem.ParseConfig([]byte(`
sources:
  prod-am:
    format: alertmanager
    tenants: [acme]
    rate_limit: {per_second: 10000, burst: 100000}
    auth:
      hmac: {secret: `+hmacSecret+`, header: X-Hub-Signature-256, prefix: "sha256="}
    rules:
      - match: {alertname: LeakedCredential}
        tenant_label: tenant
        secret_label: secret
`), &rekey)
	if err != nil {
		b.Fatal(err)
	}
	srv := testutil.StartNATS(b, -1, "")
	log := slog.New(slog.DiscardHandler)
	bus, err := orchestrator.Connect(context.Background(), srv.ClientURL(), "siem-bench", orchestrator.NATSConfig{}, log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(bus.Close)
	if err := bus.EnsureStreams(context.Background()); err != nil {
		b.Fatal(err)
	}
	h, err := siem.New(cfg, orchestrator.Deps{Rekey: &rekey, Bus: bus, Audit: orchestrator.NewAuditor(bus, "bench", log), Metrics: orchestrator.NewMetrics(), Log: log})
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	labels := map[string]string{"alertname": "LeakedCredential", "tenant": "acme", "secret": "openai-key", "severity": "critical", "env": "prod"}

	send := func(b *testing.B, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/hooks/prod-am", bytes.NewReader(body))
		req.Header.Set("X-Hub-Signature-256", "sha256="+siem.SignHMAC([]byte(hmacSecret), body))
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
	n := 0 // fingerprints stay new across the rounds b.Run makes
	b.Run("new-alert", func(b *testing.B) {
		bodies := make([][]byte, b.N)
		for i := range bodies {
			n++
			bodies[i] = alertmanager(fmt.Sprintf("%016x", n), labels)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			send(b, bodies[i])
		}
	})
	b.Run("duplicate", func(b *testing.B) {
		body := alertmanager("ffffffffffffffff", labels)
		send(b, body)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			send(b, body)
		}
	})
}
