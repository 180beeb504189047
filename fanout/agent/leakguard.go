package agent

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/schemas"
)

// DefaultLeakVersions is how many versions of each secret the leak guard
// keeps looking for: the one held and the ones held before it.
const DefaultLeakVersions = 3

// Redacted replaces every value the leak guard finds.
const Redacted = "[REDACTED:rekey]"

// Leak is one secret version found in a text. It never holds the value.
type Leak struct {
	Secret, Version string
	// Encoding is the form it was found in (schemas.Encoding*).
	Encoding string
	// Split is true when whitespace, quotes, '+' or ',' stood inside it.
	Split bool
	// Count is how many times it was found.
	Count int
}

// ScanOrigin says where a scanned text comes from; it goes into the leak
// report.
type ScanOrigin struct {
	// Where: "scan" by default; the wrappers say "writer", "http:url",
	// "http:header", "http:body".
	Where string
	// Tool overrides Config.Tool.
	Tool string
	// Run is the pipeline run the text belongs to.
	Run string
}

// leakGuard keeps the values this agent holds or held (the last
// Config.LeakVersions versions of each secret) and the matcher built from
// them, rebuilt at the first scan after they changed.
type leakGuard struct {
	versions int
	mu       sync.Mutex
	held     map[string][]heldEntry // by secret, oldest first
	dirty    atomic.Bool
	m        atomic.Pointer[matcher]
	bufs     sync.Pool // *[]byte, the normalized text
}

type heldEntry struct {
	version string
	forms   []leakPattern
}

func (g *leakGuard) init(versions int) {
	g.versions = versions
	g.held = make(map[string][]heldEntry)
	g.m.Store(&matcher{})
}

// hold adds a version of secret (a no-op when it is held already or the
// value is shorter than MinLeakLen).
func (g *leakGuard) hold(secret, version string, value []byte) {
	if g.versions <= 0 || len(value) < MinLeakLen {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	hs := g.held[secret]
	for _, h := range hs {
		if h.version == version {
			return
		}
	}
	hs = append(hs, heldEntry{version: version, forms: leakForms(value)})
	if len(hs) > g.versions {
		hs = hs[len(hs)-g.versions:]
	}
	g.held[secret] = hs
	g.dirty.Store(true)
}

// forget drops every held value (Close).
func (g *leakGuard) forget() {
	g.mu.Lock()
	defer g.mu.Unlock()
	clear(g.held)
	g.m.Store(&matcher{})
	g.dirty.Store(false)
}

func (g *leakGuard) matcher() *matcher {
	if g.dirty.Load() {
		g.mu.Lock()
		if g.dirty.Load() {
			var values []heldValue
			var forms [][]leakPattern
			for s, hs := range g.held {
				for _, h := range hs {
					values = append(values, heldValue{secret: s, version: h.version})
					forms = append(forms, h.forms)
				}
			}
			g.m.Store(newMatcher(values, forms))
			g.dirty.Store(false)
		}
		g.mu.Unlock()
	}
	return g.m.Load()
}

// scan looks for held values in text. With none found it returns nil and
// allocates nothing; else the text with each one replaced by Redacted, and
// the leaks.
func scan[T string | []byte](g *leakGuard, text T) (clean []byte, leaks []Leak) {
	m := g.matcher()
	if m.step == 0 || len(text) < MinLeakLen {
		return nil, nil
	}
	bp, _ := g.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	norm := normalize((*bp)[:0], text)
	var found []match
	m.find(norm, func(x match) { found = append(found, x) })
	*bp = norm
	if len(found) == 0 {
		g.bufs.Put(bp)
		return nil, nil
	}
	defer g.bufs.Put(bp)
	return redact(m, text, found)
}

// redact maps the matches in the normalized text back to the text and
// replaces them (the separators inside a split value go with it).
func redact[T string | []byte](m *matcher, text T, found []match) ([]byte, []Leak) {
	// raw[i] is the index in text of the i-th byte kept by normalize.
	raw := make([]int, 0, len(text))
	for i := 0; i < len(text); i++ {
		if separators[text[i]] == 1 {
			raw = append(raw, i)
		}
	}
	type span struct{ from, to int }
	spans := make([]span, 0, len(found))
	type leakKey struct {
		value int32
		enc   string
		split bool
	}
	byKey := map[leakKey]int{}
	var leaks []Leak
	for _, f := range found {
		from, to := raw[f.start], raw[f.end-1]+1
		spans = append(spans, span{from, to})
		p := m.pats[f.pat]
		split := to-from != f.end-f.start
		k := leakKey{p.value, p.enc, split}
		if i, ok := byKey[k]; ok {
			leaks[i].Count++
			continue
		}
		v := m.values[p.value]
		byKey[k] = len(leaks)
		leaks = append(leaks, Leak{Secret: v.secret, Version: v.version, Encoding: p.enc, Split: split, Count: 1})
	}
	// Merge overlapping spans, then rebuild the text.
	slices.SortFunc(spans, func(a, b span) int { return a.from - b.from })
	out := make([]byte, 0, len(text))
	last := 0
	for i := 0; i < len(spans); {
		from, to := spans[i].from, spans[i].to
		for i++; i < len(spans) && spans[i].from < to; i++ {
			to = max(to, spans[i].to)
		}
		out = append(out, text[last:from]...)
		out = append(out, Redacted...)
		last = to
	}
	out = append(out, text[last:]...)
	return out, leaks
}

// Scan looks in text for any value this agent holds or held (the last
// Config.LeakVersions versions of each of its tenant's secrets it read),
// raw or base64, base64url, hex or URL-encoded, also when split by
// whitespace, quotes, '+' or ','. It returns text with each one replaced
// by Redacted, and what it found; each leak is reported on
// rekey.leak.<tenant>.<secret> (agent, tool, where, version: never the
// value). Text without a held value is returned as is, without
// allocating.
func (a *Agent) Scan(text string) (clean string, leaks []Leak) {
	return a.ScanFrom(text, ScanOrigin{})
}

// ScanFrom is Scan with the origin of the text, for the leak report.
func (a *Agent) ScanFrom(text string, o ScanOrigin) (string, []Leak) {
	out, leaks := scan(&a.guard, text)
	if leaks == nil {
		return text, nil
	}
	a.reportLeaks(leaks, o)
	return string(out), leaks
}

// ScanBytes is ScanFrom for a byte slice; with no leak it returns b.
func (a *Agent) ScanBytes(b []byte, o ScanOrigin) ([]byte, []Leak) {
	out, leaks := scan(&a.guard, b)
	if leaks == nil {
		return b, nil
	}
	a.reportLeaks(leaks, o)
	return out, leaks
}

// reportLeaks publishes one LeakReport per leak (core NATS: rekeyd's leak
// stream captures it). A report that cannot be published is logged without
// the value; the text is redacted either way.
func (a *Agent) reportLeaks(leaks []Leak, o ScanOrigin) {
	if o.Where == "" {
		o.Where = "scan"
	}
	if o.Tool == "" {
		o.Tool = a.cfg.Tool
	}
	now := time.Now().UTC()
	for _, l := range leaks {
		r := schemas.LeakReport{
			Tenant: a.cfg.Tenant, Secret: l.Secret, Version: l.Version, Agent: a.cfg.Instance,
			Tool: o.Tool, Run: o.Run, Where: o.Where, Encoding: l.Encoding, Split: l.Split,
			Count: l.Count, FoundAt: now,
		}
		if err := r.Validate(); err != nil {
			a.log.Warn("leak found; report invalid", "secret", l.Secret, "version", l.Version, "error", err)
			continue
		}
		ev, err := schemas.NewEvent(a.source, schemas.TypeLeakReport, a.cfg.Tenant, a.cfg.Tenant+"/"+l.Secret, r)
		if err == nil {
			var b []byte
			if b, err = ev.Encode(); err == nil {
				msg := &nats.Msg{Subject: schemas.LeakSubject(a.cfg.Tenant, l.Secret), Header: nats.Header{}, Data: b}
				msg.Header.Set(nats.MsgIdHdr, ev.ID)
				err = a.nc.PublishMsg(msg)
			}
		}
		if err != nil {
			a.log.Warn("leak found; report not published", "secret", l.Secret, "version", l.Version, "error", err)
			continue
		}
		a.log.Warn("leak found and redacted", "secret", l.Secret, "version", l.Version, "encoding", l.Encoding, "where", o.Where)
	}
}
