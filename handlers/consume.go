package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/orchestrator"
)

// queue is a durable work-queue consumer of one stream.
type queue struct {
	stream, durable, filter string
	ackWait                 time.Duration
	maxAckPending, batch    int
	// started, if set, is called once the consumer exists and pulls.
	started func()
}

// pull creates (or updates) the durable consumer and hands every message to
// fn until ctx ends; then it stops pulling and returns.
func pull(ctx context.Context, bus *orchestrator.Bus, q queue, log *slog.Logger, fn func(jetstream.Msg)) error {
	cons, err := bus.Consumer(ctx, q.stream, jetstream.ConsumerConfig{
		Durable:       q.durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       q.ackWait,
		MaxAckPending: q.maxAckPending,
		MaxDeliver:    -1, // the workers decide when to give up
		FilterSubject: q.filter,
	})
	if err != nil {
		return err
	}
	// Short pulls with frequent heartbeats: after a NATS restart a lost pull
	// is noticed within seconds, not after the 30 s default expiry.
	iter, err := cons.Messages(jetstream.PullMaxMessages(q.batch), jetstream.PullExpiry(10*time.Second), jetstream.PullHeartbeat(2*time.Second))
	if err != nil {
		return fmt.Errorf("consume %s: %w", q.stream, err)
	}
	// Drain, not Stop: the messages already fetched into the iterator's
	// buffer come out of Next and are handed back at once below, instead
	// of waiting out AckWait unseen.
	stop := context.AfterFunc(ctx, iter.Drain)
	defer stop()
	defer iter.Stop()
	if q.started != nil {
		q.started()
	}
	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			if ctx.Err() != nil {
				iter.Stop()
				return nil
			}
			log.Warn("pull failed", "stream", q.stream, "error", err)
			continue
		}
		if ctx.Err() != nil {
			_ = handBack(msg)
			continue
		}
		fn(msg)
	}
}

// handBack returns a message not (or not completely) handled to the
// stream for another consumer or the next process at once. A 1 ms delay
// rather than a plain Nak: JetStream keeps a delayed nak in the consumer's
// stored pending state with its new deadline, so even when the server
// stops with this process (embedded NATS) the restarted one redelivers it
// at its first check instead of after AckWait.
func handBack(msg jetstream.Msg) error { return msg.NakWithDelay(time.Millisecond) }

// heldSet is the messages a worker holds (queued or running) and has not
// acked yet. keepAlive tells JetStream every AckWait/4 that they are still
// being worked on, so that AckWait can be short (it bounds how long a dead
// process's requests wait) whatever the length of a saga step.
type heldSet struct {
	mu   sync.Mutex
	msgs map[jetstream.Msg]struct{}
}

func newHeldSet() *heldSet { return &heldSet{msgs: map[jetstream.Msg]struct{}{}} }

func (h *heldSet) add(m jetstream.Msg) {
	h.mu.Lock()
	h.msgs[m] = struct{}{}
	h.mu.Unlock()
}

func (h *heldSet) remove(m jetstream.Msg) {
	h.mu.Lock()
	delete(h.msgs, m)
	h.mu.Unlock()
}

// take removes and returns every held message.
func (h *heldSet) take() []jetstream.Msg { return h.list(true) }

func (h *heldSet) snapshot() []jetstream.Msg { return h.list(false) }

func (h *heldSet) list(remove bool) []jetstream.Msg {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]jetstream.Msg, 0, len(h.msgs))
	for m := range h.msgs {
		out = append(out, m)
	}
	if remove {
		clear(h.msgs)
	}
	return out
}

// keepAlive runs until ctx ends.
func (h *heldSet) keepAlive(ctx context.Context, ackWait time.Duration) {
	t := time.NewTicker(max(ackWait/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, m := range h.snapshot() {
				_ = m.InProgress()
			}
		}
	}
}

// drainWork waits for in-flight work; past the deadline it cancels the
// work's context (the messages are then redelivered later) and waits again.
func drainWork(wg *sync.WaitGroup, timeout time.Duration, cancelWork context.CancelFunc, log *slog.Logger) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		log.Warn("shutdown deadline reached; interrupting in-flight work (it will be redelivered)")
		cancelWork()
		<-done
	}
}
