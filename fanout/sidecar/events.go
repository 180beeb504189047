package sidecar

import (
	"sync"
	"time"
)

// Event is one applied invalidation, as sent on GET /v1/events. It names
// the secret and its new version, never a value.
type Event struct {
	// Kind is rotated, revoked or restored.
	Kind        string    `json:"kind"`
	Tenant      string    `json:"tenant"`
	Secret      string    `json:"secret,omitempty"`
	Version     string    `json:"version,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	RequestID   string    `json:"request_id,omitempty"`
	PublishedAt time.Time `json:"published_at"`
	DroppedAt   time.Time `json:"dropped_at"`
}

// eventBuffer is how many events a stream may lag behind before it is
// closed (the client reconnects and must treat everything as changed).
const eventBuffer = 256

// broker fans events out to the open streams.
type broker struct {
	mu     sync.Mutex
	subs   map[chan Event]struct{}
	closed bool
}

func newBroker() *broker { return &broker{subs: map[chan Event]struct{}{}} }

// subscribe returns a channel of events, closed when the stream lags or the
// broker closes; ok is false once closed.
func (b *broker) subscribe() (ch chan Event, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, false
	}
	ch = make(chan Event, eventBuffer)
	b.subs[ch] = struct{}{}
	return ch, true
}

func (b *broker) unsubscribe(ch chan Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.subs[ch]; ok {
		delete(b.subs, ch)
		close(ch)
	}
}

// publish never blocks: a stream that cannot take the event is closed.
func (b *broker) publish(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
			delete(b.subs, ch)
			close(ch)
		}
	}
}

func (b *broker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for ch := range b.subs {
		delete(b.subs, ch)
		close(ch)
	}
}
