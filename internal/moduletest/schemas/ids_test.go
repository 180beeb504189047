package schemas_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

func TestValidateID(t *testing.T) {
	valid := []string{
		"a",
		"0",
		"acme",
		"a_b-c",
		"a-",
		"a_",
		"9lives",
		"openai-key",
		"stripe_restricted",
		strings.Repeat("a", 63),
		"a" + strings.Repeat("-", 62),
	}
	for _, id := range valid {
		t.Run("valid "+id, func(t *testing.T) {
			require.NoError(t, schemas.ValidateID("tenant", id))
		})
	}

	invalid := []struct{ name, id string }{
		{"empty", ""},
		{"64 chars", strings.Repeat("a", 64)},
		{"leading dash", "-acme"},
		{"leading underscore", "_acme"},
		{"the tenant token", schemas.TenantToken},
		{"upper case", "Acme"},
		{"all upper case", "ACME"},
		{"dot", "acme.prod"},
		{"trailing dot", "acme."},
		{"star", "*"},
		{"star inside", "ac*me"},
		{"gt", ">"},
		{"gt inside", "ac>me"},
		{"space", "acme prod"},
		{"leading space", " acme"},
		{"tab", "acme\tprod"},
		{"trailing newline", "acme\n"},
		{"slash", "acme/key"},
		{"unicode letter", "acmé"},
		{"unicode digit", "acme٣"},
		{"fullwidth", "ａｃｍｅ"},
		{"nul byte", "acme\x00"},
		{"invalid utf-8", "acme\xff"},
		{"colon", "acme:prod"},
		{"dollar", "$acme"},
	}
	for _, tt := range invalid {
		t.Run("invalid "+tt.name, func(t *testing.T) {
			err := schemas.ValidateID("secret", tt.id)
			require.ErrorIs(t, err, schemas.ErrInvalidID)
			require.Contains(t, err.Error(), "secret id")
		})
	}

	t.Run("long ids are truncated in errors", func(t *testing.T) {
		err := schemas.ValidateID("tenant", strings.Repeat("X", 10_000))
		require.ErrorIs(t, err, schemas.ErrInvalidID)
		require.Less(t, len(err.Error()), 300)
	})
}

func TestIDPatternIsSubjectSafe(t *testing.T) {
	re := regexp.MustCompile(schemas.IDPattern)
	for _, tok := range []string{".", "*", ">", " ", "\t", "\n", "\r"} {
		require.False(t, re.MatchString("a"+tok+"b"), "%q", tok)
	}
}

func TestValidateRef(t *testing.T) {
	require.NoError(t, schemas.ValidateRef("acme", "openai-key"))

	err := schemas.ValidateRef("Acme", "openai-key")
	require.ErrorIs(t, err, schemas.ErrInvalidID)
	require.Contains(t, err.Error(), "tenant id")

	err = schemas.ValidateRef("acme", "openai.key")
	require.ErrorIs(t, err, schemas.ErrInvalidID)
	require.Contains(t, err.Error(), "secret id")
}

func TestParseRef(t *testing.T) {
	valid := []struct {
		in   string
		want schemas.Ref
	}{
		{"acme/openai-key", schemas.Ref{Tenant: "acme", Secret: "openai-key"}},
		{"a/b", schemas.Ref{Tenant: "a", Secret: "b"}},
		{"a_b-c/0", schemas.Ref{Tenant: "a_b-c", Secret: "0"}},
		{strings.Repeat("t", 63) + "/" + strings.Repeat("s", 63), schemas.Ref{Tenant: strings.Repeat("t", 63), Secret: strings.Repeat("s", 63)}},
	}
	for _, tt := range valid {
		t.Run("valid "+tt.in, func(t *testing.T) {
			got, err := schemas.ParseRef(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.in, got.String())
		})
	}

	invalid := []struct{ name, in string }{
		{"empty", ""},
		{"no slash", "acme"},
		{"only a slash", "/"},
		{"empty tenant", "/openai-key"},
		{"empty secret", "acme/"},
		{"three parts", "a/b/c"},
		{"trailing slash", "acme/openai-key/"},
		{"double slash", "acme//openai-key"},
		{"64-char tenant", strings.Repeat("t", 64) + "/s"},
		{"64-char secret", "t/" + strings.Repeat("s", 64)},
		{"leading dash", "-acme/key"},
		{"leading underscore secret", "acme/_tenant"},
		{"upper case tenant", "Acme/key"},
		{"upper case secret", "acme/Key"},
		{"dot in tenant", "acme.prod/key"},
		{"dot form", "acme.openai-key"},
		{"star", "*/key"},
		{"gt", "acme/>"},
		{"space", "acme/openai key"},
		{"unicode", "acme/clé"},
		{"backslash", `acme\key`},
	}
	for _, tt := range invalid {
		t.Run("invalid "+tt.name, func(t *testing.T) {
			got, err := schemas.ParseRef(tt.in)
			require.ErrorIs(t, err, schemas.ErrInvalidID)
			require.Zero(t, got)
		})
	}
}

// TestValidIDMatchesPattern: the hand-written check agrees with IDPattern.
func TestValidIDMatchesPattern(t *testing.T) {
	re := regexp.MustCompile(schemas.IDPattern)
	inputs := []string{"", "a", "a-", "-a", "_a", "a_b-c", "A", "ab.c", "a*", "a>", " a", "é", strings.Repeat("a", 63), strings.Repeat("a", 64), "0", "09_", "a\x00"}
	for c := 0; c < 256; c++ {
		inputs = append(inputs, "a"+string(rune(c)), string(rune(c)))
	}
	for _, in := range inputs {
		require.Equal(t, re.MatchString(in), schemas.ValidateID("x", in) == nil, "%q", in)
	}
}

func FuzzValidateIDMatchesPattern(f *testing.F) {
	re := regexp.MustCompile(schemas.IDPattern)
	f.Add("acme")
	f.Add("a-b_c")
	f.Fuzz(func(t *testing.T, in string) {
		if re.MatchString(in) != (schemas.ValidateID("x", in) == nil) {
			t.Fatalf("disagree on %q", in)
		}
	})
}
