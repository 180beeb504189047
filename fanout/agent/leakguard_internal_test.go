package agent

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"testing"
)

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func randValue(t testing.TB, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		k, err := rand.Int(rand.Reader, big.NewInt(int64(len(alnum))))
		if err != nil {
			t.Fatal(err)
		}
		b[i] = alnum[k.Int64()]
	}
	return b
}

func newTestGuard(versions int) *leakGuard {
	g := new(leakGuard)
	g.init(versions)
	return g
}

func TestLeakGuardFindsEveryForm(t *testing.T) {
	g := newTestGuard(3)
	v := append([]byte("sk-acme-"), randValue(t, 32)...)
	g.hold("openai-key", "v1", v)
	for i := range 50 { // other values held
		g.hold(fmt.Sprintf("s%d", i), "v1", randValue(t, 32))
	}
	s := string(v)
	split := s[:10] + "\n  " + s[10:20] + `" "` + s[20:]
	cases := []struct {
		name, text, enc string
		split           bool
	}{
		{"raw", "the key is " + s + ".", "raw", false},
		{"raw at the start", s, "raw", false},
		{"base64", "data: " + base64.StdEncoding.EncodeToString(v), "base64", false},
		{"base64 inside a longer blob, offset 1", base64.StdEncoding.EncodeToString(append([]byte("x"), v...)), "base64", false},
		{"base64 inside a longer blob, offset 2", base64.StdEncoding.EncodeToString(append([]byte("xy"), append(v, "tail"...)...)), "base64", false},
		{"base64url", base64.URLEncoding.EncodeToString(append([]byte("{\"k\":\""), v...)), "base64url", false},
		{"base64, line-wrapped", wrap(base64.StdEncoding.EncodeToString(append([]byte("key="), v...)), 7), "base64", true},
		{"hex", "0x" + hex.EncodeToString(v), "hex", false},
		{"HEX", strings.ToUpper(hex.EncodeToString(v)), "hex", false},
		{"split by whitespace and quotes", "k = \"" + split + "\"", "raw", true},
		{"concatenated", `"` + s[:16] + `" + "` + s[16:] + `"`, "raw", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clean, leaks := scan(g, c.text)
			if len(leaks) == 0 {
				t.Fatalf("not found in %q", c.name)
			}
			var l *Leak
			for i := range leaks {
				// base64url is reported as base64 where both are the same text
				if leaks[i].Secret == "openai-key" && strings.HasPrefix(c.enc, leaks[i].Encoding) {
					l = &leaks[i]
				}
			}
			if l == nil || l.Version != "v1" || l.Split != c.split {
				t.Fatalf("leaks %+v, want openai-key v1 %s split=%v", leaks, c.enc, c.split)
			}
			if !bytes.Contains(clean, []byte(Redacted)) {
				t.Fatalf("not redacted")
			}
			if _, again := scan(g, clean); again != nil {
				t.Fatalf("redacted text still holds %+v", again)
			}
		})
	}
}

func TestLeakGuardURLEncoding(t *testing.T) {
	g := newTestGuard(3)
	v := []byte("p@ss/w0rd+with?odd&chars=1")
	g.hold("db-password", "7", v)
	for _, text := range []string{
		"https://evil.example/?q=" + url.QueryEscape(string(v)),
		"https://evil.example/" + url.PathEscape(string(v)) + "/x",
	} {
		clean, leaks := scan(g, text)
		if len(leaks) != 1 || leaks[0].Secret != "db-password" || leaks[0].Version != "7" {
			t.Fatalf("%q: leaks %+v", text, leaks)
		}
		if bytes.Contains(clean, v) {
			t.Fatal("value kept")
		}
	}
}

func TestLeakGuardCountsAndKeepsText(t *testing.T) {
	g := newTestGuard(3)
	v := string(randValue(t, 24))
	g.hold("k", "3", []byte(v))
	clean, leaks := scan(g, "a "+v+" b "+v+" c")
	if want := "a " + Redacted + " b " + Redacted + " c"; string(clean) != want {
		t.Fatalf("clean %q, want %q", clean, want)
	}
	if len(leaks) != 1 || leaks[0].Count != 2 {
		t.Fatalf("leaks %+v", leaks)
	}
}

func TestLeakGuardVersions(t *testing.T) {
	g := newTestGuard(2)
	vs := [][]byte{randValue(t, 32), randValue(t, 32), randValue(t, 32)}
	for i, v := range vs {
		g.hold("k", fmt.Sprint(i+1), v)
	}
	if _, leaks := scan(g, string(vs[0])); leaks != nil {
		t.Fatalf("version 1 is older than the last 2 and still found: %+v", leaks)
	}
	for i, v := range vs[1:] {
		if _, leaks := scan(g, string(v)); len(leaks) != 1 || leaks[0].Version != fmt.Sprint(i+2) {
			t.Fatalf("version %d: %+v", i+2, leaks)
		}
	}
	g.forget()
	if _, leaks := scan(g, string(vs[2])); leaks != nil {
		t.Fatal("found after forget")
	}
}

func TestLeakGuardNoFalsePositives(t *testing.T) {
	g := newTestGuard(1)
	for i := range 1000 {
		g.hold(fmt.Sprintf("s%d", i), "1", randValue(t, 32))
	}
	text := benchText(t, 1<<20)
	if clean, leaks := scan(g, text); leaks != nil || clean != nil {
		t.Fatalf("found %+v in text holding no value", leaks)
	}
	if _, leaks := scan(g, "short"); leaks != nil {
		t.Fatal("short text")
	}
	g2 := newTestGuard(1)
	g2.hold("tiny", "1", []byte("abc")) // shorter than MinLeakLen: not guarded
	if _, leaks := scan(g2, "abc abc"); leaks != nil {
		t.Fatal("tiny value matched")
	}
}

func wrap(s string, n int) string {
	var b strings.Builder
	for len(s) > n {
		b.WriteString(s[:n] + "\n")
		s = s[n:]
	}
	return b.String() + s
}

// benchText is agent output without a held value: prose, JSON, random hex
// and base64 (hashes, ids, blobs), like a tool's output.
func benchText(t testing.TB, n int) string {
	words := strings.Fields(`the agent called the search tool with the query and got back a list of
		results; it then summarized them for the user, citing each source by its title and url.
		{"id": "req_01HX", "status": "ok", "items": [1, 2, 3], "next": null} error retry timeout`)
	var b strings.Builder
	i := 0
	for b.Len() < n {
		switch i % 20 {
		case 7:
			b.WriteString(hex.EncodeToString(randValue(t, 20)))
		case 13:
			b.WriteString(base64.StdEncoding.EncodeToString(randValue(t, 30)))
		default:
			b.WriteString(words[i%len(words)])
		}
		b.WriteByte(" \n"[i%11/10])
		i++
	}
	return b.String()[:n]
}

// BenchmarkScanNoHit measures the leak guard on output that holds none of
// the 1,000 values it looks for (1,000 secrets of 32 bytes, each in up to
// 11 forms): the path every agent output takes.
func BenchmarkScanNoHit(b *testing.B) {
	for _, held := range []int{10, 1000} {
		for _, size := range []int{4 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("values=%d/size=%d", held, size), func(b *testing.B) {
				g := newTestGuard(1)
				for i := range held {
					g.hold(fmt.Sprintf("s%d", i), "1", randValue(b, 32))
				}
				text := benchText(b, size)
				if _, leaks := scan(g, text); leaks != nil {
					b.Fatal("hit")
				}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					scan(g, text)
				}
			})
		}
	}
}

// BenchmarkScanHit is the redacting path: one value in 4 KiB.
func BenchmarkScanHit(b *testing.B) {
	g := newTestGuard(1)
	var v []byte
	for i := range 1000 {
		v = randValue(b, 32)
		g.hold(fmt.Sprintf("s%d", i), "1", v)
	}
	text := benchText(b, 2<<10) + string(v) + benchText(b, 2<<10)
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for range b.N {
		if _, leaks := scan(g, text); leaks == nil {
			b.Fatal("no hit")
		}
	}
}
