// Command rekeyd is the rekey daemon: with no flags it runs the embedded
// default (nats-server inside the process, the local backend, the example
// configuration with tenants acme and globex).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/rekey-dev/rekey/deployments/examples"
	"github.com/rekey-dev/rekey/internal/daemon"
	"github.com/rekey-dev/rekey/orchestrator"
)

type flags struct {
	config   string
	dataDir  string
	httpAddr string
	natsAddr string
	natsURL  string
}

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "rekeyd:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	var f flags
	root := &cobra.Command{
		Use:   "rekeyd",
		Short: "rekey daemon: event-driven secret rotation and revocation for AI-agent platforms",
		Long: `rekeyd consumes rotation and revocation requests from NATS, drives the
secret backends through the rotation saga and pushes cache invalidations to
every running agent. With no flags it runs the embedded default: nats-server
inside the process (JetStream under --data-dir), the local backend and the
example configuration (tenants acme and globex).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, f)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := orchestrator.NewLogger(cfg.Log, os.Stderr)
			gogc := daemon.SetGCPercent()
			d, err := daemon.New(ctx, daemon.Options{Config: cfg, Logger: log, AdminToken: os.Getenv("REKEY_ADMIN_TOKEN")})
			if err != nil {
				return err
			}
			log.Info("rekeyd ready", "http", d.HTTPAddr(), "nats", orchestrator.RedactURL(d.NATSURL()), "data_dir", cfg.DataDir,
				"admin_token", tokenHint(cfg.DataDir), "gogc", gogc)
			return d.Run(ctx)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&f.config, "config", "", "path to rekey.yaml (default: the embedded example configuration)")
	pf.StringVar(&f.dataDir, "data-dir", "", "data directory (default ./rekey-data)")
	pf.StringVar(&f.httpAddr, "http-addr", "", "HTTP API address (default 127.0.0.1:7420)")
	pf.StringVar(&f.natsAddr, "nats-addr", "", "embedded NATS server address (default 127.0.0.1:4222)")
	pf.StringVar(&f.natsURL, "nats-url", "", "use this external NATS instead of the embedded server")
	root.AddCommand(newDemo(&f))
	return root
}

// loadConfig reads --config (or the embedded example) and applies the flags
// that were set on top of it.
func loadConfig(cmd *cobra.Command, f flags) (orchestrator.Config, error) {
	var cfg orchestrator.Config
	var err error
	if f.config != "" {
		cfg, err = orchestrator.Load(f.config)
	} else {
		cfg, err = orchestrator.Parse(examples.RekeyYAML)
	}
	if err != nil {
		return cfg, err
	}
	set := func(name string) bool { return cmd.Flags().Changed(name) }
	if set("data-dir") {
		cfg.DataDir = f.dataDir
	}
	if set("http-addr") {
		cfg.HTTP.Addr = f.httpAddr
	}
	if set("nats-addr") {
		cfg.NATS.Embedded.Addr = f.natsAddr
	}
	if set("nats-url") {
		cfg.NATS.URL = f.natsURL
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

func tokenHint(dataDir string) string {
	if os.Getenv("REKEY_ADMIN_TOKEN") != "" {
		return "from REKEY_ADMIN_TOKEN"
	}
	return "in " + dataDir + "/" + orchestrator.AdminTokenFile
}
