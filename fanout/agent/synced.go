package agent

import "sync/atomic"

// syncMark records which connection the last successful resync ran on:
// the connection's reconnect count when the resync began, plus one (zero:
// no resync succeeded yet). A reconnect raises the count, so the mark no
// longer matches until a resync that began after it succeeds.
type syncMark struct{ after atomic.Uint64 }

// syncBegin is called when a resync begins; syncDone with its result when
// it succeeded.
func (a *Agent) syncBegin() uint64 { return a.nc.Stats().Reconnects + 1 }

func (a *Agent) syncDone(mark uint64) { a.synced.after.Store(mark) }

// Synced reports whether the Agent is started and not closed, its
// connection is up, and the invalidations it may have missed while
// disconnected have been replayed: a resync that began after the last
// reconnect succeeded. While it is false after a reconnect, the cache may
// still hold a version rotated while the connection was down (the
// resync drops it). Readiness probes (rekey-agent's /readyz) use it.
func (a *Agent) Synced() bool {
	if a.gate.Load()&(gateNotStarted|gateClosed) != 0 || !a.nc.IsConnected() {
		return false
	}
	return a.synced.after.Load() == a.nc.Stats().Reconnects+1
}
