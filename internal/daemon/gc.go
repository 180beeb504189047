package daemon

import (
	"os"
	"runtime/debug"
	"strconv"
)

// DefaultGCPercent is the garbage collector's target rekeyd runs with
// unless the GOGC environment variable is set: the heap may grow to five
// times what is live (Go's default: twice) before a collection.
//
// rekeyd's heap grows with the agents it tracks (about 23 KiB each, the
// embedded NATS server's share included) and every ack and heartbeat
// allocates (about 3 KiB per agent per invalidation), so with thousands
// of agents a collection runs every few invalidations, and one that runs
// while the server writes an invalidation to every agent slows that
// delivery down: `rekeyctl bench fanout --agents 10000` gave a p99 of
// 4.4x-5.5x raw NATS with GOGC=100, 2.2x with 200 and 1.8x with 400 (see
// the README's performance section). Set GOMEMLIMIT to bound the memory
// this costs, or GOGC to choose otherwise.
const DefaultGCPercent = 400

// SetGCPercent applies DefaultGCPercent unless GOGC is set, and returns the
// GOGC value in effect ("400", or the environment's).
func SetGCPercent() string {
	if v := os.Getenv("GOGC"); v != "" {
		return v
	}
	debug.SetGCPercent(DefaultGCPercent)
	return strconv.Itoa(DefaultGCPercent)
}
