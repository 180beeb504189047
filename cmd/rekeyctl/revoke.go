package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/rekey-dev/rekey/schemas"
)

// waitRevocation follows a revocation until its report arrives: on a
// terminal with a progress bar and a table at the end, otherwise as JSON
// lines (one per progress event, then the report). It fails when the
// report has failures or waitFor passes.
func waitRevocation(ctx context.Context, out io.Writer, requestID string, events <-chan schemas.Event, waitFor time.Duration) error {
	tty := isTerminal(out)
	var bar *progressbar.ProgressBar
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	for {
		select {
		case ev := <-events:
			switch ev.Type {
			case schemas.TypeRevocationProgress:
				var p schemas.RevocationProgress
				if err := ev.DecodeData(schemas.TypeRevocationProgress, &p); err != nil || p.RequestID != requestID {
					continue
				}
				if !tty {
					if err := printJSONLine(out, p); err != nil {
						return err
					}
					continue
				}
				if bar == nil {
					bar = progressbar.NewOptions(p.Total, progressbar.OptionSetWriter(out),
						progressbar.OptionSetDescription("revoking "+p.Tenant), progressbar.OptionShowCount(),
						progressbar.OptionSetPredictTime(false), progressbar.OptionClearOnFinish())
				}
				if p.Outcome != schemas.OutcomeRetrying {
					_ = bar.Set(p.Done)
				}
				if p.Failed > 0 {
					bar.Describe(fmt.Sprintf("revoking %s (%d failed)", p.Tenant, p.Failed))
				}
			case schemas.TypeRevocationCompleted:
				var rep schemas.RevocationCompleted
				if err := ev.DecodeData(schemas.TypeRevocationCompleted, &rep); err != nil || rep.RequestID != requestID {
					continue
				}
				if bar != nil {
					_ = bar.Finish()
				}
				var err error
				if tty {
					err = printRevocationTable(out, rep)
				} else {
					err = printJSONLine(out, rep)
				}
				if err != nil {
					return err
				}
				if rep.Failed {
					return errors.New("revocation finished with failures (see report)")
				}
				return nil
			}
		case <-timer.C:
			return fmt.Errorf("revocation %s not completed after %s", requestID, waitFor)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// printRevocationTable writes a revocation report for people.
func printRevocationTable(out io.Writer, rep schemas.RevocationCompleted) error {
	status := "completed"
	if rep.Failed {
		status = "completed WITH FAILURES"
	}
	fmt.Fprintf(out, "revocation %s of %s %s in %s\n", rep.RequestID, rep.Tenant, status, rep.CompletedAt.Sub(rep.StartedAt).Round(time.Millisecond))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PART\tSUCCEEDED\tFAILED\tRETRIED\tDURATION")
	for _, p := range rep.Parts {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", p.Part, p.Succeeded, p.Failed, p.Retried, time.Duration(p.DurationMS*float64(time.Millisecond)).Round(time.Millisecond))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range rep.Parts {
		for _, e := range p.Errors {
			fmt.Fprintf(out, "  %s: %s\n", p.Part, e)
		}
	}
	return nil
}

// isTerminal reports whether out is a terminal.
func isTerminal(out io.Writer) bool {
	f, ok := out.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
