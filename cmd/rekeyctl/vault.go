package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rekey-dev/rekey/handlers/vault"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

func newVaultPolicy() *cobra.Command {
	var config string
	var rekey bool
	cmd := &cobra.Command{
		Use:   "vault-policy [TENANT]",
		Short: "print the Vault HCL policy of a tenant's agents (read only their own paths), or --rekey for rekeyd's own",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if config == "" {
				return errors.New("--config is required: the policy follows backends.vault's templates")
			}
			cfg, err := orchestrator.Load(config)
			if err != nil {
				return err
			}
			if len(cfg.Backends.Vault) == 0 {
				return fmt.Errorf("%s has no backends.vault section", config)
			}
			vcfg, err := vault.ParseConfig(cfg.Backends.Vault, &cfg)
			if err != nil {
				return err
			}
			if rekey {
				_, err = fmt.Fprint(cmd.OutOrStdout(), vcfg.RekeyPolicy())
				return err
			}
			if len(args) != 1 {
				return errors.New("name a tenant, or use --rekey")
			}
			if err := schemas.ValidateID("tenant", args[0]); err != nil {
				return err
			}
			if _, ok := cfg.Tenants[args[0]]; !ok {
				return fmt.Errorf("tenant %q is not in %s", args[0], config)
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), vcfg.Policy(args[0]))
			return err
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "rekey.yaml with a backends.vault section")
	cmd.Flags().BoolVar(&rekey, "rekey", false, "print the least-privilege policy of rekeyd itself")
	return cmd
}
