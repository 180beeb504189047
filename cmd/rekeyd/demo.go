package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/orchestrator"
)

func newDemo(_ *flags) *cobra.Command {
	var verbose bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "run rekeyd with simulated agents; rotate, revoke and restore, and show how fast agents drop old values",
		Long: `demo starts rekeyd on the embedded default (a temporary data directory,
free ports) and four simulated agents per tenant that read their secrets in a
loop, as tool calls do. It then rotates two secrets, revokes tenant globex and
restores it, and prints for each event how long every agent took to drop the
old value. It never prints a value, only its version and a hash prefix.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			level := "error"
			if verbose {
				level = "info"
			}
			log := orchestrator.NewLogger(orchestrator.LogConfig{Level: level, Format: "text"}, os.Stderr)
			return demo.Demo(ctx, cmd.OutOrStdout(), log)
		},
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "show rekeyd's logs")
	return cmd
}
