// Command rekeyctl is the command line of rekey: ask for rotations and
// revocations, show status, watch invalidations and run the benchmarks.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/rekey-dev/rekey/internal/bench"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

type globals struct {
	server  string
	token   string
	dataDir string
	natsURL string
	timeout time.Duration
}

func main() {
	bench.RunFanoutChild() // `bench fanout` starts this binary as rekeyd and as agent processes
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "rekeyctl:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "rekeyctl",
		Short:         "control rekey: rotate, revoke, status, watch, bench",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", envOr("REKEY_SERVER", "http://127.0.0.1:7420"), "rekeyd HTTP API URL (env REKEY_SERVER)")
	pf.StringVar(&g.token, "token", "", "admin token (default: env REKEY_ADMIN_TOKEN, else <data-dir>/admin.token)")
	pf.StringVar(&g.dataDir, "data-dir", "./rekey-data", "rekeyd data directory, where the generated admin token is read")
	pf.StringVar(&g.natsURL, "nats-url", envOr("REKEY_NATS_URL", "nats://127.0.0.1:4222"), "NATS URL for watch and --wait (env REKEY_NATS_URL)")
	pf.DurationVar(&g.timeout, "timeout", 10*time.Second, "timeout of each HTTP call")
	root.AddCommand(newRotate(g), newRevoke(g, schemas.ActionRevoke), newRevoke(g, schemas.ActionRestore),
		newStatus(g), newWatch(g), newBench(), newAgentCreds(g), newNATSConfig(), newVaultPolicy(), newAudit(g))
	return root
}

func signalContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
}

// adminToken finds the token: flag, env, then the token file.
func (g *globals) adminToken() (string, error) {
	if g.token != "" {
		return g.token, nil
	}
	if t := os.Getenv("REKEY_ADMIN_TOKEN"); t != "" {
		return t, nil
	}
	path := filepath.Join(g.dataDir, orchestrator.AdminTokenFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("no admin token: set --token or REKEY_ADMIN_TOKEN, or run next to rekeyd's data dir (%w)", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// natsConnect connects to --nats-url. A URL without credentials on a
// machine with rekeyd's data dir connects as rekeyd's user (the embedded
// server requires authentication).
func (g *globals) natsConnect(name string, opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.Name(name)}, opts...)
	if !strings.Contains(g.natsURL, "@") {
		if auth, err := orchestrator.ReadNATSAuth(g.dataDir); err == nil {
			opts = append(opts, nats.UserInfo(orchestrator.RekeydUser, auth.Password(orchestrator.RekeydUser)))
		}
	}
	nc, err := nats.Connect(g.natsURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", orchestrator.RedactURL(g.natsURL), err)
	}
	return nc, nil
}

// call does one API request and decodes a 2xx JSON reply into out; any
// other status becomes an error carrying the API's reason.
func (g *globals) call(ctx context.Context, method, path string, body any, out any, headers map[string]string) error {
	tok, err := g.adminToken()
	if err != nil {
		return err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(g.server, "/")+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read reply: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode)
		}
		return fmt.Errorf("%s %s: HTTP %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode reply: %w", method, path, err)
		}
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printJSONLine writes v as one line of JSON (JSON lines output).
func printJSONLine(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

type accepted struct {
	RequestID string `json:"request_id"`
	Subject   string `json:"subject"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

type secretStatus struct {
	Tenant        string `json:"tenant"`
	Secret        string `json:"secret"`
	State         string `json:"state"`
	Version       string `json:"version"`
	LastError     string `json:"last_error"`
	TenantRevoked bool   `json:"tenant_revoked"`
	LastRotation  *struct {
		RequestID   string    `json:"request_id"`
		CompletedAt time.Time `json:"completed_at"`
	} `json:"last_rotation"`
	LastFailedAt *time.Time `json:"last_failed_at"`
}

func newRotate(g *globals) *cobra.Command {
	var reason, idem string
	var wait bool
	var waitFor time.Duration
	cmd := &cobra.Command{
		Use:   "rotate TENANT/SECRET",
		Short: "ask for a rotation of one secret",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := schemas.ParseRef(args[0])
			if err != nil {
				return err
			}
			ctx, stop := signalContext(cmd)
			defer stop()
			base := "/v1/tenants/" + ref.Tenant + "/secrets/" + ref.Secret
			var before secretStatus
			if wait {
				if err := g.call(ctx, http.MethodGet, base, nil, &before, nil); err != nil {
					return err
				}
			}
			start := time.Now()
			var acc accepted
			hdr := map[string]string{}
			if idem != "" {
				hdr["Idempotency-Key"] = idem
			}
			if err := g.call(ctx, http.MethodPost, base+"/rotate", map[string]string{"reason": reason}, &acc, hdr); err != nil {
				return err
			}
			if !wait {
				return printJSON(cmd.OutOrStdout(), acc)
			}
			// A request is satisfied by any rotation that completes after it
			// was made, its own or a coalesced one.
			deadline := time.Now().Add(waitFor)
			for {
				var raw json.RawMessage
				if err := g.call(ctx, http.MethodGet, base, nil, &raw, nil); err != nil {
					return err
				}
				var st secretStatus
				if err := json.Unmarshal(raw, &st); err != nil {
					return err
				}
				if st.LastRotation != nil && st.LastRotation.CompletedAt.After(start.Add(-time.Second)) &&
					(before.LastRotation == nil || st.LastRotation.RequestID != before.LastRotation.RequestID) {
					return printJSON(cmd.OutOrStdout(), map[string]any{"request_id": acc.RequestID, "status": raw,
						"satisfied_by": st.LastRotation.RequestID, "elapsed_ms": time.Since(start).Milliseconds()})
				}
				if st.State == "failed" && st.LastFailedAt != nil && st.LastFailedAt.After(start) {
					return fmt.Errorf("rotation of %s failed: %s", ref, st.LastError)
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("rotation of %s not done after %s (request %s is queued)", ref, waitFor, acc.RequestID)
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(100 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (goes to the audit trail)")
	cmd.Flags().StringVar(&idem, "idempotency-key", "", "the same key twice queues one request")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until a rotation satisfied the request")
	cmd.Flags().DurationVar(&waitFor, "wait-timeout", 2*time.Minute, "how long --wait waits")
	return cmd
}

func newRevoke(g *globals, action string) *cobra.Command {
	var reason string
	var wait bool
	var waitFor time.Duration
	short := "revoke every credential of a tenant (kill switch); agents fail closed at once"
	if action == schemas.ActionRestore {
		short = "lift a tenant's revocation"
	}
	cmd := &cobra.Command{
		Use:   action + " TENANT",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t := args[0]
			if err := schemas.ValidateID("tenant", t); err != nil {
				return err
			}
			ctx, stop := signalContext(cmd)
			defer stop()
			var events chan schemas.Event
			if wait && action == schemas.ActionRevoke {
				nc, err := g.natsConnect("rekeyctl")
				if err != nil {
					return fmt.Errorf("--wait needs NATS: %w", err)
				}
				defer nc.Close()
				events = make(chan schemas.Event, 1024)
				// One subscription, so progress and report keep their order.
				sub, err := nc.Subscribe(schemas.EventsSubject(t, "*"), func(m *nats.Msg) {
					if ev, err := schemas.Decode(m.Data); err == nil {
						events <- ev
					}
				})
				if err != nil {
					return err
				}
				defer sub.Unsubscribe()
				if err := nc.Flush(); err != nil {
					return err
				}
			}
			var acc accepted
			if err := g.call(ctx, http.MethodPost, "/v1/tenants/"+t+"/"+action, map[string]string{"reason": reason}, &acc, nil); err != nil {
				return err
			}
			if events == nil {
				return printJSON(cmd.OutOrStdout(), acc)
			}
			return waitRevocation(ctx, cmd.OutOrStdout(), acc.RequestID, events, waitFor)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (goes to the audit trail)")
	if action == schemas.ActionRevoke {
		cmd.Flags().BoolVar(&wait, "wait", false, "wait for the revocation report (needs --nats-url)")
		cmd.Flags().DurationVar(&waitFor, "wait-timeout", 5*time.Minute, "how long --wait waits")
	}
	return cmd
}

func newStatus(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status TENANT[/SECRET]",
		Short: "show a secret's current version and last rotation (never its value), or a tenant's",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(cmd)
			defer stop()
			path := ""
			if strings.Contains(args[0], "/") {
				ref, err := schemas.ParseRef(args[0])
				if err != nil {
					return err
				}
				path = "/v1/tenants/" + ref.Tenant + "/secrets/" + ref.Secret
			} else {
				if err := schemas.ValidateID("tenant", args[0]); err != nil {
					return err
				}
				path = "/v1/tenants/" + args[0]
			}
			var out json.RawMessage
			if err := g.call(ctx, http.MethodGet, path, nil, &out, nil); err != nil {
				return err
			}
			_, err := cmd.OutOrStdout().Write(append(bytes.TrimSpace(out), '\n'))
			return err
		},
	}
}

func newWatch(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "watch [TENANT]",
		Short: "print each invalidation as one JSON line as it arrives",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			subject := schemas.SubjectInvalidateAll
			if len(args) == 1 {
				if err := schemas.ValidateID("tenant", args[0]); err != nil {
					return err
				}
				subject = schemas.InvalidateTenantSubject(args[0])
			}
			ctx, stop := signalContext(cmd)
			defer stop()
			nc, err := g.natsConnect("rekeyctl-watch", nats.MaxReconnects(-1))
			if err != nil {
				return err
			}
			defer nc.Close()
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
				ev, err := schemas.Decode(m.Data)
				if err != nil {
					return
				}
				var inv schemas.Invalidation
				if err := ev.DecodeData(schemas.TypeInvalidation, &inv); err != nil {
					return
				}
				_ = enc.Encode(struct {
					ID string `json:"id"`
					schemas.Invalidation
				}{ev.ID, inv})
			})
			if err != nil {
				return err
			}
			defer sub.Unsubscribe()
			fmt.Fprintf(cmd.ErrOrStderr(), "watching %s on %s (Ctrl-C to stop)\n", subject, nc.ConnectedUrlRedacted())
			<-ctx.Done()
			return nil
		},
	}
}
