package agent

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"math/bits"
	"net/url"
	"slices"
	"sort"

	"github.com/rekey-dev/rekey/schemas"
)

// MinLeakLen is the shortest value the leak guard looks for: shorter ones
// would match ordinary text. rekey's generators make at least 8 bytes.
const MinLeakLen = 8

// separators are taken out of the text and of every pattern before
// matching, so that a value split by whitespace, quotes, string
// concatenation ("sk-ab" + "cd") or list commas is still found. Both sides
// are normalized the same way, so a pattern that held one still matches.
var separators = func() (t [256]byte) {
	for i := range t {
		t[i] = 1
	}
	for _, c := range []byte(" \t\n\r\v\f\"'`+,") {
		t[c] = 0
	}
	return t
}()

// normalize appends src without separators to dst. The loop is branchless:
// every byte is stored and the write index moves only past kept ones.
func normalize[T string | []byte](dst []byte, src T) []byte {
	n := len(dst)
	dst = slices.Grow(dst, len(src)+1)[:n+len(src)+1]
	for i := 0; i < len(src); i++ {
		c := src[i]
		dst[n] = c
		n += int(separators[c])
	}
	return dst[:n]
}

// leakPattern is one form (encoding) of one held value, normalized.
type leakPattern struct {
	b     []byte
	value int32 // index in matcher.values
	enc   string
}

// heldValue names a value the guard looks for; the value itself lives only
// in the patterns.
type heldValue struct{ secret, version string }

// gramSlot is an open-addressing slot: the candidates of one gram are
// cands[lo:hi]; hi == 0 marks an empty slot.
type gramSlot struct {
	key    uint64
	lo, hi uint32
}

type gramCand struct {
	pat int32
	off int32 // the gram's offset in the pattern
}

// matcher finds many patterns at once by sampling: every pattern is at
// least window bytes long, so an occurrence covers, for exactly one k, the
// 8-byte gram starting at k*step (step = window-7). The text is probed only
// there, one probe per step bytes: a multiplicative hash, a bit in a filter
// that stays in cache, and, for the rare gram in it, the candidates (pattern,
// offset) to compare. Unlike Aho-Corasick, which takes a transition per
// byte, the no-hit path touches one byte in step and allocates nothing.
//
// A matcher is immutable once built; the guard builds a new one when the
// held values change.
type matcher struct {
	values  []heldValue
	pats    []leakPattern
	step    int
	filter  []uint64 // bitset of gram hashes
	fshift  uint
	slots   []gramSlot
	sshift  uint
	cands   []gramCand
	maxSpan int // longest pattern
}

const gramLen = 8

// maxWindow bounds the sampling window: a longer one means fewer probes
// but more grams per pattern in the filter.
const maxWindow = 32

func gramHash(g uint64) uint64 { return g * 0x9E3779B97F4A7C15 }

// leakForms returns the normalized forms an exfiltration would give v:
// raw, URL-encoded, hex (both cases), and for base64 and base64url the
// part of the encoding that does not depend on the surrounding bytes, at
// each of the three alignments v may have inside a longer encoded text.
func leakForms(v []byte) []leakPattern {
	var out []leakPattern
	add := func(enc string, b []byte) {
		nb := normalize(nil, b)
		if len(nb) < MinLeakLen {
			return
		}
		for _, p := range out {
			if bytes.Equal(p.b, nb) {
				return
			}
		}
		out = append(out, leakPattern{b: nb, enc: enc})
	}
	add(schemas.EncodingRaw, v)
	add(schemas.EncodingURL, []byte(url.QueryEscape(string(v))))
	add(schemas.EncodingURL, []byte(url.PathEscape(string(v))))
	h := hex.EncodeToString(v)
	add(schemas.EncodingHex, []byte(h))
	add(schemas.EncodingHex, bytes.ToUpper([]byte(h)))
	for _, e := range []struct {
		name string
		enc  *base64.Encoding
	}{{schemas.EncodingBase64, base64.StdEncoding}, {schemas.EncodingBase64URL, base64.URLEncoding}} {
		for r := range 3 {
			buf := make([]byte, r+len(v))
			copy(buf[r:], v)
			s := e.enc.EncodeToString(buf)
			from := (8*r + 5) / 6      // first character made of v's bits only
			to := 8 * (r + len(v)) / 6 // characters fully inside v
			if to-from >= MinLeakLen {
				add(e.name, []byte(s[from:to]))
			}
		}
	}
	return out
}

// newMatcher builds a matcher for the values; forms[i] are the patterns of
// values[i] (from leakForms).
func newMatcher(values []heldValue, forms [][]leakPattern) *matcher {
	m := &matcher{values: values}
	minLen := maxWindow
	for i, fs := range forms {
		for _, p := range fs {
			p.value = int32(i)
			m.pats = append(m.pats, p)
			minLen = min(minLen, len(p.b))
			m.maxSpan = max(m.maxSpan, len(p.b))
		}
	}
	if len(m.pats) == 0 {
		return m
	}
	window := minLen
	m.step = window - gramLen + 1
	type gc struct {
		g uint64
		c gramCand
	}
	all := make([]gc, 0, len(m.pats)*m.step)
	for pi, p := range m.pats {
		for off := 0; off < m.step; off++ {
			all = append(all, gc{binary.LittleEndian.Uint64(p.b[off:]), gramCand{int32(pi), int32(off)}})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].g < all[j].g })

	// The filter has 32 bits per gram (a probe of text that holds no
	// value passes it about 3% of the time), from 64 Kib to 16 Mib.
	fbits := min(max(bits.Len(uint(len(all)*32-1)), 16), 24)
	m.filter = make([]uint64, 1<<fbits/64)
	m.fshift = uint(64 - fbits)
	sbits := max(bits.Len(uint(len(all)*2-1)), 4)
	m.slots = make([]gramSlot, 1<<sbits)
	m.sshift = uint(64 - sbits)
	m.cands = make([]gramCand, len(all))
	for i := 0; i < len(all); {
		j := i
		for j < len(all) && all[j].g == all[i].g {
			m.cands[j] = all[j].c
			j++
		}
		h := gramHash(all[i].g)
		m.filter[h>>m.fshift/64] |= 1 << (h >> m.fshift % 64)
		s := h >> m.sshift
		for m.slots[s].hi != 0 {
			s = (s + 1) & uint64(len(m.slots)-1)
		}
		m.slots[s] = gramSlot{key: all[i].g, lo: uint32(i), hi: uint32(j)}
		i = j
	}
	return m
}

// match is one occurrence of a pattern in the normalized text.
type match struct {
	pat        int32
	start, end int // in the normalized text
}

// find calls hit for every occurrence of a pattern in b (normalized text).
// With no occurrence it allocates nothing.
func (m *matcher) find(b []byte, hit func(match)) {
	if m.step == 0 {
		return
	}
	filter, fshift := m.filter, m.fshift
	for pos := 0; pos+gramLen <= len(b); pos += m.step {
		g := binary.LittleEndian.Uint64(b[pos:])
		h := gramHash(g)
		if filter[h>>fshift/64]&(1<<(h>>fshift%64)) == 0 {
			continue
		}
		m.probe(b, pos, g, h, hit)
	}
}

func (m *matcher) probe(b []byte, pos int, g, h uint64, hit func(match)) {
	mask := uint64(len(m.slots) - 1)
	for s := h >> m.sshift; m.slots[s].hi != 0; s = (s + 1) & mask {
		sl := m.slots[s]
		if sl.key != g {
			continue
		}
		for _, c := range m.cands[sl.lo:sl.hi] {
			p := m.pats[c.pat].b
			start := pos - int(c.off)
			if start >= 0 && start+len(p) <= len(b) && bytes.Equal(b[start:start+len(p)], p) {
				hit(match{pat: c.pat, start: start, end: start + len(p)})
			}
		}
		return
	}
}
