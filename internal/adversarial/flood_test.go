package adversarial_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

// TestFloodFromOneTenant: an acme agent floods every subject it may
// publish to (use reports, acks, presence, fetches, resyncs) while globex
// rotates and its agent fetches. globex's work completes and nothing of
// globex is touched by the flood. (How much the flood delays globex is a
// benchmark, internal/bench, not an assertion here.)
func TestFloodFromOneTenant(t *testing.T) {
	r := newRig(t)
	r.rotate("globex", "openai-key")
	before := r.quiet()
	att := r.agentConn("acme")
	globex := r.agentConn("globex")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	sent := 0
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			inst := fmt.Sprintf("flood-%d", i%500)
			body := []byte(fmt.Sprintf(`{"specversion":"1.0","id":"x%d","type":"rekey.usage.report.v1","data":{"count":1000000}}`, i))
			_ = att.Publish(schemas.UsedSubject("acme", "openai-key", inst), body)
			_ = att.Publish(schemas.AckSubject("acme", "openai-key", inst), body)
			_ = att.Publish(schemas.PresenceSubject("acme", inst), body)
			_ = att.PublishRequest(schemas.FetchSubject("acme", "openai-key"), schemas.AgentInboxPrefix("acme")+".x", nil)
			_ = att.PublishRequest(schemas.ResyncSubject("acme", "openai-key"), schemas.AgentInboxPrefix("acme")+".x", nil)
			sent += 5
		}
	}()

	// globex's rotation goes through and its agent is served meanwhile.
	r.rotate("globex", "openai-key")
	r.rotate("globex", "billing-db")
	got := r.fetch(globex, "openai-key")
	require.Equal(t, r.currentVersion("globex", "openai-key"), got.Version)
	close(stop)
	wg.Wait()
	t.Logf("acme's agent sent %d messages during globex's two rotations", sent)

	// Nothing of globex changed but what its own rotations wrote.
	after := r.quiet()
	require.Empty(t, r.changed(before, after, map[string]func(jetstream.RawStreamMsg) bool{
		schemas.UsageStream("acme"): prefix("rekey.used.acme."),
		schemas.StreamAudit:         func(m jetstream.RawStreamMsg) bool { return auditBy("acme")(m) || auditBy("globex")(m) },
		schemas.StreamEvents:        prefix("rekey.events.globex."),
		schemas.StreamInvalidate:    prefix("rekey.invalidate.globex."),
		schemas.StreamRotate:        prefix("rekey.rotate.globex."),
		"KV_rekey_status":           prefix("$KV.rekey_status.globex."),
		"KV_rekey_local":            prefix("$KV.rekey_local.globex."),
		"KV_rekey_locks":            prefix("$KV.rekey_locks.rotate.globex."),
		// A delivery of globex's rotation that failed (on a loaded machine,
		// one that outlived its ack wait) is counted here, under a hash of
		// its request id; agents cannot write this bucket at all.
		"KV_rekey_failures": func(jetstream.RawStreamMsg) bool { return true },
	}))
	require.False(t, r.revoked("globex"))
	require.Empty(t, r.scan())
}

// prefix allows new messages whose subject starts with p.
func prefix(p string) func(jetstream.RawStreamMsg) bool {
	return func(m jetstream.RawStreamMsg) bool { return strings.HasPrefix(m.Subject, p) }
}
