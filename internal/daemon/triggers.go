package daemon

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/rekey-dev/rekey/handlers/vault"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/cron"
	"github.com/rekey-dev/rekey/triggers/leak"
	"github.com/rekey-dev/rekey/triggers/siem"
	"github.com/rekey-dev/rekey/triggers/usage"
	"github.com/rekey-dev/rekey/triggers/vaultevents"
)

// triggerKind builds the trigger of one section under triggers: of
// rekey.yaml. Whether it runs is one rule for all (Config.TriggerOn);
// build is called only when it does, with the section (nil when absent)
// and the common dependencies on the API role's connection.
type triggerKind struct {
	name string
	// defaultOn: on without a section (its work is set on each secret).
	defaultOn bool
	build     func(ctx context.Context, d *Daemon, raw []byte, deps orchestrator.Deps) ([]orchestrator.Named, error)
}

// triggerKinds are the triggers this build has. selfservice (tenant
// tokens) is a section too, read by the HTTP API (buildAPI).
var triggerKinds = []triggerKind{
	{name: "cron", defaultOn: true, build: buildCron},
	{name: "usage", defaultOn: true, build: buildUsage},
	{name: "leak", defaultOn: true, build: buildLeak},
	{name: "siem", build: buildSIEM},
	{name: "awsevents", build: buildAWSEvents},
	{name: "vaultevents", build: buildVaultEvents},
}

// sectionsOutsideTable are the sections under triggers: read by another
// component than a trigger.
var sectionsOutsideTable = []string{"selfservice"}

// checkTriggerSections refuses a section of a trigger this build lacks.
func checkTriggerSections(cfg *orchestrator.Config) error {
	known := slices.Clone(sectionsOutsideTable)
	for _, k := range triggerKinds {
		known = append(known, k.name)
	}
	slices.Sort(known)
	for _, name := range slices.Sorted(maps.Keys(cfg.Triggers)) {
		if !slices.Contains(known, name) {
			return orchestrator.FieldErrorf("triggers."+name, "unknown trigger (known: %s)", strings.Join(known, ", "))
		}
	}
	return nil
}

// buildTriggers builds every trigger that is on, each on the API role's
// connection.
func (d *Daemon) buildTriggers(ctx context.Context) ([]orchestrator.Named, error) {
	var comps []orchestrator.Named
	for _, k := range triggerKinds {
		on, err := d.cfg.TriggerOn(k.name, k.defaultOn)
		if err != nil {
			return nil, err
		}
		if !on {
			d.log.Info("trigger off", "trigger", k.name)
			continue
		}
		c, err := k.build(ctx, d, d.cfg.Triggers[k.name], d.deps(orchestrator.RoleAPI))
		if err != nil {
			return nil, err
		}
		comps = append(comps, c...)
	}
	return comps, nil
}

func buildCron(_ context.Context, d *Daemon, raw []byte, deps orchestrator.Deps) ([]orchestrator.Named, error) {
	cfg, err := cron.ParseConfig(raw)
	if err != nil {
		return nil, err
	}
	t, err := cron.New(cfg, deps)
	if err != nil {
		return nil, err
	}
	// One scheduler for all replicas: one request and audit record per tick.
	return []orchestrator.Named{{Name: "cron", Component: d.leases.Exclusive("cron", t)}}, nil
}

func buildUsage(_ context.Context, _ *Daemon, raw []byte, deps orchestrator.Deps) ([]orchestrator.Named, error) {
	cfg, err := usage.ParseConfig(raw)
	if err != nil {
		return nil, err
	}
	t, err := usage.New(cfg, deps)
	if err != nil {
		return nil, err
	}
	return []orchestrator.Named{{Name: "usage", Component: t}}, nil
}

// buildSIEM mounts the webhook routes on the HTTP server; it has no
// component of its own.
func buildSIEM(_ context.Context, d *Daemon, raw []byte, deps orchestrator.Deps) ([]orchestrator.Named, error) {
	cfg, err := siem.ParseConfig(raw, deps.Rekey)
	if err != nil {
		return nil, err
	}
	h, err := siem.New(cfg, deps)
	if err != nil {
		return nil, fmt.Errorf("triggers.siem: %w", err)
	}
	h.Register(d.http.Mux)
	return nil, nil
}

// buildLeak acts on agents' leak reports (and canary sightings) by each
// secret's policy; on by default, like usage, since agents report leaks
// whenever they scan their output.
func buildLeak(_ context.Context, _ *Daemon, raw []byte, deps orchestrator.Deps) ([]orchestrator.Named, error) {
	cfg, err := leak.ParseConfig(raw)
	if err != nil {
		return nil, err
	}
	t, err := leak.New(cfg, deps)
	if err != nil {
		return nil, err
	}
	return []orchestrator.Named{{Name: "leak", Component: t}}, nil
}

// buildVaultEvents subscribes to Vault's event stream for the kind kv
// secrets of the Vault backend, on one replica at a time.
func buildVaultEvents(_ context.Context, d *Daemon, raw []byte, deps orchestrator.Deps) ([]orchestrator.Named, error) {
	cfg, err := vaultevents.ParseConfig(raw, deps.Rekey)
	if err != nil {
		return nil, err
	}
	if len(d.cfg.Backends.Vault) == 0 {
		return nil, orchestrator.FieldErrorf(vaultevents.Section, "needs backends.vault: its secrets are what Vault's events are mapped to")
	}
	vcfg, err := vault.ParseConfig(d.cfg.Backends.Vault, &d.cfg)
	if err != nil {
		return nil, err
	}
	locs, err := vcfg.KVLocations()
	if err != nil {
		return nil, err
	}
	for _, l := range locs {
		if l.Namespace != "" {
			return nil, orchestrator.FieldErrorf(vaultevents.Section, "%s/%s is in Vault namespace %q: events of namespaces are not subscribed to", l.Tenant, l.Secret, l.Namespace)
		}
		cfg.Secrets = append(cfg.Secrets, vaultevents.Location{Tenant: l.Tenant, Secret: l.Secret, Mount: l.Mount, Path: l.Path})
	}
	if cfg.Address == "" {
		cfg.Address = vcfg.Address
	}
	t, err := vaultevents.New(cfg, deps)
	if err != nil {
		return nil, err
	}
	// One subscriber for all replicas: one request per outside change.
	return []orchestrator.Named{{Name: "vaultevents", Component: d.leases.Exclusive("vaultevents", t)}}, nil
}
