package demo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

// DemoRoles are the simulated agents each tenant runs.
var DemoRoles = []string{"planner", "retriever", "code-executor", "billing-reconciler"}

// Demo starts rekeyd and one agent per role for acme and globex, keeps
// them calling Get as tool calls do, then rotates, revokes and restores,
// printing for each event how long the agents took to drop the old value.
func Demo(ctx context.Context, out io.Writer, log *slog.Logger) error {
	c, err := StartCluster(ctx, log)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(out, "rekeyd is up: HTTP %s, NATS %s (embedded), local backend, tenants acme and globex\n\n", c.Daemon.HTTPAddr(), c.Daemon.NATSURL())

	agents := map[string][]*agent.Agent{}
	for _, t := range []string{"acme", "globex"} {
		for _, role := range DemoRoles {
			a, err := c.NewAgent(ctx, t, t+"-"+role)
			if err != nil {
				return fmt.Errorf("start agent %s-%s: %w", t, role, err)
			}
			agents[t] = append(agents[t], a)
		}
	}
	// Tool calls: every agent reads both secrets continuously.
	loopCtx, stopLoops := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var gets, revokedGets atomic.Int64
	for _, as := range agents {
		for _, a := range as {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for loopCtx.Err() == nil {
					for _, s := range []string{"openai-key", "billing-db"} {
						_, err := a.Get(loopCtx, s)
						if errors.Is(err, agent.ErrRevoked) {
							revokedGets.Add(1)
						} else if err == nil {
							gets.Add(1)
						}
					}
					time.Sleep(time.Millisecond)
				}
			}()
		}
	}
	defer func() { stopLoops(); wg.Wait() }()

	show := func(t, s string) string {
		sec, err := agents[t][0].Get(ctx, s)
		if err != nil {
			return "error: " + err.Error()
		}
		h := sha256.Sum256(sec.Value)
		return fmt.Sprintf("version %s (value sha256 %s..., %d bytes)", sec.Version, hex.EncodeToString(h[:4]), len(sec.Value))
	}
	fmt.Fprintf(out, "8 agents cache their secrets: acme/openai-key at %s\n\n", show("acme", "openai-key"))

	type step struct {
		title, tenant, secret, path string
	}
	steps := []step{
		{"rotate acme/openai-key", "acme", "openai-key", "/v1/tenants/acme/secrets/openai-key/rotate"},
		{"rotate globex/billing-db", "globex", "billing-db", "/v1/tenants/globex/secrets/billing-db/rotate"},
		{"revoke tenant globex (kill switch)", "globex", "", "/v1/tenants/globex/revoke"},
		{"restore tenant globex", "globex", "", "/v1/tenants/globex/restore"},
	}
	revoked, unsub, err := c.Events("globex", schemas.KindRevocationCompleted)
	if err != nil {
		return err
	}
	defer unsub()
	for _, st := range steps {
		t0 := time.Now()
		id, err := c.Post(ctx, st.path)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		drops, err := c.WaitDrops(wctx, id, len(agents[st.tenant]))
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", st.title, err)
		}
		fmt.Fprintf(out, "== %s  (request %s)\n", st.title, id)
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "agent\tkind\tversion\trequest -> dropped\tinvalidation published -> dropped\t")
		var worst time.Duration
		for _, d := range drops {
			fromReq := d.Dropped.Sub(t0)
			worst = max(worst, fromReq)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", d.Agent, d.Kind, orDash(d.Version), Millis(fromReq), Millis(d.Dropped.Sub(d.Published)))
		}
		tw.Flush()
		fmt.Fprintf(out, "all %d %s agents applied it %s after the request\n", len(drops), st.tenant, Millis(worst))
		switch st.title {
		case "revoke tenant globex (kill switch)":
			_, gerr := agents["globex"][0].Get(ctx, "openai-key")
			fmt.Fprintf(out, "globex agents now fail closed: Get -> %v; acme unaffected: %s\n", gerr, show("acme", "openai-key"))
			select {
			case ev := <-revoked:
				var rep schemas.RevocationCompleted
				if err := ev.DecodeData(schemas.TypeRevocationCompleted, &rep); err != nil {
					return err
				}
				fmt.Fprintf(out, "revocation report after %s: ", Millis(rep.CompletedAt.Sub(rep.StartedAt)))
				for _, p := range rep.Parts {
					fmt.Fprintf(out, "%s: %d done, %d failed in %.2f ms; ", p.Part, p.Succeeded, p.Failed, p.DurationMS)
				}
				fmt.Fprintln(out)
				fmt.Fprintln(out)
			case <-time.After(30 * time.Second):
				return errors.New("revocation did not complete within 30s")
			}
		case "restore tenant globex":
			fmt.Fprintf(out, "globex agents serve again: globex/openai-key at %s\n\n", show("globex", "openai-key"))
		default:
			fmt.Fprintf(out, "agents now read %s/%s at %s\n\n", st.tenant, st.secret, show(st.tenant, st.secret))
		}
	}
	fmt.Fprintf(out, "%d Gets served from the agents' caches, %d refused while globex was revoked\n", gets.Load(), revokedGets.Load())
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Millis formats d in milliseconds with two decimals, as the demo and the
// benchmarks print latencies.
func Millis(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
