package vaultevents_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// BenchmarkVaultEventDelivery measures how many of b.N KV writes Vault's
// event stream (1.14, events.alpha1) delivers to one fast subscriber:
// the reason the trigger resyncs every resync_every, not only after a
// reconnect. `go test -run XXX -bench VaultEventDelivery -benchtime 500x
// ./triggers/vaultevents/` prints delivered/op.
func BenchmarkVaultEventDelivery(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mount := fmt.Sprintf("bench%d", mounts.Add(1))
	client := vaultServer.Client
	if err := client.Sys().MountWithContext(ctx, mount, mountInput()); err != nil {
		b.Fatal(err)
	}
	u := strings.Replace(vaultServer.Addr, "http", "ws", 1) + "/v1/sys/events/subscribe/kv-v2/*?json=true"
	c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"X-Vault-Token": {vaultServer.RootToken}}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	got := make(chan struct{}, b.N+16)
	go func() {
		for {
			if _, _, err := c.Read(ctx); err != nil {
				return
			}
			got <- struct{}{}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := client.Logical().WriteWithContext(ctx, fmt.Sprintf("%s/data/p%d", mount, i%3), map[string]any{"data": map[string]any{"v": i}}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	n := 0
	for timeout := time.After(5 * time.Second); n < b.N; {
		select {
		case <-got:
			n++
		case <-timeout:
			b.ReportMetric(float64(n)/float64(b.N), "delivered/op")
			return
		}
	}
	b.ReportMetric(1, "delivered/op")
}
