package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/schemas"
)

// GetStrict reads key from kv and decodes it strictly (schemas.DecodeStrict
// with the required fields) into v. It returns the entry's revision, 0
// when the key does not exist (v is then left as it is). what names the
// entry in errors ("count", "decision").
func GetStrict(ctx context.Context, kv jetstream.KeyValue, key, what string, v any, required ...string) (uint64, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s %s: %w", what, key, err)
	}
	if err := schemas.DecodeStrict(e.Value(), v, required...); err != nil {
		return 0, fmt.Errorf("decode %s %s: %w", what, key, err)
	}
	return e.Revision(), nil
}

// PutIfRevision writes v as JSON under key with compare-and-set on rev (0:
// the key must not exist yet). ok is false when another writer was first.
func PutIfRevision(ctx context.Context, kv jetstream.KeyValue, key, what string, v any, rev uint64) (ok bool, err error) {
	b, err := json.Marshal(v)
	if err != nil {
		return false, fmt.Errorf("encode %s %s: %w", what, key, err)
	}
	if rev == 0 {
		_, err = kv.Create(ctx, key, b)
	} else {
		_, err = kv.Update(ctx, key, b, rev)
	}
	if err == nil {
		return true, nil
	}
	if IsConflict(err) {
		return false, nil
	}
	return false, fmt.Errorf("write %s %s: %w", what, key, err)
}
