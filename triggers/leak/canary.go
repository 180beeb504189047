package leak

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// FetchWatch returns the function the local backend's fetch server calls
// for each value it serves (local.Server.OnServed): a fetch of a canary
// secret by an instance its policy.canary_fetchers does not allow is a
// sign of use, reported as a leak (Where "fetch") on rekey.leak.<t>.<s>,
// so that the trigger acts on it like on any other report of the canary,
// once per version. bus must be allowed to publish there (the triggers'
// role, orchestrator.RoleAPI).
//
// The instance is the one whose inbox the reply went to. An agent with
// its own identity (nats.agent_auth) can receive only on its own inbox,
// so this names it; an agent on the tenant-wide login may use any
// instance name of its tenant.
func FetchWatch(rekey *orchestrator.Config, bus *orchestrator.Bus, log *slog.Logger) func(ctx context.Context, tenant, secret, version, instance string) {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "leak")
	return func(_ context.Context, tenant, secret, version, instance string) {
		sc, ok := rekey.Secret(tenant, secret)
		if !ok || sc.Policy.CanaryFetchAllowed(instance) {
			return
		}
		if instance == "" {
			instance = "unknown"
		}
		r := schemas.LeakReport{Tenant: tenant, Secret: secret, Version: version, Agent: instance,
			Where: "fetch", Encoding: schemas.EncodingRaw, Count: 1, FoundAt: time.Now().UTC()}
		ev, err := schemas.NewEvent(EventSource, schemas.TypeLeakReport, tenant, tenant+"/"+secret, r)
		if err == nil {
			var b []byte
			if b, err = ev.Encode(); err == nil {
				msg := &nats.Msg{Subject: schemas.LeakSubject(tenant, secret), Header: nats.Header{}, Data: b}
				msg.Header.Set(nats.MsgIdHdr, ev.ID)
				err = bus.NC.PublishMsg(msg) // the stream sends no acks
			}
		}
		if err != nil {
			log.Error("canary fetched by an instance not allowed; report not published", "tenant", tenant,
				"secret", secret, "version", version, "instance", instance, "error", err)
			return
		}
		log.Warn("canary fetched by an instance not allowed", "tenant", tenant, "secret", secret,
			"version", version, "instance", instance)
	}
}
