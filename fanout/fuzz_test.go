package fanout_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout"
	"github.com/rekey-dev/rekey/schemas"
)

func encoded(f *testing.F, typ, tenant string, data any) []byte {
	ev, err := schemas.NewEvent("agent/a1", typ, tenant, tenant, data)
	require.NoError(f, err)
	b, err := ev.Encode()
	require.NoError(f, err)
	return b
}

// FuzzParseAck feeds arbitrary subjects and bytes to ParseAck, the
// decoding of agents' acks. Nothing may panic; every error is
// ErrMalformed; an accepted ack came on its own agent's subject, validates
// and has bounded fields.
func FuzzParseAck(f *testing.F) {
	now := time.Date(2026, 1, 15, 3, 0, 0, 0, time.UTC)
	ack := schemas.InvalidationAck{Tenant: "acme", Secret: "openai-key", Agent: "a1", Version: "7", RequestID: "01JHB2Q8ZJ6W3V6K1T4N5P7R9T",
		ReceivedAt: now, DroppedAt: now}
	b := encoded(f, schemas.TypeInvalidationAck, "acme", ack)
	f.Add("rekey.ack.acme.openai-key.a1", b)
	f.Add("rekey.ack.acme.openai-key.a2", b) // another agent's name
	f.Add("rekey.ack.globex.openai-key.a1", b)
	tenantWide := ack
	tenantWide.Secret = ""
	f.Add("rekey.ack.acme._tenant.a1", encoded(f, schemas.TypeInvalidationAck, "acme", tenantWide))
	f.Add("rekey.ack.acme.openai-key.a1", []byte(`{"specversion":"1.0","id":"x","source":"s","type":"rekey.invalidation.ack.v1","tenant":"acme","data":{"tenant":"acme","agent":"a1","request_id":"`+string(make([]byte, 300))+`"}}`))

	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		a, err := fanout.ParseAck(subject, data)
		if err != nil {
			require.ErrorIs(t, err, schemas.ErrMalformed)
			return
		}
		secret := a.Secret
		if secret == "" {
			secret = schemas.TenantToken
		}
		require.Equal(t, schemas.AckSubject(a.Tenant, secret, a.Agent), subject)
		require.NoError(t, a.Validate())
		require.LessOrEqual(t, len(a.RequestID), schemas.MaxAgentFieldLen)
		require.LessOrEqual(t, len(a.Agent), schemas.MaxInstanceLen)
	})
}

// FuzzParsePresence is FuzzParseAck for heartbeats: an accepted one came
// on its own agent's subject (so an agent cannot announce another's
// leaving) with a positive interval.
func FuzzParsePresence(f *testing.F) {
	p := schemas.AgentPresence{Tenant: "acme", Agent: "a1", Tool: "planner", Interval: 5 * time.Second}
	f.Add("rekey.presence.acme.a1", encoded(f, schemas.TypeAgentPresence, "acme", p))
	leaving := p
	leaving.Leaving = true
	f.Add("rekey.presence.acme.a2", encoded(f, schemas.TypeAgentPresence, "acme", leaving)) // another's leaving
	f.Add("rekey.presence.acme.a1", []byte(`{"specversion":"1.0","id":"x","source":"s","type":"rekey.agent.presence.v1","tenant":"acme","data":{"tenant":"acme","agent":"a1","interval_ns":9223372036854775807}}`))
	f.Add("rekey.presence.acme", []byte(`{}`))

	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		got, err := fanout.ParsePresence(subject, data)
		if err != nil {
			require.True(t, errors.Is(err, schemas.ErrMalformed), "%v", err)
			return
		}
		require.Equal(t, schemas.PresenceSubject(got.Tenant, got.Agent), subject)
		require.NoError(t, got.Validate())
		require.Positive(t, got.Interval)
	})
}
