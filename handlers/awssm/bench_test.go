package awssm_test

import (
	"testing"

	"github.com/rekey-dev/rekey/handlers/awssm"
)

// BenchmarkStagedRotation: one whole staged saga (create, set, test,
// finish: 2 DescribeSecret, 1 PutSecretValue, 1 GetSecretValue, 3
// UpdateSecretVersionStage calls) per op, against the emulator through the
// real SDK client over HTTP; it measures rekey's and the SDK's overhead,
// not Secrets Manager's latency:
//
//	go test -run '^$' -bench StagedRotation -benchtime 2000x ./handlers/awssm/
func BenchmarkStagedRotation(b *testing.B) {
	// The benchmark measures the calls, not the pacing.
	s, be := start(b, nil, func(c *awssm.Config) { c.WriteTPS = 10000 })
	ref, _ := seed(b, s, "acme", "bench")
	ctx := b.Context()
	rotate(b, ctx, be, ref)
	b.ResetTimer()
	for b.Loop() {
		rotate(b, ctx, be, ref)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rotations/s")
}
