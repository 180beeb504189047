package daemon

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/cron"
	"github.com/rekey-dev/rekey/triggers/siem"
	"github.com/rekey-dev/rekey/triggers/usage"
)

// knownTriggers are the sections rekey.yaml may have under triggers:.
var knownTriggers = []string{"awsevents", "cron", "selfservice", "siem", "usage"}

// checkTriggerSections refuses a section of a trigger this build lacks.
func checkTriggerSections(cfg *orchestrator.Config) error {
	for _, name := range slices.Sorted(maps.Keys(cfg.Triggers)) {
		if !slices.Contains(knownTriggers, name) {
			return orchestrator.FieldErrorf("triggers."+name, "unknown trigger (known: %s)", strings.Join(knownTriggers, ", "))
		}
	}
	return nil
}

// buildTriggers builds the cron, use-count and SIEM triggers from their
// sections; the SIEM webhook routes are mounted on the HTTP server.
func (d *Daemon) buildTriggers(audit *orchestrator.Auditor, log *slog.Logger) ([]orchestrator.Named, error) {
	cfg := &d.cfg
	var comps []orchestrator.Named

	cronCfg, err := cron.ParseConfig(cfg.Triggers["cron"])
	if err != nil {
		return nil, err
	}
	if cronCfg.Enabled {
		t, err := cron.New(cronCfg, cfg, d.roles[orchestrator.RoleAPI], audit, d.metrics, log)
		if err != nil {
			return nil, err
		}
		// One scheduler for all replicas: one request and audit record per tick.
		comps = append(comps, orchestrator.Named{Name: "cron", Component: d.leases.Exclusive("cron", t)})
	}

	usageCfg, err := usage.ParseConfig(cfg.Triggers["usage"])
	if err != nil {
		return nil, err
	}
	if usageCfg.Enabled {
		t, err := usage.New(usageCfg, cfg, d.roles[orchestrator.RoleAPI], audit, d.metrics, log)
		if err != nil {
			return nil, err
		}
		comps = append(comps, orchestrator.Named{Name: "usage", Component: t})
	}

	if raw, ok := cfg.Triggers["siem"]; ok {
		siemCfg, err := siem.ParseConfig(raw, cfg)
		if err != nil {
			return nil, err
		}
		h, err := siem.New(siemCfg, cfg, d.roles[orchestrator.RoleAPI], audit, d.metrics, log)
		if err != nil {
			return nil, fmt.Errorf("triggers.siem: %w", err)
		}
		h.Register(d.http.Mux)
	}

	if raw, ok := cfg.Triggers["awsevents"]; ok {
		aws, err := d.buildAWSEvents(raw, audit, log)
		if err != nil {
			return nil, err
		}
		comps = append(comps, aws...)
	}
	return comps, nil
}
