package schemas_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

// FuzzDecode feeds arbitrary bytes to Decode and, when they decode, to
// DecodeData for every payload type. Nothing may panic; every error is
// ErrMalformed; a decoded event re-encodes and re-decodes to the same event,
// and a decoded payload re-encodes to a fixed point that still validates.
func FuzzDecode(f *testing.F) {
	for _, ex := range examples() {
		e, err := schemas.NewEvent("rekey/fuzz", ex.typ, "acme", "acme/openai-key", ex.v)
		require.NoError(f, err)
		b, err := e.Encode()
		require.NoError(f, err)
		f.Add(b)
	}
	f.Add([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"rekey.invalidation.v1","tenant":"acme","data":null}`))
	f.Add([]byte(`{"SpecVersion":"1.0","ID":"x","Source":"s","Type":"t","Tenant":"a","Data":{"<&>":"\u2028"},"time":"2025-06-01T09:30:00+05:30"}`))
	f.Add([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"t","tenant":"acme.prod","data":{}}`))

	f.Fuzz(func(t *testing.T, in []byte) {
		e, err := schemas.Decode(in)
		if err != nil {
			require.ErrorIs(t, err, schemas.ErrMalformed)
			return
		}
		require.NoError(t, schemas.ValidateID("tenant", e.Tenant))

		for _, pt := range payloadTypes {
			checkPayload(t, e, pt)
		}

		b1, err := e.Encode()
		require.NoError(t, err)
		e2, err := schemas.Decode(b1)
		require.NoError(t, err, "re-decode %s", b1)
		b2, err := e2.Encode()
		require.NoError(t, err)
		require.Equal(t, string(b1), string(b2), "encoding is not a fixed point")

		require.Equal(t, e.SpecVersion, e2.SpecVersion)
		require.Equal(t, e.ID, e2.ID)
		require.Equal(t, e.Source, e2.Source)
		require.Equal(t, e.Type, e2.Type)
		require.Equal(t, e.Subject, e2.Subject)
		require.Equal(t, e.DataContentType, e2.DataContentType)
		require.Equal(t, e.Tenant, e2.Tenant)
		require.True(t, e.Time.Equal(e2.Time), "time %s != %s", e.Time, e2.Time)
		_, off1 := e.Time.Zone()
		_, off2 := e2.Time.Zone()
		require.Equal(t, off1, off2)
		require.Equal(t, jsonValue(t, e.Data), jsonValue(t, e2.Data), "data changed")
	})
}

func checkPayload(t *testing.T, e schemas.Event, pt payloadType) {
	t.Helper()
	e.Type = pt.typ
	v := pt.new()
	if err := e.DecodeData(pt.typ, v); err != nil {
		require.ErrorIs(t, err, schemas.ErrMalformed)
		return
	}
	tenant := reflect.ValueOf(v).Elem().FieldByName("Tenant").String()
	require.NoError(t, schemas.ValidateID("tenant", tenant))

	j1, err := json.Marshal(v)
	require.NoError(t, err)
	e.Data = j1
	v2 := pt.new()
	require.NoError(t, e.DecodeData(pt.typ, v2), "re-decode %s", j1)
	j2, err := json.Marshal(v2)
	require.NoError(t, err)
	require.Equal(t, string(j1), string(j2))
}

// jsonValue decodes JSON for a comparison that ignores layout and escaping.
func jsonValue(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	require.NoError(t, d.Decode(&v))
	return v
}

// FuzzParseRef checks that ParseRef never panics and that everything it
// accepts is made of safe subject tokens and prints back to its input.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{
		"acme/openai-key", "a/b", "a_b-c/0", "", "/", "acme", "a/b/c", "acme.prod/key",
		"*/>", "Acme/Key", "acme/_tenant", "-a/b", "a /b", "acmé/clé",
		strings.Repeat("t", 63) + "/" + strings.Repeat("s", 63),
		strings.Repeat("t", 64) + "/s",
	} {
		f.Add(s)
	}
	re := regexp.MustCompile(schemas.IDPattern)
	f.Fuzz(func(t *testing.T, s string) {
		r, err := schemas.ParseRef(s)
		if err != nil {
			require.ErrorIs(t, err, schemas.ErrInvalidID)
			require.Zero(t, r)
			return
		}
		for _, id := range []string{r.Tenant, r.Secret} {
			require.Regexp(t, re, id)
			require.False(t, strings.ContainsAny(id, ".*> \t\r\n/"), "%q", id)
			require.LessOrEqual(t, len(id), 63)
			require.NoError(t, schemas.ValidateID("id", id))
		}
		require.Equal(t, s, r.String())
		again, err := schemas.ParseRef(r.String())
		require.NoError(t, err)
		require.Equal(t, r, again)
		require.NoError(t, schemas.ValidateRef(r.Tenant, r.Secret))
	})
}
