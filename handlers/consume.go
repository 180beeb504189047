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
	stop := context.AfterFunc(ctx, iter.Stop)
	defer stop()
	if q.started != nil {
		q.started()
	}
	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return nil
			}
			log.Warn("pull failed", "stream", q.stream, "err", err)
			continue
		}
		fn(msg)
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
