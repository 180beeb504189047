package awsevents

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/orchestrator"
)

// BucketDedup is the JetStream KV bucket that remembers, across restarts
// and replicas, the EventBridge events (and GuardDuty findings) already
// handled, for dedup_window: JetStream's own duplicate window (2 minutes)
// is shorter than the time a message can come back from SQS. Keys are
// digests; values are the EventBridge event ids. orchestrator/roles.go
// grants it to the api role under the same name.
const BucketDedup = "rekey_awsevents_dedup"

// dedup is the bucket, opened at start.
type dedup struct {
	kv     jetstream.KeyValue
	window time.Duration
}

// eventKey is the key of an EventBridge event id.
func eventKey(id string) string { return "e." + digest(id) }

// findingKey is the key of one update of a GuardDuty finding: GuardDuty
// sends a finding again under a new event id while it is active.
func findingKey(id string, updated time.Time) string {
	return "f." + digest(id+"\x00"+updated.UTC().Format(time.RFC3339Nano))
}

func digest(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:20])
}

// seen reports whether any key was recorded within the window.
func (d *dedup) seen(ctx context.Context, now time.Time, keys ...string) (bool, error) {
	for _, k := range keys {
		e, err := d.kv.Get(ctx, k)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return false, fmt.Errorf("dedup lookup: %w", err)
		case now.Sub(e.Created()) < d.window:
			return true, nil
		}
	}
	return false, nil
}

// record remembers every key as handled by event id.
func (d *dedup) record(ctx context.Context, id string, keys ...string) error {
	for _, k := range keys {
		if _, err := d.kv.Put(ctx, k, []byte(id)); err != nil {
			return fmt.Errorf("dedup record: %w", err)
		}
	}
	return nil
}

// start checks the queue against the configuration and opens the dedup
// bucket. SQS and NATS errors are retried until ctx ends (then it returns
// nil); a queue that does not fit the configuration is an error.
func (t *Trigger) start(ctx context.Context) error {
	failures := 0 // in a row; 0 while all goes well
	for ctx.Err() == nil {
		attrs, err := t.queueAttributes(ctx)
		if err != nil {
			t.retryLater(ctx, &failures, "queue attributes not readable; retrying", "queue", t.cfg.QueueURL, "error", err)
			continue
		}
		if err := t.checkQueue(attrs); err != nil {
			return err
		}
		break
	}
	failures = 0
	for ctx.Err() == nil {
		kv, err := t.bus.KV(ctx, BucketDedup, t.cfg.DedupWindow)
		if err != nil {
			t.retryLater(ctx, &failures, "dedup bucket not available; retrying", "bucket", BucketDedup, "error", err)
			continue
		}
		t.dedup = &dedup{kv: kv, window: t.cfg.DedupWindow}
		return nil
	}
	return nil
}

func (t *Trigger) queueAttributes(ctx context.Context) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := t.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(t.cfg.QueueURL),
		AttributeNames: []sqstypes.QueueAttributeName{
			sqstypes.QueueAttributeNameRedrivePolicy, sqstypes.QueueAttributeNameVisibilityTimeout,
		},
	})
	if err != nil {
		return nil, err
	}
	return out.Attributes, nil
}

// checkQueue checks that a message cannot come back after dedup_window:
// the queue must dead-letter it after at most max_receive_count
// receives, each hiding it for the visibility timeout (the section's, or
// else the queue's).
func (t *Trigger) checkQueue(attrs map[string]string) error {
	fail := func(field, format string, args ...any) error {
		return orchestrator.FieldErrorf(Section+"."+field, "queue %s: %s", t.cfg.QueueURL, fmt.Sprintf(format, args...))
	}
	raw := attrs[string(sqstypes.QueueAttributeNameRedrivePolicy)]
	if raw == "" {
		return fail("max_receive_count", "has no redrive policy, so a message can be received until it expires; "+
			"give it one to a dead-letter queue with maxReceiveCount at most %d", t.cfg.MaxReceiveCount)
	}
	var policy struct {
		MaxReceiveCount json.RawMessage `json:"maxReceiveCount"`
	}
	if err := json.Unmarshal([]byte(raw), &policy); err != nil {
		return fail("max_receive_count", "redrive policy is not JSON: %v", err)
	}
	var str string
	if json.Unmarshal(policy.MaxReceiveCount, &str) != nil {
		str = string(policy.MaxReceiveCount)
	}
	receives, err := strconv.Atoi(str)
	if err != nil || receives < 1 {
		return fail("max_receive_count", "redrive policy has no maxReceiveCount")
	}
	if receives > t.cfg.MaxReceiveCount {
		return fail("max_receive_count", "redrive policy's maxReceiveCount %d is above max_receive_count %d", receives, t.cfg.MaxReceiveCount)
	}
	visibility := t.cfg.VisibilityTimeout
	if visibility == 0 {
		s, err := strconv.Atoi(attrs[string(sqstypes.QueueAttributeNameVisibilityTimeout)])
		if err != nil {
			return fail("visibility_timeout", "visibility timeout %q is not a number of seconds",
				clip(attrs[string(sqstypes.QueueAttributeNameVisibilityTimeout)], 16))
		}
		visibility = time.Duration(s) * time.Second
	}
	if span := visibility * time.Duration(receives); t.cfg.DedupWindow <= span {
		return fail("dedup_window", "%s must exceed the visibility timeout (%s) times maxReceiveCount (%d) = %s: "+
			"a message comes back that long after it was first received", t.cfg.DedupWindow, visibility, receives, span)
	}
	t.log.Info("AWS trigger started", "queue", t.cfg.QueueURL, "max_receive_count", receives,
		"visibility_timeout", visibility, "dedup_window", t.cfg.DedupWindow, "wait_time", t.cfg.WaitTime)
	return nil
}
