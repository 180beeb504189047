// Command rekey-agent is rekey's agent as a local sidecar: one process per
// pod, host or VM that holds one tenant's fanout/agent (cache, push
// invalidation, acks, heartbeats, resync, use reports, fail closed) and
// serves it through rekey's own API, the AWS Secrets Manager Agent
// protocol, the Secrets Manager JSON API and a Vault read API, so that
// programs in any language read through it without code changes. See
// package fanout/sidecar and the README section "rekey-agent".
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/goccy/go-yaml"
	vault "github.com/hashicorp/vault/api"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/awsfetch"
	"github.com/rekey-dev/rekey/fanout/agent/vaultfetch"
	"github.com/rekey-dev/rekey/fanout/sidecar"
	"github.com/rekey-dev/rekey/schemas"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "rekey-agent:", err)
		os.Exit(1)
	}
}

// options are the flags. Every flag can also be set in the environment as
// REKEY_AGENT_<FLAG> (upper case, - as _) or in the YAML file under its
// name; the command line wins, then the environment, then the file.
type options struct {
	configFile string

	tenant, instance, tool string
	natsURL, natsUser      string
	natsTokenFile          string
	fetcher                string
	ttl                    time.Duration
	logLevel               string

	listen, awsAgentListen, awsAPIListen, vaultListen string
	tokenFile, awsAgentTokenFile, awsSecretKeyFile    string
	awsAccessKeyID, vaultTokenFile                    string
	maxSkew, requestTimeout                           time.Duration
	awsAgentTool, awsAPITool, vaultTool               string
	maxRuns                                           int
	runTTL                                            time.Duration
	maxScanBytes                                      int64
}

// Environment variables holding secrets (never flags: the command line is
// visible to every user of the host).
const (
	envToken        = "REKEY_AGENT_TOKEN"
	envNATSPassword = "REKEY_AGENT_NATS_PASSWORD"
	envAWSSecretKey = "REKEY_AGENT_AWS_SECRET_ACCESS_KEY"
	envVaultToken   = "REKEY_AGENT_VAULT_TOKEN"
)

// awsAgentTokenEnv are read in order for the AWS agent's SSRF token, as
// AWS's agent does; a value file://<path> names a file holding it.
var awsAgentTokenEnv = []string{"AWS_TOKEN", "AWS_SESSION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN"}

func newRoot() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "rekey-agent",
		Short: "local rekey agent: a push-invalidated secret cache behind the AWS Secrets Manager Agent, Secrets Manager, Vault and rekey APIs",
		Long: `rekey-agent holds one tenant's rekey agent (one NATS connection with the
tenant's agent identity) and serves its cache on local listeners, each on a
loopback address or a Unix socket (unix:/path, mode 0600), off when empty.

Every flag can also be given as REKEY_AGENT_<FLAG> in the environment
(e.g. REKEY_AGENT_TENANT) or in the --config YAML file under its flag name;
the command line wins over the environment, which wins over the file. The
file may also hold a "mapping:" section (see the README, "rekey-agent").

Secrets are read from files or the environment, never from flags:
  ` + envToken + `            bearer token of --listen (or --token-file)
  AWS_TOKEN (AWS_SESSION_TOKEN, AWS_CONTAINER_AUTHORIZATION_TOKEN)
                               SSRF token of --aws-agent-listen, as AWS's agent
                               reads it (file://<path> allowed; or --aws-agent-token-file)
  ` + envAWSSecretKey + ` secret key of --aws-api-listen (or --aws-secret-access-key-file)
  ` + envVaultToken + `      token of --vault-listen (or --vault-token-file)
  ` + envNATSPassword + `    password of --nats-user`,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := o.load(cmd.Flags())
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, o, m)
		},
	}
	cmd.AddCommand(newProbe())
	f := cmd.Flags()
	f.StringVar(&o.configFile, "config", "", "YAML file with flag values and a mapping: section")
	f.StringVar(&o.tenant, "tenant", "", "tenant served (required)")
	f.StringVar(&o.instance, "instance", "", "agent instance id in acks and use reports (default: host name and pid)")
	f.StringVar(&o.tool, "tool", "", "tool name reported with uses: the default of rekey's own API and of every API without its own --*-tool (a request's X-Rekey-Tool header wins)")
	f.StringVar(&o.natsURL, "nats-url", "nats://127.0.0.1:4222", "rekey's NATS URL")
	f.StringVar(&o.natsUser, "nats-user", "", "NATS user (the tenant's agent user; password in "+envNATSPassword+")")
	f.StringVar(&o.natsTokenFile, "nats-token-file", "", "workload identity token file (JWT), read at every connect (instead of --nats-user)")
	f.StringVar(&o.fetcher, "fetcher", "local", "where values are read: local (rekeyd's fetch server), vault (VAULT_ADDR, VAULT_TOKEN), aws (the AWS default credential chain)")
	f.DurationVar(&o.ttl, "ttl", agent.DefaultTTL, "backstop age of a cached value (invalidations keep the cache right)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.listen, "listen", sidecar.DefaultListen, "rekey's own API (GET /v1/secrets/{secret}, /v1/events, POST /v1/scan, DELETE /v1/runs/{id}, /healthz, /readyz, /metrics); empty: off")
	f.StringVar(&o.tokenFile, "token-file", "", "file with the bearer token of --listen (else env "+envToken+")")
	f.StringVar(&o.awsAgentListen, "aws-agent-listen", sidecar.DefaultAWSAgentListen, "AWS Secrets Manager Agent protocol; empty: off")
	f.StringVar(&o.awsAgentTokenFile, "aws-agent-token-file", "", "file with the SSRF token of --aws-agent-listen (else env AWS_TOKEN...)")
	f.StringVar(&o.awsAPIListen, "aws-api-listen", "", "Secrets Manager JSON 1.1 API (SigV4); empty: off")
	f.StringVar(&o.awsAccessKeyID, "aws-access-key-id", "", "access key id local clients of --aws-api-listen sign with")
	f.StringVar(&o.awsSecretKeyFile, "aws-secret-access-key-file", "", "file with its secret access key (else env "+envAWSSecretKey+")")
	f.DurationVar(&o.maxSkew, "max-skew", sidecar.DefaultMaxSkew, "largest difference between a SigV4 request's date and now")
	f.StringVar(&o.vaultListen, "vault-listen", "", "Vault HTTP API subset; empty: off")
	f.StringVar(&o.vaultTokenFile, "vault-token-file", "", "file with the sidecar-local token of --vault-listen (else env "+envVaultToken+")")
	f.DurationVar(&o.requestTimeout, "request-timeout", sidecar.DefaultRequestTimeout, "bound of one read (a fetch on a miss)")
	f.StringVar(&o.awsAgentTool, "aws-agent-tool", "", "tool reported for reads through --aws-agent-listen without X-Rekey-Tool (default --tool)")
	f.StringVar(&o.awsAPITool, "aws-api-tool", "", "tool reported for reads through --aws-api-listen without X-Rekey-Tool (default --tool)")
	f.StringVar(&o.vaultTool, "vault-tool", "", "tool reported for reads through --vault-listen without X-Rekey-Tool (default --tool)")
	f.IntVar(&o.maxRuns, "max-runs", sidecar.DefaultMaxRuns, "pipeline runs (X-Rekey-Run) open at once; more are refused")
	f.DurationVar(&o.runTTL, "run-ttl", agent.DefaultRunTTL, "a run's credentials live at most this long; a run never ended (DELETE /v1/runs/{id}) ends then")
	f.Int64Var(&o.maxScanBytes, "max-scan-bytes", sidecar.DefaultMaxScanBytes, "largest body of POST /v1/scan (413 beyond)")
	return cmd
}

// load fills the flags not given on the command line from the environment
// and the file, and returns the mapping.
func (o *options) load(fs *pflag.FlagSet) (sidecar.Mapping, error) {
	// The file: flag values by flag name, and the mapping.
	var flags map[string]any
	var mapping sidecar.Mapping
	path := o.configFile
	if path == "" {
		path = os.Getenv("REKEY_AGENT_CONFIG")
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return sidecar.Mapping{}, fmt.Errorf("config: %w", err)
		}
		if err := yaml.Unmarshal(b, &flags); err != nil {
			return sidecar.Mapping{}, fmt.Errorf("config %s: %w", path, err)
		}
		if m, ok := flags["mapping"]; ok {
			delete(flags, "mapping")
			mb, err := yaml.Marshal(m)
			if err == nil {
				err = yaml.UnmarshalWithOptions(mb, &mapping, yaml.Strict())
			}
			if err != nil {
				return sidecar.Mapping{}, fmt.Errorf("config %s: mapping: %w", path, err)
			}
		}
	}
	var errs []error
	known := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) {
		known[f.Name] = true
		if f.Changed || f.Name == "config" {
			return
		}
		env := "REKEY_AGENT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", env, err))
			}
			return
		}
		if v, ok := flags[f.Name]; ok {
			if err := f.Value.Set(fmt.Sprint(v)); err != nil {
				errs = append(errs, fmt.Errorf("config %s: %w", f.Name, err))
			}
		}
	})
	for k := range flags {
		if !known[k] || k == "config" {
			errs = append(errs, fmt.Errorf("config: unknown key %q (keys are flag names and mapping)", k))
		}
	}
	return mapping, errors.Join(errs...)
}

// secretFrom reads a secret from a file if path is set, else from env.
func secretFrom(path, env string) (string, error) {
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("read %s: %w", path, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return os.Getenv(env), nil
}

// awsAgentToken reads the SSRF token as AWS's agent does.
func awsAgentToken(path string) (string, error) {
	if path != "" {
		return secretFrom(path, "")
	}
	for _, env := range awsAgentTokenEnv {
		v, ok := os.LookupEnv(env)
		if !ok {
			continue
		}
		if p, ok := strings.CutPrefix(v, "file://"); ok {
			return secretFrom(p, "")
		}
		return v, nil
	}
	return "", nil
}

func defaultInstance() string {
	host, _ := os.Hostname()
	b := []byte(host)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 100 {
		b = b[:100]
	}
	id := fmt.Sprintf("%s-%d", b, os.Getpid())
	if schemas.ValidateInstance(id) != nil {
		id = fmt.Sprintf("rekey-agent-%d", os.Getpid())
	}
	return id
}

func run(ctx context.Context, o *options, m sidecar.Mapping) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if o.instance == "" {
		o.instance = defaultInstance()
	}
	cfg := sidecar.Config{
		Tenant: o.tenant, Listen: o.listen, AWSAgentListen: o.awsAgentListen, AWSAPIListen: o.awsAPIListen,
		VaultListen: o.vaultListen, AWSAccessKeyID: o.awsAccessKeyID, MaxSkew: o.maxSkew,
		RequestTimeout: o.requestTimeout, Mapping: m, Logger: log,
		Tool: o.tool, AWSAgentTool: o.awsAgentTool, AWSAPITool: o.awsAPITool, VaultTool: o.vaultTool,
		MaxRuns: o.maxRuns, RunTTL: o.runTTL, MaxScanBytes: o.maxScanBytes,
	}
	var nc *nats.Conn
	// Ready once connected and resynced (after a reconnect, once the
	// invalidations missed meanwhile are replayed); the listeners open
	// only after the agent started.
	var started atomic.Pointer[agent.Agent]
	cfg.Ready = func() bool { a := started.Load(); return a != nil && a.Synced() }
	var err error
	read := func(dst *string, on bool, get func() (string, error)) {
		if on && err == nil {
			*dst, err = get()
		}
	}
	read(&cfg.Token, o.listen != "", func() (string, error) { return secretFrom(o.tokenFile, envToken) })
	read(&cfg.AWSAgentToken, o.awsAgentListen != "", func() (string, error) { return awsAgentToken(o.awsAgentTokenFile) })
	read(&cfg.AWSSecretAccessKey, o.awsAPIListen != "", func() (string, error) { return secretFrom(o.awsSecretKeyFile, envAWSSecretKey) })
	read(&cfg.VaultToken, o.vaultListen != "", func() (string, error) { return secretFrom(o.vaultTokenFile, envVaultToken) })
	if err != nil {
		return err
	}
	srv, err := sidecar.New(cfg, nil)
	if err != nil {
		return err
	}

	opts := append(agent.NATSOptions(o.tenant, o.instance), nats.Name("rekey-agent-"+o.instance))
	switch {
	case o.natsTokenFile != "":
		opts = append(opts, nats.TokenHandler(agent.TokenFile(o.natsTokenFile)))
	case o.natsUser != "":
		opts = append(opts, nats.UserInfo(o.natsUser, os.Getenv(envNATSPassword)))
	}
	nc, err = nats.Connect(o.natsURL, opts...)
	if err != nil {
		return fmt.Errorf("connect %s: %w", o.natsURL, err)
	}
	defer nc.Close()

	g, gctx := errgroup.WithContext(ctx)
	onInv := srv.OnInvalidate
	var fetcher agent.Fetcher
	var runIssuer agent.RunIssuer
	switch o.fetcher {
	case "local":
	case "aws":
		awsCfg, err := config.LoadDefaultConfig(ctx)
		if err != nil {
			return fmt.Errorf("fetcher aws: %w", err)
		}
		fetcher, err = awsfetch.New(secretsmanager.NewFromConfig(awsCfg), awsfetch.Config{
			NameTemplate: m.Defaults().AWSNameTemplate, Names: m.AWSNames,
		})
		if err != nil {
			return err
		}
	case "vault":
		fetcher, runIssuer, onInv, err = vaultFetcher(g, gctx, m, o.ttl, log, srv.OnInvalidate)
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("fetcher %q: local, vault or aws", o.fetcher)
	}
	a, err := agent.New(nc, fetcher, agent.Config{
		Tenant: o.tenant, Instance: o.instance, Tool: o.tool, TTL: o.ttl, Logger: log, OnInvalidate: onInv,
		RunIssuer: runIssuer,
	})
	if err != nil {
		return err
	}
	srv.SetSource(a)
	if err := a.Start(ctx); err != nil {
		return fmt.Errorf("start agent (is rekeyd reachable at %s?): %w", o.natsURL, err)
	}
	started.Store(a)
	g.Go(func() error { return a.Run(gctx) })
	g.Go(func() error { return srv.Run(gctx) })
	log.Info("rekey-agent started", "tenant", o.tenant, "agent", o.instance, "fetcher", o.fetcher)
	return g.Wait()
}

// vaultFetcher reads KV secrets and the configured database roles from
// Vault (VAULT_ADDR, VAULT_TOKEN...) with the sidecar's own identity.
func vaultFetcher(g *errgroup.Group, ctx context.Context, m sidecar.Mapping, ttl time.Duration, log *slog.Logger,
	onInv func(agent.Invalidated)) (agent.Fetcher, agent.RunIssuer, func(agent.Invalidated), error) {
	client, err := vault.NewClient(vault.DefaultConfig())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("fetcher vault: %w", err)
	}
	m = m.Defaults()
	kv, err := vaultfetch.NewKV(client, vaultfetch.KVConfig{
		Mount: m.VaultKVMount, PathTemplate: m.VaultPathTemplate, Field: m.VaultField, Paths: m.VaultPaths,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if len(m.VaultStaticRoles) == 0 && len(m.VaultDynamicRoles) == 0 && len(m.VaultRunRoles) == 0 {
		return kv, nil, onInv, nil
	}
	db, err := vaultfetch.NewDatabase(client, vaultfetch.DatabaseConfig{
		Mount: m.VaultDatabaseMount, StaticRoles: m.VaultStaticRoles, DynamicRoles: m.VaultDynamicRoles,
		RunRoles: m.VaultRunRoles, HoldFor: ttl, Logger: log,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	routes := map[string]agent.Fetcher{}
	for _, s := range db.Secrets() {
		routes[s] = db
	}
	mux, err := vaultfetch.NewMux(vaultfetch.MuxConfig{Routes: routes, Default: kv})
	if err != nil {
		return nil, nil, nil, err
	}
	g.Go(func() error { return db.Run(ctx) })
	var iss agent.RunIssuer
	if len(m.VaultRunRoles) > 0 {
		iss = db
	}
	return mux, iss, func(ev agent.Invalidated) { db.Invalidated(ev); onInv(ev) }, nil
}
