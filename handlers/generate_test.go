package handlers_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
)

func TestGenerate(t *testing.T) {
	tests := []struct {
		name       string
		gen        handlers.Generator
		wantLen    int    // total, prefix included
		wantPrefix string // "" for none
		alphabet   string // every generated character is in it
	}{
		{"defaults", handlers.Generator{}, 32, "", handlers.AlphabetPassword},
		{"password length", handlers.Generator{Style: handlers.StylePassword, Length: 64}, 64, "", handlers.AlphabetPassword},
		{"minimum length", handlers.Generator{Length: 8}, 8, "", handlers.AlphabetPassword},
		{"maximum length", handlers.Generator{Length: 4096}, 4096, "", handlers.AlphabetPassword},
		{"api key", handlers.Generator{Style: handlers.StyleAPIKey}, 32, "", handlers.AlphabetAPIKey},
		{"api key with prefix", handlers.Generator{Style: handlers.StyleAPIKey, Length: 40, Prefix: "sk-live-"}, 48, "sk-live-", handlers.AlphabetAPIKey},
		{"custom alphabet", handlers.Generator{Length: 16, Alphabet: "01"}, 16, "", "01"},
		{"hex api key", handlers.Generator{Style: handlers.StyleAPIKey, Length: 20, Alphabet: "0123456789abcdef"}, 20, "", "0123456789abcdef"},
		{"prefix outside alphabet", handlers.Generator{Length: 10, Alphabet: "xyz", Prefix: "AB_"}, 13, "AB_", "xyz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := handlers.Generate(tc.gen)
			require.NoError(t, err)
			require.Len(t, v, tc.wantLen)
			require.True(t, bytes.HasPrefix(v, []byte(tc.wantPrefix)), "prefix %q missing", tc.wantPrefix)
			for i, c := range v[len(tc.wantPrefix):] {
				require.True(t, strings.IndexByte(tc.alphabet, c) >= 0, "character %d %q is not in the alphabet %q", i, c, tc.alphabet)
			}
			again, err := handlers.Generate(tc.gen)
			require.NoError(t, err)
			require.NotEqual(t, v, again, "two values in a row are equal")
		})
	}
}

func TestGenerateUsesWholeAlphabet(t *testing.T) {
	// 4096 draws from 16 symbols: each one appears (p of a miss ~ 1e-112).
	const alphabet = "0123456789abcdef"
	v, err := handlers.Generate(handlers.Generator{Style: handlers.StyleAPIKey, Length: 4096, Alphabet: alphabet})
	require.NoError(t, err)
	for _, c := range []byte(alphabet) {
		require.Contains(t, string(v), string(c), "symbol %q never drawn", c)
	}
}

func TestGeneratePasswordClasses(t *testing.T) {
	classes := map[string]func(byte) bool{
		"lower": func(c byte) bool { return c >= 'a' && c <= 'z' },
		"upper": func(c byte) bool { return c >= 'A' && c <= 'Z' },
		"digit": func(c byte) bool { return c >= '0' && c <= '9' },
	}
	tests := []struct {
		name string
		gen  handlers.Generator
		want []string
	}{
		// At length 8 over the default alphabet a value misses a class
		// often enough (~20% each time) that 500 tries prove the retry.
		{"default alphabet, short", handlers.Generator{Length: 8}, []string{"lower", "upper", "digit"}},
		// One digit among many symbols: almost every raw draw misses it.
		{"rare digit", handlers.Generator{Length: 8, Alphabet: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#%+-.:=?@^_~7"}, []string{"lower", "upper", "digit"}},
		{"no digits offered", handlers.Generator{Length: 8, Alphabet: "aB"}, []string{"lower", "upper"}},
		{"prefix does not count", handlers.Generator{Length: 8, Prefix: "aA1-", Alphabet: "xY!9"}, []string{"lower", "upper", "digit"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for range 500 {
				v, err := handlers.Generate(tc.gen)
				require.NoError(t, err)
				body := v[len(tc.gen.Prefix):]
				for _, class := range tc.want {
					require.True(t, bytes.IndexFunc(body, func(r rune) bool { return r < 128 && classes[class](byte(r)) }) >= 0,
						"password without a %s character", class)
				}
			}
		})
	}

	t.Run("api key may lack a class", func(t *testing.T) {
		// The class guarantee is for passwords only: with two symbols and
		// length 8, an api-key of one symbol shows up within a few thousand tries.
		gen := handlers.Generator{Style: handlers.StyleAPIKey, Length: 8, Alphabet: "a1"}
		for range 20000 {
			v, err := handlers.Generate(gen)
			require.NoError(t, err)
			if !bytes.ContainsAny(v, "1") || !bytes.ContainsAny(v, "a") {
				return
			}
		}
		t.Fatal("every api-key had both classes: the password rule leaked into api-key style")
	})
}

func TestGenerateInvalid(t *testing.T) {
	tests := []struct {
		name    string
		gen     handlers.Generator
		wantErr string
	}{
		{"unknown style", handlers.Generator{Style: "pin"}, "style"},
		{"too short", handlers.Generator{Length: 7}, "length 7"},
		{"negative length", handlers.Generator{Length: -1}, "length -1"},
		{"too long", handlers.Generator{Length: 4097}, "length 4097"},
		{"one symbol", handlers.Generator{Alphabet: "a"}, "at least 2"},
		{"repeated symbol", handlers.Generator{Alphabet: "abca"}, "repeats"},
		{"space", handlers.Generator{Alphabet: "ab c"}, "printable"},
		{"del", handlers.Generator{Alphabet: "ab\x7f"}, "printable"},
		{"control", handlers.Generator{Alphabet: "ab\tc"}, "printable"},
		{"non ascii", handlers.Generator{Alphabet: "abcé"}, "printable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := handlers.Generate(tc.gen)
			require.ErrorContains(t, err, tc.wantErr)
			require.Nil(t, v)
			require.ErrorContains(t, tc.gen.Defaults().Validate(), tc.wantErr)
		})
	}
}

func TestGeneratorDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   handlers.Generator
		want handlers.Generator
	}{
		{"zero", handlers.Generator{}, handlers.Generator{Style: handlers.StylePassword, Length: 32, Alphabet: handlers.AlphabetPassword}},
		{"api key", handlers.Generator{Style: handlers.StyleAPIKey}, handlers.Generator{Style: handlers.StyleAPIKey, Length: 32, Alphabet: handlers.AlphabetAPIKey}},
		{"kept", handlers.Generator{Style: handlers.StyleAPIKey, Length: 9, Alphabet: "ab", Prefix: "p"}, handlers.Generator{Style: handlers.StyleAPIKey, Length: 9, Alphabet: "ab", Prefix: "p"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, tc.in.Defaults())
		})
	}
}

// FuzzGeneratorValidate: no generator configuration makes Validate or
// Generate panic, and whatever Validate accepts, Generate honours.
func FuzzGeneratorValidate(f *testing.F) {
	f.Add("", 0, "", "")
	f.Add(handlers.StylePassword, 8, "aB3", "")
	f.Add(handlers.StyleAPIKey, 40, "", "sk-")
	f.Add(handlers.StylePassword, 4096, handlers.AlphabetPassword, "pre")
	f.Add("pin", -5, "a", "")
	f.Add(handlers.StylePassword, 12, "abcé", "")
	f.Add(handlers.StyleAPIKey, 9, "aa", "x")
	f.Add(handlers.StylePassword, 1<<40, "ab", "")
	f.Fuzz(func(t *testing.T, style string, length int, alphabet, prefix string) {
		g := handlers.Generator{Style: style, Length: length, Alphabet: alphabet, Prefix: prefix}
		err := g.Defaults().Validate()
		v, genErr := handlers.Generate(g)
		if err != nil {
			if genErr == nil {
				t.Fatalf("Validate refused %+v (%v) but Generate accepted it", g, err)
			}
			return
		}
		if genErr != nil {
			t.Fatalf("Validate accepted %+v but Generate failed: %v", g, genErr)
		}
		d := g.Defaults()
		if len(v) != len(prefix)+d.Length {
			t.Fatalf("len %d, want %d", len(v), len(prefix)+d.Length)
		}
		if !bytes.HasPrefix(v, []byte(prefix)) {
			t.Fatalf("prefix %q missing", prefix)
		}
		for _, c := range v[len(prefix):] {
			if strings.IndexByte(d.Alphabet, c) < 0 {
				t.Fatalf("character %q not in alphabet %q", c, d.Alphabet)
			}
		}
	})
}
