package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// RotationsOptions configures `rekeyctl bench rotations`.
type RotationsOptions struct {
	// Secrets are local secrets of tenant "bench" (default 1000); Rounds
	// rotate each of them once per round (default 3).
	Secrets, Rounds int
	// Concurrency is rotation.concurrency (default rekey's).
	Concurrency int
	// KillSwitch also revokes the tenant of Secrets secrets and times
	// the revocation report (default true through the CLI).
	KillSwitch bool
}

// RotationsResult is what Rotations measured.
type RotationsResult struct {
	Options RotationsOptions
	// Rounds of full sagas: each round's requests were published at once.
	Rounds []RotationRound
	// KillSwitch: revoke accepted -> revocation.completed published, and
	// the report's parts; zero when not measured.
	KillSwitch time.Duration
	Report     *schemas.RevocationCompleted
}

// RotationRound is one round of rotations.
type RotationRound struct {
	N    int
	Took time.Duration
	CPU  time.Duration // process CPU (rekeyd and the embedded NATS server)
	// Writes are the messages JetStream stored in every stream and
	// bucket during the round (KV updates included).
	Writes uint64
}

// PerSecond is the round's throughput.
func (r RotationRound) PerSecond() float64 { return float64(r.N) / max(r.Took.Seconds(), 1e-9) }

// benchTenant is the tenant Rotations adds, with only local secrets.
const benchTenant = "bench"

// Rotations measures full rotation sagas on the local backend of one
// rekeyd on its embedded NATS: throughput, process CPU per rotation and
// JetStream writes per rotation; then, optionally, the kill switch of a
// tenant over all those secrets.
func Rotations(ctx context.Context, opts RotationsOptions, log *slog.Logger) (RotationsResult, error) {
	opts.Secrets, opts.Rounds = cmpOr(opts.Secrets, 1000), cmpOr(opts.Rounds, 3)
	res := RotationsResult{Options: opts}
	c, err := demo.StartCluster(ctx, log, func(cfg *orchestrator.Config) {
		cfg.Rotation.MinInterval = 0
		if opts.Concurrency > 0 {
			cfg.Rotation.Concurrency = opts.Concurrency
		}
		secrets := make(map[string]orchestrator.SecretConfig, opts.Secrets)
		for i := range opts.Secrets {
			secrets[benchSecret(i)] = orchestrator.SecretConfig{Backend: "local"}
		}
		cfg.Tenants[benchTenant] = orchestrator.TenantConfig{Secrets: secrets}
	})
	if err != nil {
		return res, err
	}
	defer c.Close()
	bus := c.Daemon.Bus()

	done := make(chan string, opts.Secrets)
	sub, err := bus.NC.Subscribe(schemas.EventsSubject(benchTenant, schemas.KindRotationCompleted), func(m *nats.Msg) {
		var rc schemas.RotationCompleted
		if _, err := schemas.DecodeAs(m.Data, schemas.TypeRotationCompleted, &rc); err == nil {
			done <- rc.RequestID
		}
	})
	if err != nil {
		return res, err
	}
	defer func() { _ = sub.Unsubscribe() }()

	for round := range opts.Rounds {
		writes0, err := streamWrites(ctx, bus.JS)
		if err != nil {
			return res, err
		}
		cpu0, start := processCPU(), time.Now()
		for i := range opts.Secrets {
			ev, err := schemas.NewEvent("bench", schemas.TypeRotationRequested, benchTenant, benchTenant+"/"+benchSecret(i), schemas.RotationRequested{
				Tenant: benchTenant, Secret: benchSecret(i), Reason: fmt.Sprintf("bench round %d", round), RequestedAt: time.Now().UTC(),
				Trigger: schemas.Trigger{Kind: schemas.TriggerInternal, Source: "bench"},
			})
			if err != nil {
				return res, err
			}
			if _, err := bus.JS.PublishAsync(schemas.RotateSubject(benchTenant, benchSecret(i)), encoded(ev), jetstream.WithMsgID(ev.ID)); err != nil {
				return res, err
			}
		}
		select {
		case <-bus.JS.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			return res, fmt.Errorf("round %d: rotation requests not acknowledged", round)
		}
		for got := 0; got < opts.Secrets; got++ {
			select {
			case <-done:
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(2 * time.Minute):
				return res, fmt.Errorf("round %d: %d of %d rotations completed", round, got, opts.Secrets)
			}
		}
		took, cpu := time.Since(start), processCPU()-cpu0
		if err := c.WaitIdle(ctx, benchTenant, benchSecret(opts.Secrets-1), 30*time.Second); err != nil {
			return res, err
		}
		writes1, err := streamWrites(ctx, bus.JS)
		if err != nil {
			return res, err
		}
		res.Rounds = append(res.Rounds, RotationRound{N: opts.Secrets, Took: took, CPU: cpu, Writes: writes1 - writes0})
	}

	if opts.KillSwitch {
		reports := make(chan schemas.RevocationCompleted, 1)
		rsub, err := bus.NC.Subscribe(schemas.EventsSubject(benchTenant, schemas.KindRevocationCompleted), func(m *nats.Msg) {
			var rc schemas.RevocationCompleted
			if _, err := schemas.DecodeAs(m.Data, schemas.TypeRevocationCompleted, &rc); err == nil {
				select {
				case reports <- rc:
				default:
				}
			}
		})
		if err != nil {
			return res, err
		}
		defer func() { _ = rsub.Unsubscribe() }()
		start := time.Now()
		if _, err := c.Post(ctx, "/v1/tenants/"+benchTenant+"/revoke"); err != nil {
			return res, err
		}
		select {
		case rep := <-reports:
			res.KillSwitch = time.Since(start)
			res.Report = &rep
		case <-time.After(2 * time.Minute):
			return res, fmt.Errorf("kill switch over %d secrets: no report after 2m", opts.Secrets)
		}
	}
	return res, nil
}

func benchSecret(i int) string { return fmt.Sprintf("s-%04d", i) }

func cmpOr(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// streamWrites is the sum of the last sequence of every stream: the
// messages JetStream stored since the streams were made (each KV update
// is one).
func streamWrites(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	var n uint64
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("stream %s: %w", name, err)
		}
		n += s.CachedInfo().State.LastSeq
	}
	if err := names.Err(); err != nil {
		return 0, err
	}
	return n, nil
}

// processCPU is the CPU time (user and system) this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Print writes the result as a table.
func (r RotationsResult) Print(w io.Writer) {
	fmt.Fprintf(w, "full rotation sagas, local backend, one rekeyd with its embedded NATS (%d secrets, %d rounds)\n",
		r.Options.Secrets, r.Options.Rounds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\trotations\ttook\trotations/s\tCPU/rotation\tJetStream writes/rotation\t")
	for i, rd := range r.Rounds {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%.0f\t%s\t%.1f\t\n", i+1, rd.N, demo.Millis(rd.Took), rd.PerSecond(),
			demo.Millis(rd.CPU/time.Duration(max(rd.N, 1))), float64(rd.Writes)/float64(max(rd.N, 1)))
	}
	_ = tw.Flush()
	if r.Report != nil {
		fmt.Fprintf(w, "kill switch of a tenant with %d secrets: revoke accepted -> report published in %s; parts:",
			r.Options.Secrets, demo.Millis(r.KillSwitch))
		for _, p := range r.Report.Parts {
			fmt.Fprintf(w, " %s %d ok/%d failed (%.0f ms);", p.Part, p.Succeeded, p.Failed, p.DurationMS)
		}
		fmt.Fprintln(w)
	}
}
