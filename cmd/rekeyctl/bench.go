package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"

	"github.com/rekey-dev/rekey/internal/bench"
	"github.com/rekey-dev/rekey/orchestrator"
)

func newBench() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "run rekey's benchmarks on this machine and print tables",
		Long: `bench starts its own rekeyd in-process (embedded NATS, a temporary data
directory, free ports) and measures. It does not touch a running rekeyd.`,
	}
	var agents, rotations int
	prop := &cobra.Command{
		Use:   "propagation",
		Short: "rotation request -> every agent invalidated (p50/p99/max)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
			res, err := bench.Propagation(ctx, agents, rotations, log)
			if err != nil {
				return err
			}
			res.Print(cmd.OutOrStdout())
			return nil
		},
	}
	prop.Flags().IntVar(&agents, "agents", 100, "agents of the tenant, each on its own NATS connection")
	prop.Flags().IntVar(&rotations, "rotations", 200, "rotations, one after the other")
	get := &cobra.Command{
		Use:   "get",
		Short: "agent Get of a cached secret (ns/op, allocs/op)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
			res, err := bench.BenchGet(ctx, log)
			if err != nil {
				return err
			}
			res.Print(cmd.OutOrStdout())
			return nil
		},
	}
	var sizes []int
	var (
		fanRotations, fanRuns, fanProcs int
		fanProfile                      string
	)
	fan := &cobra.Command{
		Use:   "fanout",
		Short: "invalidation published -> last of N agents (in their own processes) dropped, next to a raw NATS baseline",
		Long: `fanout starts rekeyd (with the embedded NATS server) in a process of its own
and --procs agent processes (this binary, started again), which hold first
N plain subscribers, sent a plain publish as large as an invalidation, then
N agents, each on its own connection with the tenant's credentials, whose
secret is rotated. It prints p50/p99/max of both and their ratio, per run
and the spread between --runs runs (each with fresh processes).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
			var results []bench.FanoutResult
			for run := 1; run <= fanRuns; run++ {
				for _, n := range sizes {
					res, err := bench.Fanout(ctx, bench.FanoutOptions{Agents: n, Rotations: fanRotations, Procs: fanProcs, Run: run, CPUProfile: fanProfile}, log)
					if err != nil {
						return fmt.Errorf("%d agents, run %d: %w", n, run, err)
					}
					fmt.Fprintf(cmd.ErrOrStderr(), "run %d, %d agents: p50 %.2fx, p99 %.2fx raw\n", run, n, res.Ratio(50), res.Ratio(99))
					results = append(results, res)
				}
			}
			bench.PrintFanout(cmd.OutOrStdout(), results)
			return nil
		},
	}
	fan.Flags().IntSliceVar(&sizes, "agents", []int{1000, 5000, 10000}, "agent counts to measure")
	fan.Flags().IntVar(&fanRotations, "rotations", 400, "rotations (and raw rounds) per agent count and run: the p99 of 400 samples is the 5th slowest")
	fan.Flags().IntVar(&fanRuns, "runs", 3, "runs of every agent count, each with fresh processes")
	fan.Flags().IntVar(&fanProcs, "procs", 10, "agent processes")
	fan.Flags().StringVar(&fanProfile, "cpuprofile", "", "write CPU profiles of the rekeyd process during the raw rounds and the rotations to <prefix>-<agents>-run<run>-{raw,fanout}.pprof, and of the first agent process to ...-{raw,fanout}-agents0.pprof")
	var clients, samples, hookAgents int
	var dur time.Duration
	hook := &cobra.Command{
		Use:   "webhook",
		Short: "SIEM webhooks accepted per second, and webhook accepted -> agents invalidated (p50/p99)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
			res, err := bench.Webhook(ctx, clients, dur, samples, hookAgents, log)
			if err != nil {
				return err
			}
			res.Print(cmd.OutOrStdout())
			return nil
		},
	}
	hook.Flags().IntVar(&clients, "clients", 16, "concurrent HTTP clients")
	hook.Flags().DurationVar(&dur, "duration", 10*time.Second, "how long to send")
	hook.Flags().IntVar(&samples, "samples", 50, "latency samples, one webhook at a time")
	hook.Flags().IntVar(&hookAgents, "agents", 10, "agents of the tenant")
	capCfg := bench.CapacityConfig{}
	capacity := &cobra.Command{
		Use:   "capacity",
		Short: "rotations/s, invalidations/s and agents at 1 and 3 rekeyd replicas on a 3-node NATS cluster",
		Long: `capacity starts, for each replica count, a NATS cluster (JetStream, streams with
3 replicas) and that many rekeyd replicas in this process, connects agents
spread over the nodes, and measures rotations (full sagas on the local backend)
and invalidations (fanout from completion events) per second.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
			rows, err := bench.Capacity(ctx, capCfg, log)
			if err != nil {
				return err
			}
			bench.PrintCapacity(cmd.OutOrStdout(), capCfg, rows)
			return nil
		},
	}
	capacity.Flags().IntSliceVar(&capCfg.Replicas, "replicas", []int{1, 3}, "rekeyd replica counts to measure")
	capacity.Flags().IntVar(&capCfg.Nodes, "nodes", 3, "NATS cluster nodes")
	capacity.Flags().IntVar(&capCfg.Secrets, "secrets", 100, "secrets per tenant (two tenants)")
	capacity.Flags().IntVar(&capCfg.Rounds, "rounds", 3, "rotations of every secret")
	capacity.Flags().IntVar(&capCfg.Invalidations, "invalidations", 2000, "completion events for fanout")
	capacity.Flags().IntVar(&capCfg.Agents, "agents", 200, "agents, half per tenant, each on its own connection")
	floodOpts := bench.FloodOptions{}
	flood := &cobra.Command{
		Use:   "flood",
		Short: "one tenant floods use reports; another tenant's max_uses rotation p50/p99/max before and during",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
			res, err := bench.Flood(ctx, floodOpts, log)
			if err != nil {
				return err
			}
			res.Print(cmd.OutOrStdout())
			return nil
		},
	}
	var rec bench.RecoveryOptions
	recovery := &cobra.Command{
		Use:   "recovery",
		Short: "kill -9 and SIGTERM a real rekeyd mid-burst: ready -> every held request handled (p50/p99/max), and a restore after a kill mid-revocation",
		Long: `recovery runs the rekeyd binary given by --rekeyd (build it with
go build -o rekeyd ./cmd/rekeyd) on a temporary data directory, sends a burst
of rotation requests, and kills it (SIGKILL) or stops it (SIGTERM) at a random
point of the burst. It restarts it on the same data directory and measures the
time from the new process being ready to the last request the old one held
being handled, and checks that no accepted request was lost. Then it kills
rekeyd 30 ms into a tenant's revocation, restarts it, and measures how soon a
restore accepted at once takes effect.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			rec.Progress = cmd.ErrOrStderr()
			res, err := bench.Recovery(ctx, rec)
			if err != nil {
				return err
			}
			res.Print(cmd.OutOrStdout())
			return nil
		},
	}
	flood.Flags().IntVar(&floodOpts.Samples, "samples", 50, "globex max_uses rotations before, and again during, the flood")
	flood.Flags().IntVar(&floodOpts.Conns, "conns", 2, "acme connections publishing use reports as fast as they can")
	flood.Flags().IntVar(&floodOpts.Instances, "instances", 50, "acme instance names each connection spreads its reports over")
	flood.Flags().IntVar(&floodOpts.Rate, "rate", 80000, "acme reports per second in all (the rate one agent reached in the attack; 0: as fast as the connections publish)")
	recovery.Flags().StringVar(&rec.Rekeyd, "rekeyd", "./rekeyd", "the rekeyd binary to run")
	recovery.Flags().IntVar(&rec.Runs, "runs", 20, "runs per interruption (kill -9, SIGTERM)")
	recovery.Flags().IntVar(&rec.Requests, "requests", 1000, "rotation requests per burst")
	recovery.Flags().IntVar(&rec.Clients, "clients", 16, "concurrent HTTP clients")
	recovery.Flags().IntVar(&rec.Secrets, "secrets", 24, "secrets (half per tenant)")
	recovery.Flags().IntVar(&rec.Restores, "restores", 10, "restore-after-kill-mid-revocation runs")
	recovery.Flags().IntVar(&rec.RevokeSecrets, "revoke-secrets", 200, "secrets of the revoked tenant in the restore runs")
	recovery.Flags().BoolVar(&rec.Cluster, "cluster", false, "also run --runs per interruption with 3 replicas on a 3-node NATS cluster (one interrupted, the others take over)")
	var sc bench.SidecarOptions
	var sideProfile string
	side := &cobra.Command{
		Use:   "sidecar",
		Short: "cached reads through each API of rekey-agent and in-process agent.Get (reads/s, p50/p99)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			stopProfile, err := startCPUProfile(sideProfile)
			if err != nil {
				return err
			}
			defer stopProfile()
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
			rows, err := bench.Sidecar(ctx, sc, log)
			bench.PrintSidecar(cmd.OutOrStdout(), sc, rows)
			return err
		},
	}
	side.Flags().IntVar(&sc.Clients, "clients", 8, "concurrent clients, each with a keep-alive connection")
	side.Flags().DurationVar(&sc.Duration, "duration", 3*time.Second, "run of each path")
	side.Flags().BoolVar(&sc.HTTPClient, "http-client", false, "read with Go's http.Client in this process instead of the raw HTTP/1.1 clients")
	side.Flags().BoolVar(&sc.SameProcess, "same-process", false, "run the raw clients in this process, not in a process of their own")
	side.Flags().StringVar(&sideProfile, "cpuprofile", "", "write a CPU profile of this process (sidecar, and the clients unless they run in processes of their own) to this file")
	var fleetSizes []int
	var fleetRotations, fleetProcs, fleetRuns int
	fleet := &cobra.Command{
		Use:   "sidecar-fleet",
		Short: "rotation finished -> last of N sidecars serving the new version, next to N in-process agents in the same rotations and processes",
		Long: `sidecar-fleet starts rekeyd (with the embedded NATS server) in a process of
its own and --procs processes (this binary, started again), each holding
N/procs in-process agents and as many rekey-agent sidecars (fanout/sidecar
servers, each with its own agent, NATS connection and loopback listener) with
an application client each. After every rotation it times, from
RotationCompleted.CompletedAt, the last in-process agent.Get returning the new
version and the last sidecar client reading it (the rotated event of
GET /v1/events, then GET /v1/secrets/{secret}), and prints p50/p99/max of
both and the ratio of the p99s.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
			var results []bench.SidecarFleetResult
			for run := 1; run <= fleetRuns; run++ {
				for _, n := range fleetSizes {
					res, err := bench.SidecarFleet(ctx, bench.SidecarFleetOptions{Sidecars: n, Rotations: fleetRotations, Procs: fleetProcs}, log)
					if err != nil {
						return fmt.Errorf("%d sidecars, run %d: %w", n, run, err)
					}
					results = append(results, res)
				}
			}
			bench.PrintSidecarFleet(cmd.OutOrStdout(), results)
			return nil
		},
	}
	fleet.Flags().IntSliceVar(&fleetSizes, "sidecars", []int{1000}, "sidecar counts (and as many in-process agents) to measure")
	fleet.Flags().IntVar(&fleetRotations, "rotations", 50, "rotations measured per count and run")
	fleet.Flags().IntVar(&fleetProcs, "procs", 10, "processes the agents and sidecars are spread over")
	fleet.Flags().IntVar(&fleetRuns, "runs", 1, "runs of every count, each with fresh processes")
	rotOpts := bench.RotationsOptions{KillSwitch: true}
	var rotProfile string
	rotCmd := &cobra.Command{
		Use:   "rotations",
		Short: "full rotation sagas on the local backend: rotations/s, CPU and JetStream writes per rotation; then a tenant's kill switch over them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			stopProfile, err := startCPUProfile(rotProfile)
			if err != nil {
				return err
			}
			defer stopProfile()
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: "error"}, os.Stderr)
			res, err := bench.Rotations(ctx, rotOpts, log)
			if err != nil {
				return err
			}
			res.Print(cmd.OutOrStdout())
			return nil
		},
	}
	rotCmd.Flags().IntVar(&rotOpts.Secrets, "secrets", 1000, "local secrets of the bench tenant; each round rotates each once")
	rotCmd.Flags().IntVar(&rotOpts.Rounds, "rounds", 3, "rounds")
	rotCmd.Flags().IntVar(&rotOpts.Concurrency, "concurrency", 0, "rotation.concurrency (0: rekey's default)")
	rotCmd.Flags().BoolVar(&rotOpts.KillSwitch, "kill-switch", true, "then revoke the bench tenant and time its report")
	rotCmd.Flags().StringVar(&rotProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	cmd.AddCommand(prop, get, fan, hook, capacity, flood, recovery, side, fleet, rotCmd)
	return cmd
}

// startCPUProfile writes a CPU profile of this process to path until stop
// is called; an empty path profiles nothing.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
