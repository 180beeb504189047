package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// SidecarFleetOptions configures SidecarFleet.
type SidecarFleetOptions struct {
	// Sidecars, and as many in-process agents. Required.
	Sidecars int
	// Rotations measured (after one warm-up).
	Rotations int
	// Procs is the number of processes the agents and sidecars are
	// spread over. Default 10.
	Procs int
	// Executable is the binary started as the child processes; it must
	// call RunFanoutChild first (rekeyctl does). Default: this process's.
	Executable string
}

// SidecarFleetResult is one run of SidecarFleet: per rotation, the time
// from RotationCompleted.CompletedAt to the last in-process agent's Get
// returning the new version, and to the last sidecar's client reading it.
type SidecarFleetResult struct {
	Sidecars, Rotations, Procs int
	Agents, SidecarClients     []time.Duration
}

// SidecarFleet measures rotation finished -> last of N sidecars serving
// the new version, next to the same number of in-process agents, in the
// same run and the same processes: rekeyd (embedded NATS) runs in a
// process of its own; opts.Procs processes each hold Sidecars/Procs
// in-process agents (of acme) and as many sidecars (of globex;
// fanout/sidecar servers, each with its own agent, NATS connection and
// loopback listener for rekey's API). An in-process agent's application
// calls Get when told of the invalidation until it returns the new
// version; a sidecar's application holds GET /v1/events and, at the
// rotated event, reads GET /v1/secrets/{secret} until it returns the new
// version. Each sample rotates acme's secret, then globex's, one rotation
// at a time, so both populations see the same machine at the same time.
func SidecarFleet(ctx context.Context, opts SidecarFleetOptions, log *slog.Logger) (SidecarFleetResult, error) {
	if opts.Procs <= 0 {
		opts.Procs = 10
	}
	opts.Procs = min(opts.Procs, max(opts.Sidecars, 1))
	n := opts.Sidecars
	res := SidecarFleetResult{Sidecars: n, Rotations: opts.Rotations, Procs: opts.Procs}
	if n <= 0 || 2*n > maxFanoutAgents {
		return res, fmt.Errorf("sidecars: %d is not in 1..%d", n, maxFanoutAgents/2)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r, bus, cleanup, err := startFanoutRig(ctx, opts.Executable, opts.Procs, log)
	defer cleanup()
	if err != nil {
		return res, err
	}
	if err := r.each(ctx, shareCommand("fleet", n, opts.Procs), 10*time.Minute); err != nil {
		return res, fmt.Errorf("start agents and sidecars: %w", err)
	}
	completed := map[string]<-chan schemas.Event{}
	for _, tenant := range []string{fleetAgentTenant, fleetSidecarTenant} {
		ch, unsub, err := demo.SubscribeEvents(bus.NC, tenant, schemas.KindRotationCompleted)
		if err != nil {
			return res, err
		}
		defer unsub()
		completed[tenant] = ch
	}
	agents, sidecars := completed[fleetAgentTenant], completed[fleetSidecarTenant]
	for i := -1; i < opts.Rotations; i++ { // -1: a warm-up rotation of each, not counted
		a, err := r.rotateServed(ctx, bus, fleetAgentTenant, agents)
		if err != nil {
			return res, fmt.Errorf("in-process agents: %w", err)
		}
		s, err := r.rotateServed(ctx, bus, fleetSidecarTenant, sidecars)
		if err != nil {
			return res, fmt.Errorf("sidecars: %w", err)
		}
		if i >= 0 {
			res.Agents = append(res.Agents, a)
			res.SidecarClients = append(res.SidecarClients, s)
		}
	}
	return res, nil
}

// rotateServed rotates tenant's secret and returns the time from the
// rotation's completion to the last of the tenant's population serving
// the new version. It returns after a pause, so that rotations do not
// overlap (as in bench fanout).
func (r *fanoutRig) rotateServed(ctx context.Context, bus *orchestrator.Bus, tenant string, completed <-chan schemas.Event) (time.Duration, error) {
	id, err := demo.PublishRotate(ctx, bus, tenant, fanoutSecret)
	if err != nil {
		return 0, err
	}
	last, _, err := r.collect(ctx, "served", id)
	if err != nil {
		return 0, err
	}
	var done schemas.RotationCompleted
	if err := waitEvent(ctx, completed, schemas.TypeRotationCompleted, id, &done, func(d *schemas.RotationCompleted) string { return d.RequestID }); err != nil {
		return 0, err
	}
	time.Sleep(sampleSpacing)
	return last.Sub(done.CompletedAt), nil
}

// startFanoutRig starts rekeyd in a process of its own and procs agent
// processes, and connects an admin bus to rekeyd. cleanup stops them all
// (call it also after an error).
func startFanoutRig(ctx context.Context, exe string, procs int, log *slog.Logger) (*fanoutRig, *orchestrator.Bus, func(), error) {
	r := &fanoutRig{reports: make(chan []string, 4096)}
	var bus *orchestrator.Bus
	dir := ""
	cleanup := func() {
		if bus != nil {
			bus.Close()
		}
		r.stop()
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
	}
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return r, nil, cleanup, fmt.Errorf("executable: %w", err)
		}
	}
	if err := raiseFileLimit(64 + 4*uint64(procs)); err != nil {
		return r, nil, cleanup, err
	}
	dir, err := os.MkdirTemp("", "rekey-fanout-")
	if err != nil {
		return r, nil, cleanup, err
	}
	if r.rekeyd, err = r.start(ctx, exe, "rekeyd", dirEnv+"="+dir); err != nil {
		return r, nil, cleanup, err
	}
	ready, err := r.rekeyd.reply(ctx, time.Minute)
	if f := strings.Fields(ready); err == nil && (len(f) != 2 || f[0] != "ready") {
		err = fmt.Errorf("rekeyd process: %q instead of ready", ready)
	}
	if err != nil {
		return r, nil, cleanup, err
	}
	url := strings.Fields(ready)[1]
	auth, err := orchestrator.LoadNATSAuth(dir)
	if err != nil {
		return r, nil, cleanup, err
	}
	if bus, err = orchestrator.Connect(ctx, url, "bench-fanout", orchestrator.NATSConfig{}, log, daemon.AdminNATSOptions(auth)...); err != nil {
		return r, nil, cleanup, err
	}
	for range procs {
		p, err := r.start(ctx, exe, "agents", natsEnv+"="+url, dirEnv+"="+dir)
		if err != nil {
			return r, bus, cleanup, err
		}
		r.agents = append(r.agents, p)
	}
	return r, bus, cleanup, nil
}

// PrintSidecarFleet writes the results as a table.
func PrintSidecarFleet(w io.Writer, results []SidecarFleetResult) {
	if len(results) == 0 {
		return
	}
	fmt.Fprintf(w, "rotation finished (RotationCompleted.CompletedAt) -> last of N serving the new version; rekeyd in its own process, N in-process agents (acme) and N sidecars (globex; each its own agent, connection and listener) spread over %d others, the two tenants rotated in turn\n", results[0].Procs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\trotations\tserved by\tp50\tp99\tmax\tp99 ratio\t")
	for _, r := range results {
		a, s := sorted(r.Agents), sorted(r.SidecarClients)
		ratio := float64(Percentile(s, 99)) / float64(max(Percentile(a, 99), 1))
		fmt.Fprintf(tw, "%d\t%d\tin-process agent.Get\t%s\t%s\t%s\t\t\n", r.Sidecars, len(a), Percentile(a, 50), Percentile(a, 99), Percentile(a, 100))
		fmt.Fprintf(tw, "%d\t%d\tsidecar (events + GET)\t%s\t%s\t%s\t%.2fx\t\n", r.Sidecars, len(s), Percentile(s, 50), Percentile(s, 99), Percentile(s, 100), ratio)
	}
	tw.Flush()
}
