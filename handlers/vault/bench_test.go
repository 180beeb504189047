package vault_test

import (
	"fmt"
	"testing"

	"github.com/rekey-dev/rekey/internal/testutil"
)

// Benchmarks against the dev server (and PostgreSQL); they print the
// numbers the README quotes:
//
//	go test -run '^$' -bench . -benchtime 200x ./handlers/vault/
//
// BenchmarkRevokeTenant reports the time of one RevokeTenant call for n
// leases (issuing them is not timed).

// BenchmarkKVRotation: one whole saga (create, set, test, finish) of a kv
// secret per op.
func BenchmarkKVRotation(b *testing.B) {
	be := newBackend(b, baseConfig(b, ""), nil)
	ref := kvRef("acme", testutil.Uniq("bench-kv"))
	ctx := b.Context()
	rotate(b, ctx, be, ref)
	b.ResetTimer()
	for b.Loop() {
		rotate(b, ctx, be, ref)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rotations/s")
}

// BenchmarkStaticRoleRotation: one whole saga of a database static role
// (rotate-role changes the password in PostgreSQL) per op.
func BenchmarkStaticRoleRotation(b *testing.B) {
	be := newBackend(b, baseConfig(b, ""), nil)
	ref := staticRole(b, "acme")
	ctx := b.Context()
	b.ResetTimer()
	for b.Loop() {
		rotate(b, ctx, be, ref)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rotations/s")
}

// BenchmarkRevokeTenant: revoke-prefix of a tenant holding n leases.
func BenchmarkRevokeTenant(b *testing.B) {
	for _, n := range []int{200, 1000} {
		b.Run(fmt.Sprintf("leases=%d", n), func(b *testing.B) {
			be := newBackend(b, baseConfig(b, ""), nil)
			for b.Loop() {
				b.StopTimer()
				tenant := testutil.Uniq("bench")
				dynamicRole(b, tenant+"-ro")
				issue(b, tenant+"-ro", n)
				b.StartTimer()
				got, err := be.RevokeTenant(b.Context(), tenant)
				if err != nil || got != n {
					b.Fatalf("RevokeTenant: %d leases, %v", got, err)
				}
			}
		})
	}
}
