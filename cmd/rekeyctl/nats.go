package main

import (
	"fmt"

	"github.com/nats-io/nkeys"
	"github.com/spf13/cobra"

	"github.com/rekey-dev/rekey/deployments/examples"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/agentauth"
	"github.com/rekey-dev/rekey/schemas"
)

// agentCreds is what an agent of one tenant needs to connect to rekeyd's
// embedded NATS.
type agentCreds struct {
	Tenant      string `json:"tenant"`
	URL         string `json:"url"`
	User        string `json:"user"`
	Password    string `json:"password"`
	InboxPrefix string `json:"inbox_prefix"`
}

func newAgentCreds(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "agent-creds TENANT",
		Short: "print the NATS credentials of a tenant's agents on rekeyd's embedded NATS (reads --data-dir)",
		Long: `agent-creds prints the user, password and inbox prefix with which the
agents of one tenant connect to rekeyd's embedded NATS server. The password is
derived from <data-dir>/nats.secret; those credentials may subscribe only to
the tenant's invalidations and publish only its acks, use reports and presence.
Agents must connect with nats.CustomInboxPrefix(inbox_prefix).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t := args[0]
			if err := schemas.ValidateID("tenant", t); err != nil {
				return err
			}
			auth, err := orchestrator.ReadNATSAuth(g.dataDir)
			if err != nil {
				return fmt.Errorf("%w (run next to rekeyd's data dir, or set --data-dir)", err)
			}
			user := orchestrator.AgentUser(t)
			return printJSON(cmd.OutOrStdout(), agentCreds{
				Tenant: t, URL: g.natsURL, User: user, Password: auth.Password(user), InboxPrefix: schemas.AgentInboxPrefix(t),
			})
		},
	}
}

func newNATSConfig() *cobra.Command {
	var config, issuer string
	cmd := &cobra.Command{
		Use:   "nats-config",
		Short: "print the nats-server users and permissions rekey needs on an external NATS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg orchestrator.Config
			var err error
			if config != "" {
				cfg, err = orchestrator.Load(config)
			} else {
				cfg, err = orchestrator.Parse(examples.RekeyYAML)
			}
			if err != nil {
				return err
			}
			if aa := cfg.NATS.AgentAuth; issuer == "" && aa != nil && aa.CalloutIssuerSeedFile != "" {
				kp, err := agentauth.LoadIssuer(aa.CalloutIssuerSeedFile)
				if err != nil {
					return err
				}
				if issuer, err = kp.PublicKey(); err != nil {
					return err
				}
			}
			if issuer != "" && !nkeys.IsValidPublicAccountKey(issuer) {
				return fmt.Errorf("--callout-issuer %q: not an account public key (A...)", issuer)
			}
			block := orchestrator.NATSConfigBlock(cfg.TenantNames())
			if issuer != "" {
				block = orchestrator.NATSCalloutConfigBlock(cfg.TenantNames(), issuer)
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), block)
			return err
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "rekey.yaml whose tenants to print (default: the embedded example)")
	cmd.Flags().StringVar(&issuer, "callout-issuer", "", "print the auth callout block (agents log in with workload identities) with this issuer account public key (A...); default: the public key of nats.agent_auth.callout_issuer_seed_file")
	return cmd
}
