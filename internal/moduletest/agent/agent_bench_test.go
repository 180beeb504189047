package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/rekey-dev/rekey/fanout/agent"
)

func benchAgent(b *testing.B) *agent.Agent {
	b.Helper()
	s := startServer(b)
	nc := connect(b, s)
	createStream(b, nc)
	f := newFakeFetcher()
	f.set("openai-key", 1)
	a := startAgent(b, nc, f, agent.Config{UsageInterval: time.Hour})
	if _, err := a.Get(context.Background(), "openai-key"); err != nil {
		b.Fatal(err)
	}
	return a
}

// BenchmarkGetCached is the hot path: a cached secret, read by one
// goroutine.
func BenchmarkGetCached(b *testing.B) {
	a := benchAgent(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Get(ctx, "openai-key"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetForCached reads a cached secret on behalf of a tool and a
// run (counted per (secret, version, tool, run)).
func BenchmarkGetForCached(b *testing.B) {
	a := benchAgent(b)
	ctx := context.Background()
	u := agent.Use{Tool: "planner", Run: "run-1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.GetFor(ctx, "openai-key", u); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetCachedParallel reads the same cached secret from GOMAXPROCS
// goroutines, counting every use.
func BenchmarkGetCachedParallel(b *testing.B) {
	a := benchAgent(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Get(ctx, "openai-key"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkGetMiss is the cold path, for comparison: every Get misses (TTL
// 1ns) and goes through the shared fetch, served by the in-memory fetcher.
func BenchmarkGetMiss(b *testing.B) {
	s := startServer(b)
	nc := connect(b, s)
	f := newFakeFetcher()
	f.set("openai-key", 1)
	a := startAgent(b, nc, f, agent.Config{TTL: time.Nanosecond, UsageInterval: time.Hour})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Get(ctx, "openai-key"); err != nil {
			b.Fatal(err)
		}
	}
}
