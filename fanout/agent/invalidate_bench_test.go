package agent

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/schemas"
)

// BenchmarkHandleLive is what every agent does when an invalidation of a
// secret arrives, before the next agent's turn on a shared host: drop the
// value and queue the rest for the ack loop (which this benchmark drains
// without running).
func BenchmarkHandleLive(b *testing.B) {
	a, err := New(&nats.Conn{}, nil, Config{Tenant: "acme", Instance: "bench", AckDelay: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	ev, err := schemas.NewEvent("rekeyd/fanout", schemas.TypeInvalidation, "acme", "acme/openai-key", schemas.Invalidation{
		Tenant: "acme", Secret: "openai-key", Kind: schemas.InvalidationRotated, Version: "v2", RequestID: "req-1", PublishedAt: time.Now().UTC(),
	})
	if err != nil {
		b.Fatal(err)
	}
	data, err := ev.Encode()
	if err != nil {
		b.Fatal(err)
	}
	m := &nats.Msg{Subject: schemas.InvalidateSubject("acme", "openai-key"), Data: data}
	b.ReportAllocs()
	for b.Loop() {
		a.handleMsg(m)
		a.ackMu.Lock()
		a.live = a.live[:0]
		a.ackMu.Unlock()
	}
	a.ackTimer.Stop()
}
