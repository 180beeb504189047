package siem

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/orchestrator"
)

// BucketDedup is the JetStream KV bucket that remembers, across restarts
// and replicas, which alerts already became requests. Keys are digests of
// source, alert id, tenant, secret and action; values are request ids.
const BucketDedup = "rekey_siem_dedup"

// dedupKey identifies one request an alert asks for: the alert's id and
// its firing time (a new firing of the same alert after it resolved is a
// new alert; the same firing delivered again is not).
func dedupKey(source, alertID, firedAt, tenant, secret, action string) string {
	h := sha256.New()
	for _, s := range []string{source, alertID, firedAt, tenant, secret, action} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:20])
}

// eventID derives the request's CloudEvents id (and Nats-Msg-Id) from the
// dedup key and the window bucket the time falls in, so that the same
// alert delivered twice within JetStream's duplicate window is dropped by
// JetStream itself, even by another replica.
func eventID(key string, now time.Time, window time.Duration) string {
	bucket := now.UnixNano() / int64(window)
	h := sha256.Sum256([]byte(key + "/" + strconv.FormatInt(bucket, 10)))
	return "siem-" + hex.EncodeToString(h[:16])
}

// dedup remembers recent requests in memory and in a KV bucket. The memory
// answers a storm without a round trip; the bucket answers after a restart
// and for the other replicas. Entries are recorded after a request was
// published, so a failed publish never hides a retried delivery.
type dedup struct {
	bus    *orchestrator.Bus
	ttl    time.Duration // the longest window of any source: the bucket's TTL
	log    *slog.Logger
	mu     sync.Mutex
	mem    map[string]memEntry
	sweep  time.Time
	kvMu   sync.Mutex
	kv     jetstream.KeyValue
	kvNext time.Time // no new attempt to open the bucket before this
}

type memEntry struct {
	requestID string
	expires   time.Time
}

const maxMemEntries = 100_000

func newDedup(bus *orchestrator.Bus, ttl time.Duration, log *slog.Logger) *dedup {
	return &dedup{bus: bus, ttl: ttl, log: log, mem: map[string]memEntry{}}
}

// bucket opens the KV bucket on first use. When it cannot, dedup goes on
// with memory and JetStream's duplicate window, and tries again later.
func (d *dedup) bucket(ctx context.Context, now time.Time) jetstream.KeyValue {
	d.kvMu.Lock()
	defer d.kvMu.Unlock()
	if d.kv != nil || now.Before(d.kvNext) {
		return d.kv
	}
	kv, err := d.bus.KV(ctx, BucketDedup, d.ttl)
	if err != nil {
		d.kvNext = now.Add(10 * time.Second)
		d.log.Warn("dedup bucket unavailable; deduplicating in memory only", "error", err)
		return nil
	}
	d.kv = kv
	return kv
}

// seen returns the request id recorded for key within window, if any.
func (d *dedup) seen(ctx context.Context, key string, now time.Time, window time.Duration) (string, bool) {
	d.mu.Lock()
	e, ok := d.mem[key]
	d.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.requestID, true
	}
	kv := d.bucket(ctx, now)
	if kv == nil {
		return "", false
	}
	entry, err := kv.Get(ctx, key)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			d.log.Warn("dedup lookup failed", "error", err)
		}
		return "", false
	}
	if now.Sub(entry.Created()) >= window {
		return "", false
	}
	id := string(entry.Value())
	d.remember(key, id, entry.Created().Add(window), now)
	return id, true
}

// record remembers that key became request id at now.
func (d *dedup) record(ctx context.Context, key, id string, now time.Time, window time.Duration) {
	d.remember(key, id, now.Add(window), now)
	if kv := d.bucket(ctx, now); kv != nil {
		if _, err := kv.Put(ctx, key, []byte(id)); err != nil {
			d.log.Warn("dedup record failed", "error", err, "request_id", id)
		}
	}
}

func (d *dedup) remember(key, id string, expires, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now.After(d.sweep) || len(d.mem) >= maxMemEntries {
		for k, e := range d.mem {
			if !now.Before(e.expires) {
				delete(d.mem, k)
			}
		}
		// Still full: forget arbitrary entries; the bucket still knows them.
		for k := range d.mem {
			if len(d.mem) < maxMemEntries*9/10 {
				break
			}
			delete(d.mem, k)
		}
		d.sweep = now.Add(time.Minute)
	}
	d.mem[key] = memEntry{requestID: id, expires: expires}
}
