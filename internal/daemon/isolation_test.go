package daemon_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

// violations collects the server's permission errors of one connection.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err.Error())
}

func (v *violations) has(s string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.errs {
		if strings.Contains(e, s) {
			return true
		}
	}
	return false
}

// TestAgentCredentialsAreTenantScoped: tenant acme's agent credentials
// are refused by the NATS server itself on globex's subjects and stream
// entries, and on everything an agent has no business doing.
func TestAgentCredentialsAreTenantScoped(t *testing.T) {
	d := start(t, testConfig(t, t.TempDir()), daemonOpts())
	ctx := context.Background()
	// Give globex something to steal: one invalidation in the stream.
	rotate(t, d, "globex", "openai-key")
	require.Eventually(t, func() bool {
		s, err := d.Bus().JS.Stream(ctx, schemas.StreamInvalidate)
		if err != nil {
			return false
		}
		_, err = s.GetLastMsgForSubject(ctx, schemas.InvalidateSubject("globex", "openai-key"))
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)

	v := &violations{}
	opts := append(d.AgentNATSOptions("acme"), nats.ErrorHandler(v.handler))
	nc, err := nats.Connect(d.NATSURL(), opts...)
	require.NoError(t, err)
	defer nc.Close()

	// Without credentials, or with another tenant's password, no connection.
	_, err = nats.Connect(d.NATSURL())
	require.ErrorContains(t, err, "Authorization Violation")
	_, err = nats.Connect(d.NATSURL(), nats.UserInfo("agent-acme", "not-the-password"))
	require.ErrorContains(t, err, "Authorization Violation")

	// Subscriptions outside the tenant are refused by the server.
	for _, subject := range []string{
		"rekey.invalidate.globex.>", "rekey.invalidate.>", "rekey.invalidate.*.openai-key",
		"rekey.ack.>", "rekey.fetch.>", "rekey.audit.>", "rekey.events.>", "_INBOX.>", "_INBOX_globex.>", ">",
	} {
		_, err := nc.Subscribe(subject, func(*nats.Msg) {})
		require.NoError(t, err) // refusals are asynchronous
		require.NoError(t, nc.Flush())
		require.Eventually(t, func() bool { return v.has(`Subscription to "` + subject + `"`) }, 5*time.Second, 10*time.Millisecond,
			"subscribe %s was not refused", subject)
	}

	// Publishing outside the tenant's own subjects is refused too.
	for _, subject := range []string{
		schemas.RotateSubject("acme", "openai-key"), schemas.RevokeSubject("globex"),
		schemas.AckSubject("globex", "openai-key", "a"), schemas.UsedSubject("globex", "openai-key", "a"),
		schemas.InvalidateSubject("acme", "openai-key"), schemas.AuditSubject("acme"),
		"$JS.API.STREAM.MSG.GET." + schemas.StreamInvalidate, "$JS.API.STREAM.INFO." + schemas.StreamInvalidate,
		"$JS.API.CONSUMER.DELETE." + schemas.StreamInvalidate + ".x",
	} {
		require.NoError(t, nc.Publish(subject, []byte("{}")))
		require.NoError(t, nc.Flush())
		require.Eventually(t, func() bool { return v.has(`Publish to "` + subject + `"`) }, 5*time.Second, 10*time.Millisecond,
			"publish to %s was not refused", subject)
	}

	// Agents have no JetStream API at all (JetStream would answer any
	// reply subject they name): no direct get, not even of their own
	// tenant's subjects, no batch get, no consumer of any filter.
	for _, subject := range []string{
		"$JS.API.DIRECT.GET." + schemas.StreamInvalidate + "." + schemas.InvalidateSubject("globex", "openai-key"),
		"$JS.API.DIRECT.GET." + schemas.StreamInvalidate + "." + schemas.InvalidateSubject("acme", schemas.TenantToken),
		"$JS.API.DIRECT.GET." + schemas.StreamInvalidate,
		"$JS.API.DIRECT.GET." + schemas.StreamInvalidate + ".rekey.invalidate.*.openai-key",
	} {
		_, err := nc.Request(subject, nil, 500*time.Millisecond)
		require.Error(t, err, "%s was allowed", subject)
		require.Eventually(t, func() bool { return v.has(`Publish to "` + subject + `"`) }, 5*time.Second, 10*time.Millisecond)
	}
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for _, filter := range []string{schemas.InvalidateTenantSubject("globex"), "rekey.invalidate.>", schemas.InvalidateTenantSubject("acme")} {
		_, err := js.CreateConsumer(short, schemas.StreamInvalidate, jetstream.ConsumerConfig{
			FilterSubject: filter, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, AckPolicy: jetstream.AckNonePolicy,
		})
		require.Error(t, err, "consumer on %s was allowed", filter)
	}
	// The resync server answers for its own tenant only (what the agent's
	// resync does); another tenant's subject is refused by the server.
	own, err := nc.Request(schemas.ResyncSubject("acme", schemas.TenantToken), nil, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "404", own.Header.Get("Status"), "nothing announced for acme yet")
	require.NoError(t, nc.Publish(schemas.ResyncSubject("globex", schemas.TenantToken), nil))
	require.NoError(t, nc.Flush())
	require.Eventually(t, func() bool { return v.has(`Publish to "` + schemas.ResyncSubject("globex", schemas.TenantToken) + `"`) }, 5*time.Second, 10*time.Millisecond)

	// Fetching globex's value is refused; acme's is served.
	_, err = nc.Request(schemas.FetchSubject("globex", "openai-key"), []byte("{}"), 500*time.Millisecond)
	require.Error(t, err)
	msg, err := nc.Request(schemas.FetchSubject("acme", "openai-key"), []byte("{}"), 5*time.Second)
	require.NoError(t, err)
	require.Contains(t, string(msg.Data), `"version":"1"`)
}
