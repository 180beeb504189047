package orchestrator

import (
	"fmt"
	"log/slog"
)

// Deps are what every component of rekeyd is built with: the whole
// configuration, the bus connection of the component's role, the audit
// trail on that connection, the metrics registry and the logger.
// Components that need more (a state, a catalog, leases) take a Deps of
// their own that embeds this one; no component is finished through
// setters after it is built.
type Deps struct {
	Rekey   *Config
	Bus     *Bus
	Audit   *Auditor
	Metrics *Metrics
	Log     *slog.Logger
}

// Check returns an error naming the first of the required dependencies
// ("rekey", "bus", "audit") that is nil, and fills Metrics and Log with a
// fresh registry and slog.Default when they are nil. component prefixes
// the error.
func (d *Deps) Check(component string, required ...string) error {
	for _, name := range required {
		var missing bool
		switch name {
		case "rekey":
			missing = d.Rekey == nil
		case "bus":
			missing = d.Bus == nil
		case "audit":
			missing = d.Audit == nil
		default:
			return fmt.Errorf("%s: deps: unknown dependency %q", component, name)
		}
		if missing {
			return fmt.Errorf("%s: deps: %s is required", component, name)
		}
	}
	if d.Metrics == nil {
		d.Metrics = NewMetrics()
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	return nil
}
