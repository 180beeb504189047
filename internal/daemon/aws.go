package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/fanout/exporters/eventbridge"
	"github.com/rekey-dev/rekey/handlers/awssm"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/awsevents"
)

// buildAWSSM builds the Secrets Manager backend from backends.awssm, and
// the component that hands it the external changes the AWS trigger (on any
// replica) publishes, which is how a delegated rotation hears that its
// Lambda finished.
func (d *Daemon) buildAWSSM(ctx context.Context, log *slog.Logger) (*awssm.Backend, orchestrator.Named, error) {
	acfg, err := awssm.ParseConfig(d.cfg.Backends.AWSSM, &d.cfg)
	if err != nil {
		return nil, orchestrator.Named{}, err
	}
	b, err := awssm.New(ctx, acfg, log)
	if err != nil {
		return nil, orchestrator.Named{}, fmt.Errorf("%s: %w", awssm.Section, err)
	}
	return b, orchestrator.Named{Name: "awssm-external-changes", Component: &externalChanges{nc: d.roles[orchestrator.RoleWorkers].NC, notify: b.Notify, log: log}}, nil
}

// externalChanges subscribes to every tenant's external_change events and
// passes each to notify.
type externalChanges struct {
	nc     *nats.Conn
	notify func(schemas.ExternalChange)
	log    *slog.Logger
}

// Run implements orchestrator.Component.
func (e *externalChanges) Run(ctx context.Context) error {
	subject := schemas.EventsSubject("*", schemas.KindExternalChange)
	sub, err := e.nc.Subscribe(subject, func(m *nats.Msg) {
		var ch schemas.ExternalChange
		ev, err := schemas.DecodeAs(m.Data, schemas.TypeExternalChange, &ch)
		if err != nil || ev.Tenant != ch.Tenant || m.Subject != schemas.EventsSubject(ch.Tenant, schemas.KindExternalChange) {
			e.log.Warn("external change dropped", "component", "awssm", "subject", m.Subject, "error", err)
			return
		}
		e.notify(ch)
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subject, err)
	}
	<-ctx.Done()
	return sub.Unsubscribe()
}

// buildAWSEvents builds the SQS/EventBridge trigger.
func buildAWSEvents(_ context.Context, d *Daemon, raw []byte, deps orchestrator.Deps) ([]orchestrator.Named, error) {
	cfg, err := awsevents.ParseConfig(raw, deps.Rekey)
	if err != nil {
		return nil, err
	}
	if d.awssm == nil {
		return nil, orchestrator.FieldErrorf(awsevents.Section, "needs backends.awssm: its secrets are how AWS events map to tenants")
	}
	cfg.SecretsManager = awsevents.SecretsManagerTarget{Region: d.awssm.Config().Region, Endpoint: d.awssm.Config().Endpoint}
	t, err := awsevents.New(cfg, d.awssm.Config(), deps)
	if err != nil {
		return nil, err
	}
	return []orchestrator.Named{{Name: "awsevents", Component: t}}, nil
}

// buildExporters builds what sends rekey's outcomes out: the EventBridge
// outcome publisher (fanout/exporters/eventbridge), on when
// triggers.awsevents.eventbridge.enabled is set (whether or not the SQS
// trigger of that section runs).
func (d *Daemon) buildExporters() ([]orchestrator.Named, error) {
	raw, ok := d.cfg.Triggers["awsevents"]
	if !ok {
		return nil, nil
	}
	// With the SQS trigger off, buildTriggers did not read the section;
	// it is still checked (README: Triggers).
	if trigger, err := d.cfg.TriggerOn("awsevents", false); err != nil {
		return nil, err
	} else if !trigger {
		if _, err := awsevents.ParseConfig(raw, &d.cfg); err != nil {
			return nil, err
		}
	}
	cfg, on, err := eventbridge.ParseConfig(raw)
	if err != nil || !on {
		return nil, err
	}
	p, err := eventbridge.NewPublisher(cfg, d.deps(orchestrator.RoleAPI))
	if err != nil {
		return nil, err
	}
	return []orchestrator.Named{{Name: "awsevents-eventbridge", Component: p}}, nil
}
