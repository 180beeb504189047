package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// newProbe is `rekey-agent probe`: GET a health path of rekey's own API on
// a loopback address or Unix socket, for exec probes (a kubelet's HTTP
// probes cannot reach a pod's loopback or a socket). Exit status 0 when the
// answer is 200.
func newProbe() *cobra.Command {
	var addr, path string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "check /readyz (or --path) of a running rekey-agent; exit 0 when it answers 200",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
				if p, ok := strings.CutPrefix(addr, "unix:"); ok {
					return (&net.Dialer{}).DialContext(ctx, "unix", p)
				}
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			}
			client := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial}}
			resp, err := client.Get("http://rekey-agent" + path)
			if err != nil {
				return fmt.Errorf("probe %s%s: %w", addr, path, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("probe %s%s: %s: %s", addr, path, resp.Status, strings.TrimSpace(string(b)))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:7421", "address of --listen: host:port or unix:/path")
	f.StringVar(&path, "path", "/readyz", "path to check: /readyz or /healthz")
	f.DurationVar(&timeout, "timeout", 2*time.Second, "timeout")
	return cmd
}
