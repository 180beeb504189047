package testutil

import (
	"testing"

	"github.com/rekey-dev/rekey/internal/natsrun"
)

// NATSCluster is a JetStream cluster of nats-servers in this process; see
// natsrun.Cluster.
type NATSCluster = natsrun.Cluster

// StartNATSClusterT starts a cluster of n nodes for a test: it fails the
// test when the cluster does not start and shuts it down when the test ends.
func StartNATSClusterT(tb testing.TB, n int) *NATSCluster {
	tb.Helper()
	c, err := natsrun.StartCluster(n, tb.TempDir())
	if err != nil {
		tb.Fatalf("nats cluster: %v", err)
	}
	tb.Cleanup(c.Shutdown)
	return c
}
