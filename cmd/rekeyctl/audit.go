package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/rekey-dev/rekey/schemas"
)

// auditLine is one exported audit record: the record plus the event's id
// and the stream sequence, so an exporter can resume where it stopped.
type auditLine struct {
	ID       string `json:"id"`
	Sequence uint64 `json:"seq"`
	schemas.AuditRecord
}

func newAudit(g *globals) *cobra.Command {
	var tenant, requestID, output string
	var since time.Duration
	var follow bool
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "print the audit trail as JSON lines (one record per line), e.g. for a SIEM to ingest",
		Long: `audit reads the AUDIT stream (rekey.audit.<tenant>) from --since ago and
prints one JSON object per record. --request keeps the records of one request
id, including those it caused (a revocation's rotations carry
"<request id>.<secret>"). --follow keeps printing new records until Ctrl-C.
Records never hold a secret value.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			subject := schemas.SubjectAuditAll
			if tenant != "" {
				if err := schemas.ValidateID("tenant", tenant); err != nil {
					return err
				}
				subject = schemas.AuditSubject(tenant)
			}
			if since <= 0 {
				return errors.New("--since must be positive")
			}
			out := cmd.OutOrStdout()
			if output != "" && output != "-" {
				f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				out = f
			}
			ctx, stop := signalContext(cmd)
			defer stop()
			nc, err := g.natsConnect("rekeyctl-audit")
			if err != nil {
				return err
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return err
			}
			return exportAudit(ctx, js, subject, time.Now().Add(-since), requestID, follow, out)
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "one tenant (default: all)")
	cmd.Flags().DurationVar(&since, "since", time.Hour, "how far back to start")
	cmd.Flags().StringVar(&requestID, "request", "", "only the records of this request id")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new records")
	cmd.Flags().StringVarP(&output, "output", "o", "-", "append to this file instead of stdout")
	return cmd
}

func exportAudit(ctx context.Context, js jetstream.JetStream, subject string, start time.Time, requestID string, follow bool, out io.Writer) error {
	cons, err := js.OrderedConsumer(ctx, schemas.StreamAudit, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &start,
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", schemas.StreamAudit, err)
	}
	enc := json.NewEncoder(out)
	pending := uint64(1)
	if info, err := cons.Info(ctx); err == nil {
		pending = info.NumPending
	}
	if !follow && pending == 0 {
		return nil
	}
	iter, err := cons.Messages()
	if err != nil {
		return err
	}
	defer iter.Stop()
	stop := context.AfterFunc(ctx, iter.Stop)
	defer stop()
	for {
		msg, err := iter.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return err
		}
		md, err := msg.Metadata()
		if err != nil {
			return err
		}
		ev, err := schemas.Decode(msg.Data())
		if err == nil {
			var rec schemas.AuditRecord
			if ev.DecodeData(schemas.TypeAuditRecord, &rec) == nil && matchesRequest(rec, requestID) {
				if err := enc.Encode(auditLine{ID: ev.ID, Sequence: md.Sequence.Stream, AuditRecord: rec}); err != nil {
					return err
				}
			}
		}
		if !follow && md.NumPending == 0 {
			return nil
		}
	}
}

func matchesRequest(rec schemas.AuditRecord, id string) bool {
	if id == "" {
		return true
	}
	return rec.RequestID == id || strings.HasPrefix(rec.RequestID, id+".") || rec.Detail["satisfied_by"] == id
}
