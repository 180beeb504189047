package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/usage"
)

// FloodOptions configure `rekeyctl bench flood`.
type FloodOptions struct {
	// Samples of globex's max_uses rotation, before and during the flood.
	Samples int
	// Conns are acme's flooding connections (agent credentials);
	// Instances the instance names each spreads its reports over.
	Conns, Instances int
	// Rate is the flood's total reports per second; 0: as fast as the
	// connections can publish.
	Rate int
}

// FloodResult is what `rekeyctl bench flood` prints.
type FloodResult struct {
	Options        FloodOptions
	Before, During []time.Duration // globex: report over max_uses -> its agent dropped the version
	FloodSent      int64           // acme reports published during the flood
	FloodHandled   uint64          // of them, handled (counted or refused) by rekeyd
	FloodDuration  time.Duration
	// Resent counts globex reports published again because the stream did
	// not store them within a second (dropped at ingest under the flood).
	ResentBefore, ResentDuring int
}

// globexMaxUses is the max_uses the bench gives globex/openai-key.
const globexMaxUses = 10

// Flood measures how much one tenant's flood of valid use reports delays
// another tenant's max_uses rotation: acme publishes use reports of its
// current version, as fast as its connections can, from Instances
// instance names, while globex's agent reports a use count over
// globex/openai-key's max_uses, one rotation at a time; each sample is
// the time from that report to globex's agent dropping the old version
// (use-count trigger -> rotation worker -> fanout -> agent, and its ack).
func Flood(ctx context.Context, opts FloodOptions, log *slog.Logger) (FloodResult, error) {
	res := FloodResult{Options: opts}
	c, err := demo.StartCluster(ctx, log, func(cfg *orchestrator.Config) {
		cfg.Rotation.MinInterval = 0
		s := cfg.Tenants["globex"].Secrets["openai-key"]
		s.Policy.MaxUses = globexMaxUses
		cfg.Tenants["globex"].Secrets["openai-key"] = s
	})
	if err != nil {
		return res, err
	}
	defer c.Close()
	globex, err := c.NewAgent(ctx, "globex", "bench-globex")
	if err != nil {
		return res, err
	}
	if _, err := globex.Get(ctx, "openai-key"); err != nil {
		return res, err
	}
	nc, err := nats.Connect(c.Daemon.NATSURL(), c.Daemon.AgentNATSOptions("globex")...)
	if err != nil {
		return res, err
	}
	defer nc.Close()
	reporter, err := jetstream.New(nc)
	if err != nil {
		return res, err
	}
	for range opts.Samples {
		d, resent, err := maxUsesRotation(ctx, c, reporter)
		if err != nil {
			return res, fmt.Errorf("before the flood: %w", err)
		}
		res.Before = append(res.Before, d)
		res.ResentBefore += resent
	}

	acme, err := c.Daemon.State().SecretStatus(ctx, "acme", "openai-key")
	if err != nil {
		return res, err
	}
	floodCtx, stopFlood := context.WithCancel(ctx)
	var sent atomic.Int64
	var wg sync.WaitGroup
	for i := range opts.Conns {
		nc, err := nats.Connect(c.Daemon.NATSURL(), c.Daemon.AgentNATSOptions("acme")...)
		if err != nil {
			stopFlood()
			return res, err
		}
		defer nc.Close()
		wg.Go(func() { flood(floodCtx, nc, acme.Version, i, opts, &sent) })
	}
	handled0 := usageHandled(ctx, c, "acme")
	start := time.Now()
	time.Sleep(time.Second) // the flood is on
	for range opts.Samples {
		d, resent, err := maxUsesRotation(ctx, c, reporter)
		if err != nil {
			stopFlood()
			wg.Wait()
			return res, fmt.Errorf("during the flood: %w", err)
		}
		res.During = append(res.During, d)
		res.ResentDuring += resent
	}
	stopFlood()
	wg.Wait()
	res.FloodDuration = time.Since(start)
	res.FloodSent = sent.Load()
	res.FloodHandled = usageHandled(ctx, c, "acme") - handled0
	return res, nil
}

// flood publishes acme use reports of version until ctx ends.
func flood(ctx context.Context, nc *nats.Conn, version string, conn int, opts FloodOptions, sent *atomic.Int64) {
	const batch = 256
	payloads := make([]*nats.Msg, opts.Instances)
	for i := range payloads {
		inst := fmt.Sprintf("flood-%d-%d", conn, i)
		r := schemas.UsageReport{Tenant: "acme", Secret: "openai-key", Version: version, Agent: inst, Count: 1,
			WindowStart: time.Now().UTC(), WindowEnd: time.Now().UTC()}
		ev, err := schemas.NewEvent("agent/"+inst, schemas.TypeUsageReport, "acme", "acme/openai-key", r)
		if err != nil {
			return
		}
		b, err := ev.Encode()
		if err != nil {
			return
		}
		payloads[i] = &nats.Msg{Subject: schemas.UsedSubject("acme", "openai-key", inst), Data: b}
	}
	var pace *time.Ticker // one batch per tick
	if opts.Rate > 0 {
		pace = time.NewTicker(time.Duration(float64(time.Second) * batch * float64(opts.Conns) / float64(opts.Rate)))
		defer pace.Stop()
	}
	for n := 0; ctx.Err() == nil; n++ {
		if pace != nil {
			select {
			case <-pace.C:
			case <-ctx.Done():
				return
			}
		}
		for i := range batch {
			if nc.PublishMsg(payloads[(n*batch+i)%len(payloads)]) != nil {
				return
			}
		}
		sent.Add(batch)
		_ = nc.Flush() // as fast as the server takes them, not faster
	}
}

// maxUsesRotation reports globex/openai-key's current version used
// globexMaxUses times and waits until globex's agent dropped it. The
// report is published as an agent does, and again (same message id) when
// it is not stored within a second; resent counts those.
func maxUsesRotation(ctx context.Context, c *demo.Cluster, reporter jetstream.JetStream) (d time.Duration, resent int, err error) {
	st, err := c.Daemon.State().SecretStatus(ctx, "globex", "openai-key")
	if err != nil {
		return 0, 0, err
	}
	r := schemas.UsageReport{Tenant: "globex", Secret: "openai-key", Version: st.Version, Agent: "bench-globex",
		Count: globexMaxUses, WindowStart: time.Now().UTC(), WindowEnd: time.Now().UTC()}
	ev, err := schemas.NewEvent("agent/bench-globex", schemas.TypeUsageReport, "globex", "globex/openai-key", r)
	if err != nil {
		return 0, 0, err
	}
	b, err := ev.Encode()
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	subject := schemas.UsedSubject("globex", "openai-key", "bench-globex")
	for {
		// The usage streams send no publish acks (agents name reply
		// subjects): publish as an agent does, then look for it.
		m := &nats.Msg{Subject: subject, Header: nats.Header{}, Data: b}
		m.Header.Set(nats.MsgIdHdr, ev.ID)
		err := reporter.Conn().PublishMsg(m)
		if err == nil {
			err = stored(ctx, c, subject, ev.ID)
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil || resent > 60 {
			return 0, resent, fmt.Errorf("publish globex's report: %w", err)
		}
		resent++
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	drops, err := c.WaitDrops(wctx, usage.RequestID("globex", "openai-key", st.Version), 1)
	if err != nil {
		cnt, _ := usage.ReadCount(ctx, c.Daemon.Bus(), "globex", "openai-key", st.Version)
		now, _ := c.Daemon.State().SecretStatus(ctx, "globex", "openai-key")
		var pending, unacked uint64
		var stored uint64
		if cons, err := c.Daemon.Bus().JS.Consumer(ctx, schemas.UsageStream("globex"), usage.DurableFor("globex")); err == nil {
			if info, err := cons.Info(ctx); err == nil {
				pending, unacked = info.NumPending, uint64(info.NumAckPending)
			}
		}
		if stream, err := c.Daemon.Bus().JS.Stream(ctx, schemas.UsageStream("globex")); err == nil {
			if info, err := stream.Info(ctx, jetstream.WithSubjectFilter(">")); err == nil {
				for _, n := range info.State.Subjects {
					stored += n
				}
			}
		}
		return 0, resent, fmt.Errorf("%w (count of v%s: %d uses, rotation %+v; status: version %s, state %s; globex reports handled %d, pending %d, unacked %d, stored %d)",
			err, st.Version, cnt.Uses, cnt.Rotation, now.Version, now.State, usageHandled(ctx, c, "globex"), pending, unacked, stored)
	}
	return drops[0].Dropped.Sub(t0), resent, c.WaitIdle(ctx, "globex", "openai-key", 30*time.Second)
}

// stored waits up to a second until the last message on subject is the
// one with message id id.
func stored(ctx context.Context, c *demo.Cluster, subject, id string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := c.Daemon.Bus().JS.Stream(ctx, schemas.UsageStream("globex"))
	if err != nil {
		return err
	}
	for {
		m, err := st.GetLastMsgForSubject(ctx, subject)
		if err == nil && m.Header.Get(nats.MsgIdHdr) == id {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("report %s not stored after 1s: %w", id, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// usageHandled is how many of tenant's use reports rekeyd handled (acked).
func usageHandled(ctx context.Context, c *demo.Cluster, tenant string) uint64 {
	cons, err := c.Daemon.Bus().JS.Consumer(ctx, schemas.UsageStream(tenant), usage.DurableFor(tenant))
	if err != nil {
		return 0
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0
	}
	return info.AckFloor.Consumer
}

// Print writes the result as a table.
func (r FloodResult) Print(w io.Writer) {
	secs := r.FloodDuration.Seconds()
	fmt.Fprintf(w, "one tenant's flood of use reports vs another tenant's max_uses rotation\n")
	fmt.Fprintf(w, "acme flood: %d reports in %.1fs (%.0f/s sent, %d connections, %d instances each); rekeyd handled %.0f/s of them\n",
		r.FloodSent, secs, float64(r.FloodSent)/secs, r.Options.Conns, r.Options.Instances, float64(r.FloodHandled)/secs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "globex: use report over max_uses -> agent dropped\tsamples\tp50\tp99\tmax\treports resent\t")
	for _, row := range []struct {
		name   string
		d      []time.Duration
		resent int
	}{{"before the flood", r.Before, r.ResentBefore}, {"during the flood", r.During, r.ResentDuring}} {
		s := SortDurations(append([]time.Duration(nil), row.d...))
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t\n", row.name, len(s), demo.Millis(Percentile(s, 50)), demo.Millis(Percentile(s, 99)), demo.Millis(Percentile(s, 100)), row.resent)
	}
	tw.Flush()
}
