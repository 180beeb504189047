package sidecar_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// BenchmarkCachedRead reads one cached secret through each API over
// loopback with keep-alive (and in-process with agent.Get, for
// comparison), from GOMAXPROCS*4 concurrent clients; it reports reads/s
// and the p50/p99 latency seen by the client. Run:
//
//	go test -run '^$' -bench CachedRead -benchtime 3s ./fanout/sidecar/
func BenchmarkCachedRead(b *testing.B) {
	e := newEnv(b)
	body := `{"SecretId":"/tenants/acme/openai-key"}`
	sum := sha256.Sum256([]byte(body))
	hash := hex.EncodeToString(sum[:])
	signer := v4.NewSigner()
	creds := aws.Credentials{AccessKeyID: accessKeyID, SecretAccessKey: secretKey}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	read := func(req *http.Request) error {
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return io.ErrUnexpectedEOF
		}
		return nil
	}
	cases := []struct {
		name string
		do   func() error
	}{
		{"agent.Get", func() error { _, err := e.agent.Get(context.Background(), "openai-key"); return err }},
		{"rekey", func() error {
			req, _ := http.NewRequest("GET", e.rekey+"/v1/secrets/openai-key", nil)
			req.Header.Set("Authorization", "Bearer "+rekeyToken)
			return read(req)
		}},
		{"aws-agent", func() error {
			req, _ := http.NewRequest("GET", e.awsAgt+"/secretsmanager/get?secretId=%2Ftenants%2Facme%2Fopenai-key", nil)
			req.Header.Set("X-Aws-Parameters-Secrets-Token", awsAgentToken)
			return read(req)
		}},
		{"aws-api", func() error {
			req, _ := http.NewRequest("POST", e.awsAPI+"/", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/x-amz-json-1.1")
			req.Header.Set("X-Amz-Target", "secretsmanager.GetSecretValue")
			if err := signer.SignHTTP(context.Background(), creds, req, hash, "secretsmanager", "us-east-1", time.Now()); err != nil {
				return err
			}
			return read(req)
		}},
		{"vault", func() error {
			req, _ := http.NewRequest("GET", e.vault+"/v1/secret/data/tenants/acme/openai-key", nil)
			req.Header.Set("X-Vault-Token", vaultToken)
			return read(req)
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if err := c.do(); err != nil { // warm: cached from here on
				b.Fatal(err)
			}
			var mu sync.Mutex
			var all []time.Duration
			b.SetParallelism(4)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				lat := make([]time.Duration, 0, 1024)
				for pb.Next() {
					t0 := time.Now()
					if err := c.do(); err != nil {
						b.Error(err)
						return
					}
					lat = append(lat, time.Since(t0))
				}
				mu.Lock()
				all = append(all, lat...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(all)
			if len(all) > 0 {
				b.ReportMetric(float64(len(all))/elapsed.Seconds(), "reads/s")
				b.ReportMetric(float64(all[len(all)/2].Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds()), "p99-ns")
			}
		})
	}
}
