package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/siem"
)

const benchHookSecret = "bench-webhook-hmac-secret-0123456789"

// WebhookResult is what `rekeyctl bench webhook` prints.
type WebhookResult struct {
	Clients   int
	Duration  time.Duration
	Accepted  int64
	Other     map[int]int64
	ToDropped []time.Duration // webhook accepted (202) -> every agent dropped
	Agents    int
}

// alertmanagerPayload is a firing Alertmanager webhook (v4) for one alert.
func alertmanagerPayload(fingerprint, tenant, secret string) []byte {
	b, _ := json.Marshal(map[string]any{
		"version": "4", "status": "firing", "receiver": "rekey", "groupKey": "{}:{alertname=\"LeakedCredential\"}",
		"groupLabels": map[string]string{"alertname": "LeakedCredential"},
		"alerts": []map[string]any{{
			"status":      "firing",
			"labels":      map[string]string{"alertname": "LeakedCredential", "severity": "critical", "tenant": tenant, "secret": secret},
			"annotations": map[string]string{"summary": "credential seen in a public paste"},
			"startsAt":    time.Now().UTC().Format(time.RFC3339), "endsAt": "0001-01-01T00:00:00Z",
			"fingerprint": fingerprint,
		}},
	})
	return b
}

// Webhook starts rekeyd with a signed Alertmanager source and measures
// (1) accepted webhooks per second from clients concurrent clients on
// loopback for d, every alert distinct, and (2) one alert at a time, the
// time from the 202 to every one of agents having dropped the old value.
func Webhook(ctx context.Context, clients int, d time.Duration, samples, agents int, log *slog.Logger) (WebhookResult, error) {
	res := WebhookResult{Clients: clients, Duration: d, Other: map[int]int64{}, Agents: agents}
	if err := os.Setenv("REKEY_BENCH_HOOK_SECRET", benchHookSecret); err != nil {
		return res, err
	}
	raw := []byte(`
sources:
  bench-am:
    format: alertmanager
    tenants: [acme]
    auth: {hmac: {secret_env: REKEY_BENCH_HOOK_SECRET, header: X-Signature, prefix: "sha256="}}
    rate_limit: {per_second: 10000, burst: 100000}
    rules:
      - {match: {alertname: LeakedCredential}, tenant_label: tenant, secret_label: secret, min_severity: warning}
`)
	c, err := demo.StartCluster(ctx, log, func(cfg *orchestrator.Config) {
		cfg.Rotation.MinInterval = 0
		cfg.HTTP.WriteTimeout = time.Minute
		if cfg.Triggers == nil {
			cfg.Triggers = map[string]yaml.RawMessage{}
		}
		cfg.Triggers["siem"] = raw
	})
	if err != nil {
		return res, err
	}
	defer c.Close()
	url := "http://" + c.Daemon.HTTPAddr() + "/v1/hooks/bench-am"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}, Timeout: 30 * time.Second}
	post := func(body []byte) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Signature", "sha256="+siem.SignHMAC([]byte(benchHookSecret), body))
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	// (1) Throughput: distinct alerts, so none is deduplicated.
	var seq, accepted atomic.Int64
	var mu sync.Mutex
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				n := seq.Add(1)
				code, err := post(alertmanagerPayload(fmt.Sprintf("tp-%d", n), "acme", "openai-key"))
				if err == nil && code == http.StatusAccepted {
					accepted.Add(1)
					continue
				}
				mu.Lock()
				res.Other[code]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Accepted = accepted.Load()

	// Let the rotations of the storm settle before measuring latency.
	if err := c.WaitIdle(ctx, "acme", "billing-db", 60*time.Second); err != nil {
		return res, err
	}
	for i := 0; i < agents; i++ {
		a, err := c.NewAgent(ctx, "acme", fmt.Sprintf("hook-agent-%03d", i))
		if err != nil {
			return res, err
		}
		if _, err := a.Get(ctx, "billing-db"); err != nil {
			return res, err
		}
	}
	// (2) Latency: one alert at a time on billing-db.
	for i := 0; i < samples; i++ {
		before, err := c.Daemon.State().SecretStatus(ctx, "acme", "billing-db")
		if err != nil {
			return res, err
		}
		code, err := post(alertmanagerPayload(fmt.Sprintf("lat-%d", i), "acme", "billing-db"))
		accepted := time.Now()
		if err != nil || code != http.StatusAccepted {
			return res, fmt.Errorf("latency sample %d: status %d: %v", i, code, err)
		}
		last, err := c.WaitVersionDropped(ctx, "billing-db", before.Version, agents, 30*time.Second)
		if err != nil {
			return res, err
		}
		res.ToDropped = append(res.ToDropped, last.Sub(accepted))
	}
	return res, nil
}

// Print writes the result as a table.
func (r WebhookResult) Print(w io.Writer) {
	fmt.Fprintf(w, "SIEM webhooks: signed Alertmanager payloads over loopback HTTP to one rekeyd (embedded NATS, local backend)\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clients\tduration\taccepted (202)\taccepted/s\tother replies\t")
	fmt.Fprintf(tw, "%d\t%s\t%d\t%.0f\t%v\t\n", r.Clients, r.Duration, r.Accepted, float64(r.Accepted)/r.Duration.Seconds(), r.Other)
	tw.Flush()
	s := SortDurations(append([]time.Duration(nil), r.ToDropped...))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "measure\tsamples\tp50\tp99\tmax\t")
	fmt.Fprintf(tw, "webhook accepted -> all %d agents dropped\t%d\t%s\t%s\t%s\t\n", r.Agents, len(s), demo.Millis(Percentile(s, 50)), demo.Millis(Percentile(s, 99)), demo.Millis(Percentile(s, 100)))
	tw.Flush()
}
