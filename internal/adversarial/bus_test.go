package adversarial_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/local"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/cron"
	"github.com/rekey-dev/rekey/triggers/usage"
)

// TestAgentFrontDoors: with acme's agent credentials, every subject of the
// subject table that is not acme's own, every bucket and JetStream API
// subject, and the system account's, are refused by the server for both
// publish and subscribe, and nothing stored changes.
func TestAgentFrontDoors(t *testing.T) {
	r := newRig(t)
	r.rotate("globex", "openai-key")
	att := r.agentConn("acme")
	before := r.quiet()

	publish := []string{
		schemas.RotateSubject("acme", "openai-key"), schemas.RotateSubject("globex", "openai-key"),
		schemas.RevokeSubject("acme"), schemas.RevokeSubject("globex"),
		schemas.UsedSubject("globex", "openai-key", "planner-1"),
		schemas.InvalidateSubject("acme", schemas.TenantToken), schemas.InvalidateSubject("globex", "openai-key"),
		schemas.AckSubject("globex", "openai-key", "planner-1"),
		schemas.EventsSubject("acme", schemas.KindRotationCompleted), schemas.EventsSubject("globex", schemas.KindTenantRestored),
		schemas.AuditSubject("acme"), schemas.AuditSubject("globex"),
		schemas.FetchSubject("globex", "openai-key"), schemas.ResyncSubject("globex", schemas.TenantToken),
		schemas.PresenceSubject("globex", "planner-1"),
		"$KV." + orchestrator.BucketTenants + ".acme", "$KV." + orchestrator.BucketTenants + ".globex",
		"$KV." + local.DefaultBucket + ".acme.openai-key", "$KV." + orchestrator.BucketStatus + ".acme.openai-key",
		"$JS.API.INFO", "$JS.API.STREAM.LIST", "$JS.API.STREAM.NAMES",
		"$JS.API.STREAM.INFO." + schemas.StreamInvalidate, "$JS.API.STREAM.MSG.GET." + schemas.StreamInvalidate,
		"$JS.API.STREAM.PURGE." + schemas.StreamRotate, "$JS.API.STREAM.DELETE." + schemas.StreamAudit,
		"$JS.API.CONSUMER.CREATE." + schemas.StreamInvalidate, "$JS.API.CONSUMER.DURABLE.CREATE." + schemas.StreamRotate + ".x",
		"$JS.API.DIRECT.GET." + schemas.StreamInvalidate + "." + schemas.InvalidateSubject("acme", schemas.TenantToken),
		"$JS.API.DIRECT.GET.KV_" + orchestrator.BucketTenants + ".$KV." + orchestrator.BucketTenants + ".acme",
		"$JS.ACK." + schemas.StreamRotate + ".rotation-workers.1.1.1.1.0",
		"$SYS.REQ.SERVER.PING", "$SYS.REQ.ACCOUNT.PING.CONNZ",
		"_INBOX_globex.steal", orchestrator.RoleInboxPrefix(orchestrator.RoleFetch) + ".x",
	}
	for _, subject := range publish {
		require.NoError(t, att.Publish(subject, []byte(`{"tenant":"globex","revoked":false}`)))
	}
	subscribe := []string{
		">", "rekey.>", "rekey.invalidate.>", schemas.InvalidateTenantSubject("globex"),
		"rekey.fetch.>", "rekey.ack.>", "rekey.used.>", "rekey.audit.>", "rekey.events.>", "rekey.presence.>",
		"$KV.>", "$JS.>", "$SYS.>", "_INBOX.>", "_INBOX_globex.>", orchestrator.RoleInboxPrefix(orchestrator.RoleWorkers) + ".>",
	}
	for _, subject := range subscribe {
		_, err := att.Subscribe(subject, func(*nats.Msg) { t.Errorf("acme's agent received a message on %s", subject) })
		require.NoError(t, err) // refusals are asynchronous
	}
	settle(t, att.Conn)
	v := strings.Join(att.violations(), "\n")
	for _, subject := range publish {
		require.Contains(t, v, `Publish to "`+subject+`"`)
	}
	for _, subject := range subscribe {
		require.Contains(t, v, `Subscription to "`+subject+`"`)
	}
	require.Empty(t, r.changed(before, r.snapshot(), nil), "stored state changed")

	// What an acme agent may do still works: its own fetch and resync.
	r.fetch(att, "openai-key")
	msg, err := att.Request(schemas.ResyncSubject("acme", schemas.TenantToken), nil, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "404", msg.Header.Get("Status"))
	require.Empty(t, r.scan())
}

// TestMsgIDCollision: an agent chooses the Nats-Msg-Id of its use reports.
// It uses the ids rekeyd derives for requests (a cron tick's, a use-count
// rotation's, of both tenants) to try to make JetStream drop those
// requests as duplicates. Duplicate windows are per stream, and agents
// can publish only to REKEY_USAGE: the requests are still accepted.
func TestMsgIDCollision(t *testing.T) {
	r := newRig(t)
	att := r.agentConn("acme")
	tick := time.Now().Truncate(time.Minute).Add(time.Minute)
	ids := []string{
		cron.RequestID("globex", "openai-key", tick), cron.RequestID("acme", "openai-key", tick),
		usage.RequestID("globex", "openai-key", "2"), usage.RequestID("acme", "openai-key", "2"),
	}
	for _, id := range ids {
		m := nats.NewMsg(schemas.UsedSubject("acme", "openai-key", "attacker-1"))
		m.Header.Set(nats.MsgIdHdr, id)
		m.Data = []byte(`{}`)
		require.NoError(t, att.PublishMsg(m))
	}
	settle(t, att.Conn)
	// rekeyd (its workers' stream) still takes requests with those ids.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, id := range ids {
		tenant, secret := "globex", "openai-key"
		if strings.Contains(id, ".acme.") {
			tenant = "acme"
		}
		ack, err := r.js.Publish(ctx, schemas.RotateSubject(tenant, secret), []byte(`{}`), jetstream.WithMsgID(id))
		require.NoError(t, err)
		require.False(t, ack.Duplicate, "request id %s was suppressed by an agent's message", id)
		require.Equal(t, schemas.StreamRotate, ack.Stream)
	}
}

// TestAgentHeaders: JetStream acts on some headers of a stored message
// (rollup purges, per-message TTL, expected sequence, schedules). An
// agent's use report carrying them must not purge or shorten its tenant's
// use-report stream, whose earlier reports (its other agents') stay.
func TestAgentHeaders(t *testing.T) {
	r := newRig(t)
	honest := r.agentConn("acme")
	require.NoError(t, honest.Publish(schemas.UsedSubject("acme", "openai-key", "planner-1"), []byte(`{"honest":true}`)))
	settle(t, honest.Conn)
	att := r.agentConn("acme")
	ctx := context.Background()
	st, err := r.js.Stream(ctx, schemas.UsageStream("acme"))
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs)

	for _, h := range [][2]string{
		{"Nats-Rollup", "all"}, {"Nats-Rollup", "sub"}, {"Nats-TTL", "1s"}, {"Nats-Marker-Reason", "Purge"},
		{"Nats-Expected-Stream", schemas.UsageStream("acme")}, {"Nats-Schedule", "@at 2000-01-01T00:00:00Z"},
		{"Nats-Batch-Id", "x"}, {"Nats-Incr", "1"},
	} {
		m := nats.NewMsg(schemas.UsedSubject("acme", "openai-key", "attacker-1"))
		m.Header.Set(h[0], h[1])
		m.Data = []byte(`{}`)
		require.NoError(t, att.PublishMsg(m))
	}
	settle(t, att.Conn)
	time.Sleep(1100 * time.Millisecond) // a 1 s TTL would have removed something by now
	_, err = st.GetMsg(ctx, 1)
	require.NoError(t, err, "the honest agent's report was removed by another agent's headers")
	info, err = st.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.FirstSeq)
}

// TestOversizedAndMalformed: messages over the server's payload limit are
// refused by the server (and the connection is not taken down for
// others), and malformed messages on every subject an agent may publish
// are dropped: nothing of globex changes, rekeyd keeps serving.
func TestOversizedAndMalformed(t *testing.T) {
	r := newRig(t)
	r.rotate("globex", "openai-key")
	att := r.agentConn("acme")
	before := r.quiet()

	huge := make([]byte, 2<<20)
	require.Error(t, att.Publish(schemas.UsedSubject("acme", "openai-key", "attacker-1"), huge), "over max_payload")

	bodies := [][]byte{
		nil, []byte(`{`), []byte(`null`), []byte(`[]`), []byte(`"x"`), []byte(strings.Repeat("[", 100000)),
		[]byte(`{"specversion":"1.0","type":"rekey.usage.report.v1","tenant":"globex","data":{"count":9223372036854775807}}`),
		[]byte(`{"specversion":"1.0","type":"rekey.invalidation.ack.v1","tenant":"globex","data":{"tenant":"globex"}}`),
		[]byte(strings.Repeat("A", 900<<10)),
	}
	subjects := []string{
		schemas.UsedSubject("acme", "openai-key", "attacker-1"), schemas.AckSubject("acme", "openai-key", "attacker-1"),
		schemas.PresenceSubject("acme", "attacker-1"), schemas.FetchSubject("acme", "openai-key"),
		schemas.ResyncSubject("acme", "openai-key"),
	}
	for _, s := range subjects {
		for _, b := range bodies {
			require.NoError(t, att.PublishMsg(&nats.Msg{Subject: s, Data: b, Reply: schemas.AgentInboxPrefix("acme") + ".x"}))
		}
	}
	settle(t, att.Conn)
	after := r.snapshot()
	require.Empty(t, r.changed(before, after, map[string]func(jetstream.RawStreamMsg) bool{
		schemas.UsageStream("acme"): func(m jetstream.RawStreamMsg) bool { return strings.HasPrefix(m.Subject, "rekey.used.acme.") },
		schemas.StreamAudit:         auditBy("acme"),
	}))
	require.False(t, r.revoked("globex"))
	r.fetch(r.agentConn("globex"), "openai-key")
	r.rotate("globex", "openai-key")
	require.Empty(t, r.scan())
}
