package schemas_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

// TestDecodeAsMatchesDecode: the single-pass decoder accepts and refuses
// what Decode + DecodeData do.
func TestDecodeAsMatchesDecode(t *testing.T) {
	inv := schemas.Invalidation{Tenant: "acme", Secret: "openai-key", Kind: schemas.InvalidationRotated, Version: "4",
		RequestID: "r1", PublishedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	good, err := schemas.NewEvent("src", schemas.TypeInvalidation, "acme", "acme/openai-key", inv)
	require.NoError(t, err)
	goodB, _ := good.Encode()
	bad := inv
	bad.Kind = "expired"
	badEv, _ := schemas.NewEvent("src", schemas.TypeInvalidation, "acme", "acme/openai-key", bad)
	badB, _ := badEv.Encode()
	wrongType, _ := schemas.NewEvent("src", schemas.TypeUsageReport, "acme", "acme/openai-key", inv)
	wrongTypeB, _ := wrongType.Encode()
	for name, in := range map[string][]byte{
		"good": goodB, "invalid data": badB, "wrong type": wrongTypeB, "not json": []byte("{"),
		"no data":    []byte(`{"specversion":"1.0","id":"x","source":"s","type":"rekey.invalidation.v1","time":"2026-01-01T00:00:00Z","tenant":"acme"}`),
		"bad tenant": []byte(`{"specversion":"1.0","id":"x","source":"s","type":"rekey.invalidation.v1","time":"2026-01-01T00:00:00Z","tenant":"a.b","data":{}}`),
	} {
		t.Run(name, func(t *testing.T) {
			var viaAs schemas.Invalidation
			evAs, errAs := schemas.DecodeAs(in, schemas.TypeInvalidation, &viaAs)
			var viaTwo schemas.Invalidation
			ev, errTwo := schemas.Decode(in)
			if errTwo == nil {
				errTwo = ev.DecodeData(schemas.TypeInvalidation, &viaTwo)
			}
			require.Equal(t, errTwo == nil, errAs == nil, "Decode: %v, DecodeAs: %v", errTwo, errAs)
			if errAs != nil {
				require.True(t, errors.Is(errAs, schemas.ErrMalformed), "%v", errAs)
				return
			}
			require.Equal(t, viaTwo, viaAs)
			require.Equal(t, ev.ID, evAs.ID)
			require.Equal(t, ev.Tenant, evAs.Tenant)
			require.True(t, ev.Time.Equal(evAs.Time))
		})
	}
}

// TestEncodeNewDecodes: EncodeNew's output is a valid event that Decode reads back.
func TestEncodeNewDecodes(t *testing.T) {
	ack := schemas.InvalidationAck{Tenant: "acme", Secret: "k", Agent: "a-1", Version: "3", RequestID: "r", ReceivedAt: time.Now().UTC(), DroppedAt: time.Now().UTC()}
	id, b, err := schemas.EncodeNew("src", schemas.TypeInvalidationAck, "acme", "acme/k", ack)
	require.NoError(t, err)
	ev, err := schemas.Decode(b)
	require.NoError(t, err)
	require.Equal(t, id, ev.ID)
	require.Equal(t, "application/json", ev.DataContentType)
	var got schemas.InvalidationAck
	require.NoError(t, ev.DecodeData(schemas.TypeInvalidationAck, &got))
	require.Equal(t, ack.RequestID, got.RequestID)
	require.True(t, ack.DroppedAt.Equal(got.DroppedAt))
}

// FuzzDecodeAsMatchesDecode holds DecodeAs (goccy/go-json) to Decode and
// DecodeData (encoding/json) on the two hot-path types: the same input is
// accepted by both or refused by both, with ErrMalformed, and decodes to
// the same values.
func FuzzDecodeAsMatchesDecode(f *testing.F) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	inv, _ := schemas.NewEvent("src", schemas.TypeInvalidation, "acme", "acme/openai-key", schemas.Invalidation{
		Tenant: "acme", Secret: "openai-key", Kind: schemas.InvalidationRotated, Version: "4", RequestID: "r1", PublishedAt: t0})
	ack, _ := schemas.NewEvent("src", schemas.TypeInvalidationAck, "acme", "acme/openai-key", schemas.InvalidationAck{
		Tenant: "acme", Secret: "openai-key", Agent: "a-1", Version: "4", RequestID: "r1", ReceivedAt: t0, DroppedAt: t0})
	for _, ev := range []schemas.Event{inv, ack} {
		b, _ := ev.Encode()
		f.Add(b)
	}
	f.Add([]byte(`{"SPECVERSION":"1.0","id":"x","source":"s","type":"rekey.invalidation.v1","time":"2026-01-01T00:00:00Z","tenant":"acme","data":{"tenant":"acme","kind":"revoked","request_id":"r","published_at":"2026-01-01T00:00:00Z","tenant":"acme"}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"rekey.invalidation.ack.v1","time":"2026-01-01T00:00:00+05:30","tenant":"acme","data":{"tenant":"acme","agent":"a\u00e9","request_id":"r","received_at":"2026-01-01T00:00:00Z","dropped_at":"2026-01-01T00:00:00Z","extra":[1,{"a":null}]}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		checkDecodeAs[schemas.Invalidation](t, in, schemas.TypeInvalidation)
		checkDecodeAs[schemas.InvalidationAck](t, in, schemas.TypeInvalidationAck)
	})
}

func checkDecodeAs[T any](t *testing.T, in []byte, typ string) {
	t.Helper()
	var viaAs T
	evAs, errAs := schemas.DecodeAs(in, typ, &viaAs)
	var viaTwo T
	ev, errTwo := schemas.Decode(in)
	if errTwo == nil {
		errTwo = ev.DecodeData(typ, &viaTwo)
	}
	require.Equal(t, errTwo == nil, errAs == nil, "Decode: %v, DecodeAs: %v, input %q", errTwo, errAs, in)
	if errAs != nil {
		require.ErrorIs(t, errAs, schemas.ErrMalformed)
		return
	}
	require.Equal(t, viaTwo, viaAs)
	require.Equal(t, ev.ID, evAs.ID)
	require.Equal(t, ev.Tenant, evAs.Tenant)
	require.Equal(t, ev.Source, evAs.Source)
	require.Equal(t, ev.Subject, evAs.Subject)
	require.True(t, ev.Time.Equal(evAs.Time))
}
