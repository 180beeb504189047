package agent

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/schemas"
)

// TestAckDelayBounds: the delay asked by Rekey-Ack-Delay is honoured when
// longer than the agent's own, spread over up to half again, capped at
// schemas.MaxAckDelayMS; malformed or non-positive values are ignored.
func TestAckDelayBounds(t *testing.T) {
	a := &Agent{cfg: Config{AckDelay: 100 * time.Millisecond}}
	header := func(v string) nats.Header {
		h := nats.Header{}
		h.Set(schemas.HeaderAckDelay, v)
		return h
	}
	for _, tc := range []struct {
		name     string
		h        nats.Header
		min, max time.Duration
	}{
		{"no header", nil, 100 * time.Millisecond, 100 * time.Millisecond},
		{"malformed", header("soon"), 100 * time.Millisecond, 100 * time.Millisecond},
		{"negative", header("-500"), 100 * time.Millisecond, 100 * time.Millisecond},
		{"fractional", header("1.5e3"), 100 * time.Millisecond, 100 * time.Millisecond},
		{"shorter than own", header("20"), 100 * time.Millisecond, 110 * time.Millisecond},
		{"longer", header("600"), 600 * time.Millisecond, 900 * time.Millisecond},
		{"capped", header("999999999"), schemas.MaxAckDelayMS * time.Millisecond, schemas.MaxAckDelayMS * time.Millisecond * 3 / 2},
	} {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := a.ackDelay(tc.h)
			if d < tc.min || d > tc.max {
				t.Fatalf("%s: delay %s not in [%s, %s]", tc.name, d, tc.min, tc.max)
			}
			seen[d] = true
		}
		if tc.max > tc.min && len(seen) < 10 {
			t.Errorf("%s: %d distinct delays in 200: acks are not spread", tc.name, len(seen))
		}
	}
}
