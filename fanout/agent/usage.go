package agent

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/schemas"
)

// useCounter counts the uses of one secret version. It is striped over
// cache-line sized cells picked at random, so that goroutines on different
// CPUs counting the same secret rarely write the same line.
type useCounter struct {
	secret, version string
	mask            uint32
	cells           []useCell

	// Guarded by usageTable.mu.
	retired bool // no longer in the cache
	idle    int  // flushes that found it retired and empty
}

type useCell struct {
	n atomic.Int64
	_ [56]byte // pad to a 64-byte cache line
}

func (c *useCounter) add() { c.cells[rand.Uint32()&c.mask].n.Add(1) }

// drain returns the count and resets it.
func (c *useCounter) drain() int64 {
	var n int64
	for i := range c.cells {
		n += c.cells[i].n.Swap(0)
	}
	return n
}

type useKey struct{ secret, version string }

// Use says who a read is for (GetFor): the tool and the pipeline run. It
// goes into the use reports, one per (secret, version, tool, run).
type Use struct {
	// Tool overrides Config.Tool.
	Tool string
	// Run is the pipeline run the read belongs to.
	Run string
}

// Validate bounds the fields as use reports do.
func (u Use) Validate() error {
	if len(u.Tool) > schemas.MaxAgentFieldLen || len(u.Run) > schemas.MaxAgentFieldLen {
		return fmt.Errorf("agent: tool and run must be at most %d bytes", schemas.MaxAgentFieldLen)
	}
	return nil
}

// maxTagged bounds the (secret, version, tool, run) counters kept between
// two flushes; uses beyond it are counted without tool and run.
const maxTagged = 10000

type taggedKey struct{ secret, version, tool, run string }

// taggedCounter counts uses named by a tool or run. Adds happen under
// usageTable.tmu read-locked, removal write-locked, so no add is lost.
type taggedCounter struct {
	n    atomic.Int64
	idle int // flushes that found it empty; guarded by tmu write lock
}

// usageTable holds a counter per (secret, version) used since it was last
// reported, and one per (secret, version, tool, run) for reads that named
// a tool or run.
type usageTable struct {
	mu          sync.Mutex
	counters    map[useKey]*useCounter
	cells       int
	windowStart time.Time
	flushMu     sync.Mutex // one flush at a time

	tmu    sync.RWMutex
	tagged map[taggedKey]*taggedCounter
}

// addTagged counts one use of (secret, version) by u. It reports false
// when the table is full: the caller counts the use untagged.
func (t *usageTable) addTagged(secret, version string, u Use) bool {
	k := taggedKey{secret, version, u.Tool, u.Run}
	t.tmu.RLock()
	if c := t.tagged[k]; c != nil {
		c.n.Add(1)
		t.tmu.RUnlock()
		return true
	}
	t.tmu.RUnlock()
	t.tmu.Lock()
	defer t.tmu.Unlock()
	c := t.tagged[k]
	if c == nil {
		if len(t.tagged) >= maxTagged {
			return false
		}
		c = &taggedCounter{}
		t.tagged[k] = c
	}
	c.n.Add(1)
	return true
}

func (t *usageTable) init() {
	t.counters = make(map[useKey]*useCounter)
	t.tagged = make(map[taggedKey]*taggedCounter)
	n := 1 << bits.Len(uint(runtime.GOMAXPROCS(0)-1)) // next power of two
	t.cells = min(n, 64)
	t.windowStart = time.Now()
}

// counter returns the counter of (secret, version), creating it if needed.
func (t *usageTable) counter(secret, version string) *useCounter {
	k := useKey{secret, version}
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.counters[k]
	if c == nil {
		c = &useCounter{secret: secret, version: version, mask: uint32(t.cells - 1), cells: make([]useCell, t.cells)}
		t.counters[k] = c
	}
	c.retired, c.idle = false, 0
	return c
}

// retire marks a counter as no longer reachable from the cache; it is
// forgotten once flushes find it empty.
func (t *usageTable) retire(c *useCounter) {
	if c == nil {
		return
	}
	t.mu.Lock()
	c.retired = true
	t.mu.Unlock()
}

type useCount struct {
	c  *useCounter    // untagged, or
	tc *taggedCounter // tagged by k
	k  taggedKey
	n  int64
}

// putBack returns a count that could not be reported.
func (uc useCount) putBack() {
	if uc.tc != nil {
		uc.tc.n.Add(uc.n)
		return
	}
	uc.c.cells[0].n.Add(uc.n)
}

// take drains every counter and returns the nonzero counts and the window
// they cover.
func (t *usageTable) take() (counts []useCount, start, end time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	start, end = t.windowStart, time.Now()
	t.windowStart = end
	for k, c := range t.counters {
		n := c.drain()
		if n > 0 {
			counts = append(counts, useCount{c: c, n: n})
			continue
		}
		// A Get may still hold a retired entry for an instant after it
		// was dropped: wait for two empty flushes before forgetting it.
		if c.retired {
			if c.idle++; c.idle >= 2 {
				delete(t.counters, k)
			}
		}
	}
	t.tmu.Lock()
	defer t.tmu.Unlock()
	for k, c := range t.tagged {
		if n := c.n.Swap(0); n > 0 {
			c.idle = 0
			counts = append(counts, useCount{tc: c, k: k, n: n})
		} else if c.idle++; c.idle >= 2 {
			delete(t.tagged, k)
		}
	}
	return counts, start, end
}

func (a *Agent) usageLoop(ctx context.Context) {
	every(ctx, a.cfg.UsageInterval, func() {
		if err := a.flushUsage(); err != nil {
			a.log.Warn("publish use reports", "error", err)
		}
	})
}

// flushUsage publishes one UsageReport per (secret, version) used since the
// last flush, and per (secret, version, tool, run) for reads that named a
// tool or run (GetFor). Counts that could not be published are kept for the next one.
func (a *Agent) flushUsage() error {
	a.usage.flushMu.Lock()
	defer a.usage.flushMu.Unlock()
	counts, start, end := a.usage.take()
	var errs []error
	for _, uc := range counts {
		if err := a.publishUsage(uc, start, end); err != nil {
			uc.putBack()
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (a *Agent) publishUsage(uc useCount, start, end time.Time) error {
	k := uc.k
	if uc.tc == nil {
		k = taggedKey{secret: uc.c.secret, version: uc.c.version}
	}
	if k.tool == "" {
		k.tool = a.cfg.Tool
	}
	r := schemas.UsageReport{
		Tenant:      a.cfg.Tenant,
		Secret:      k.secret,
		Version:     k.version,
		Agent:       a.cfg.Instance,
		Tool:        k.tool,
		Run:         k.run,
		Count:       uc.n,
		WindowStart: start.UTC(),
		WindowEnd:   end.UTC(),
	}
	ev, err := schemas.NewEvent(a.source, schemas.TypeUsageReport, a.cfg.Tenant, a.cfg.Tenant+"/"+k.secret, r)
	if err != nil {
		return fmt.Errorf("use report %s/%s: %w", a.cfg.Tenant, k.secret, err)
	}
	b, err := ev.Encode()
	if err != nil {
		return fmt.Errorf("use report %s/%s: %w", a.cfg.Tenant, k.secret, err)
	}
	msg := &nats.Msg{Subject: schemas.UsedSubject(a.cfg.Tenant, k.secret, a.cfg.Instance), Header: nats.Header{}, Data: b}
	msg.Header.Set(nats.MsgIdHdr, ev.ID) // JetStream drops duplicates
	if err := a.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("use report %s/%s: publish: %w", a.cfg.Tenant, k.secret, err)
	}
	return nil
}
