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

// usageTable holds a counter per (secret, version) used since it was last
// reported.
type usageTable struct {
	mu          sync.Mutex
	counters    map[useKey]*useCounter
	cells       int
	windowStart time.Time
	flushMu     sync.Mutex // one flush at a time
}

func (t *usageTable) init() {
	t.counters = make(map[useKey]*useCounter)
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
	c *useCounter
	n int64
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
			counts = append(counts, useCount{c, n})
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
// last flush. Counts that could not be published are kept for the next one.
func (a *Agent) flushUsage() error {
	a.usage.flushMu.Lock()
	defer a.usage.flushMu.Unlock()
	counts, start, end := a.usage.take()
	var errs []error
	for _, uc := range counts {
		if err := a.publishUsage(uc, start, end); err != nil {
			uc.c.cells[0].n.Add(uc.n)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (a *Agent) publishUsage(uc useCount, start, end time.Time) error {
	r := schemas.UsageReport{
		Tenant:      a.cfg.Tenant,
		Secret:      uc.c.secret,
		Version:     uc.c.version,
		Agent:       a.cfg.Instance,
		Tool:        a.cfg.Tool,
		Count:       uc.n,
		WindowStart: start.UTC(),
		WindowEnd:   end.UTC(),
	}
	ev, err := schemas.NewEvent(a.source, schemas.TypeUsageReport, a.cfg.Tenant, a.cfg.Tenant+"/"+uc.c.secret, r)
	if err != nil {
		return fmt.Errorf("use report %s/%s: %w", a.cfg.Tenant, uc.c.secret, err)
	}
	b, err := ev.Encode()
	if err != nil {
		return fmt.Errorf("use report %s/%s: %w", a.cfg.Tenant, uc.c.secret, err)
	}
	msg := &nats.Msg{Subject: schemas.UsedSubject(a.cfg.Tenant, uc.c.secret, a.cfg.Instance), Header: nats.Header{}, Data: b}
	msg.Header.Set(nats.MsgIdHdr, ev.ID) // JetStream drops duplicates
	if err := a.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("use report %s/%s: publish: %w", a.cfg.Tenant, uc.c.secret, err)
	}
	return nil
}
