package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoadConfigFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		file string
		err  string
	}{
		{name: "embedded default", args: nil},
		{name: "flags override", args: []string{"--data-dir", "/tmp/x", "--http-addr", "127.0.0.1:9", "--nats-url", "nats://127.0.0.2:4222"}},
		{name: "bad nats url", args: []string{"--nats-url", "localhost:4222"}, err: "nats.url"},
		{name: "config file error names the field", file: "tenants:\n  acme:\n    secrets:\n      k: {backend: valt}\n", err: "tenants.acme.secrets.k.backend"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := newRoot()
			args := tc.args
			if tc.file != "" {
				path := filepath.Join(t.TempDir(), "rekey.yaml")
				require.NoError(t, os.WriteFile(path, []byte(tc.file), 0o600))
				args = append(args, "--config", path)
			}
			require.NoError(t, root.ParseFlags(args))
			var f flags
			f.config, _ = root.Flags().GetString("config")
			f.dataDir, _ = root.Flags().GetString("data-dir")
			f.httpAddr, _ = root.Flags().GetString("http-addr")
			f.natsAddr, _ = root.Flags().GetString("nats-addr")
			f.natsURL, _ = root.Flags().GetString("nats-url")
			cfg, err := loadConfig(root, f)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			if len(tc.args) == 0 {
				require.Equal(t, "./rekey-data", cfg.DataDir)
				require.Equal(t, "127.0.0.1:7420", cfg.HTTP.Addr)
				require.Equal(t, "127.0.0.1:4222", cfg.NATS.Embedded.Addr)
				require.Empty(t, cfg.NATS.URL)
				require.Equal(t, []string{"acme", "globex"}, cfg.TenantNames())
			} else {
				require.Equal(t, "/tmp/x", cfg.DataDir)
				require.Equal(t, "127.0.0.1:9", cfg.HTTP.Addr)
				require.Equal(t, "nats://127.0.0.2:4222", cfg.NATS.URL)
			}
		})
	}
}
