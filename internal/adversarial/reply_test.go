package adversarial_test

import (
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/local"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// injectionTargets are subjects an attacker would like rekeyd (or the
// NATS server acting for it: JetStream acks, direct gets) to publish to:
// stored state of both tenants, request and announcement subjects, the
// JetStream API, other inboxes.
var injectionTargets = []string{
	"$KV." + orchestrator.BucketTenants + ".acme",
	"$KV." + orchestrator.BucketTenants + ".globex",
	"$KV." + local.DefaultBucket + ".globex.openai-key",
	"$KV." + local.DefaultBucket + ".acme.openai-key",
	"$KV." + orchestrator.BucketStatus + ".globex.openai-key",
	"$KV." + orchestrator.BucketLocks + ".globex.openai-key",
	schemas.InvalidateSubject("globex", "openai-key"),
	schemas.InvalidateSubject("globex", schemas.TenantToken),
	schemas.InvalidateSubject("acme", schemas.TenantToken),
	schemas.RotateSubject("globex", "openai-key"),
	schemas.RevokeSubject("globex"),
	schemas.AuditSubject("acme"),
	schemas.EventsSubject("globex", schemas.KindRotationCompleted),
	schemas.UsedSubject("globex", "openai-key", "planner-1"),
	schemas.AckSubject("globex", "openai-key", "planner-1"),
	"$JS.API.STREAM.PURGE." + schemas.StreamRotate,
	"$JS.API.STREAM.DELETE." + schemas.StreamAudit,
	"$JS.API.STREAM.DELETE.KV_" + orchestrator.BucketTenants,
	schemas.AgentInboxPrefix("globex") + ".stolen",
	orchestrator.RoleInboxPrefix(orchestrator.RoleWorkers) + ".stolen",
}

// TestReplySubjectInjection: an acme agent publishes on every subject its
// credentials allow, naming as reply subject every target above, so that
// whoever answers (the fetch server, JetStream's publish acknowledgement,
// a direct get) would write there as rekeyd. Nothing may arrive on any
// target, and no stream or bucket of any tenant may change; the only
// writes allowed are acme's own use reports and audit records about acme.
func TestReplySubjectInjection(t *testing.T) {
	r := newRig(t)
	r.rotate("acme", "openai-key")
	r.rotate("globex", "openai-key")
	r.rotate("globex", "billing-db")
	r.fetch(r.agentConn("globex"), "openai-key") // a value the attacker must never see stored anywhere
	att := r.agentConn("acme")
	r.fetch(att, "openai-key")

	// Live listeners on every target. On an audit subject, rekeyd's own
	// audit records (it audits refused agent input) are expected; anything
	// else there is an injection.
	var arrived atomic.Int64
	var mu sync.Mutex
	var got []string
	for _, target := range injectionTargets {
		sub, err := r.admin.Subscribe(target, func(m *nats.Msg) {
			if m.Subject == schemas.AuditSubject("acme") && auditBy("acme")(jetstream.RawStreamMsg{Subject: m.Subject, Data: m.Data}) {
				return
			}
			arrived.Add(1)
			mu.Lock()
			got = append(got, m.Subject)
			mu.Unlock()
		})
		require.NoError(t, err)
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	require.NoError(t, r.admin.Flush())

	usage, _ := json.Marshal(map[string]any{"specversion": "1.0"})
	sources := map[string][]byte{
		schemas.FetchSubject("acme", "openai-key"):                                                                      []byte(`{"agent":"attacker-1"}`),
		schemas.UsedSubject("acme", "openai-key", "attacker-1"):                                                         usage,
		schemas.AckSubject("acme", "openai-key", "attacker-1"):                                                          []byte(`{}`),
		schemas.PresenceSubject("acme", "attacker-1"):                                                                   []byte(`{}`),
		schemas.ResyncSubject("acme", "openai-key"):                                                                     nil,
		schemas.ResyncSubject("acme", schemas.TenantToken):                                                              nil,
		"$JS.API.DIRECT.GET." + schemas.StreamInvalidate + "." + schemas.InvalidateSubject("acme", "openai-key"):        nil,
		"$JS.API.DIRECT.GET." + schemas.StreamInvalidate + "." + schemas.InvalidateSubject("acme", schemas.TenantToken): nil,
	}
	refusedBefore := r.d.FetchServer().Refused() + r.d.ResyncServer().Refused()
	before := r.quiet()
	for source, body := range sources {
		for _, target := range injectionTargets {
			require.NoError(t, att.PublishMsg(&nats.Msg{Subject: source, Reply: target, Data: body}))
		}
	}
	settle(t, att.Conn)
	// Every request reached its server before anything is compared (on a
	// loaded machine the servers may lag the settle pause).
	want := int64(3 * len(injectionTargets))
	require.Eventually(t, func() bool {
		return r.d.FetchServer().Refused()+r.d.ResyncServer().Refused()-refusedBefore >= want
	}, 15*time.Second, 10*time.Millisecond)
	after := r.snapshot()
	allowed := map[string]func(jetstream.RawStreamMsg) bool{
		schemas.UsageStream("acme"): func(m jetstream.RawStreamMsg) bool { return strings.HasPrefix(m.Subject, "rekey.used.acme.") },
		schemas.StreamAudit:         auditBy("acme"),
	}
	require.Empty(t, r.changed(before, after, allowed), "stored state changed by reply injection")
	mu.Lock()
	require.Zero(t, arrived.Load(), "messages reached injection targets: %v", got)
	mu.Unlock()
	require.Equal(t, int64(3*len(injectionTargets)), r.d.FetchServer().Refused()+r.d.ResyncServer().Refused()-refusedBefore,
		"the fetch and resync servers refuse (and count) every request whose reply is not the tenant's inbox")
	// Agents have no JetStream API: the direct gets were refused by the server.
	require.NotEmpty(t, att.violations())

	// The tenants are unharmed: both still served, globex not revoked.
	r.fetch(r.agentConn("globex"), "openai-key")
	require.False(t, r.revoked("globex"))
	require.False(t, r.revoked("acme"))
	require.Empty(t, r.scan(), "a value the attacker saw is stored somewhere")
}
