package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/rekey-dev/rekey/internal/demo"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
)

// TestRekeyAgent runs the command as a user would: flags from a YAML file
// and the environment, secrets from the environment, rekey's API on a
// Unix socket (mode 0600) and the AWS agent protocol on loopback with a
// custom name template.
func TestRekeyAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := demo.StartCluster(ctx, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	auth, err := orchestrator.ReadNATSAuth(c.Config.DataDir)
	require.NoError(t, err)

	dir := t.TempDir()
	sock := filepath.Join(dir, "rekey.sock")
	port, err := testutil.FreePort()
	require.NoError(t, err)
	awsAddr := fmt.Sprintf("127.0.0.1:%d", port)
	cfgFile := filepath.Join(dir, "rekey-agent.yaml")
	require.NoError(t, os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
tenant: acme
nats-url: %s
nats-user: %s
listen: unix:%s
aws-agent-listen: %s
mapping:
  aws_name_template: "prod/{tenant}/{secret}"
  secrets: [openai-key]
`, c.Daemon.NATSURL(), orchestrator.AgentUser("acme"), sock, awsAddr)), 0o600))
	t.Setenv("REKEY_AGENT_NATS_PASSWORD", auth.Password(orchestrator.AgentUser("acme")))
	t.Setenv("REKEY_AGENT_TOKEN", "rekey-api-token-0123456789")
	t.Setenv("AWS_TOKEN", "aws-agent-ssrf-token-0123456789")
	t.Setenv("REKEY_AGENT_INSTANCE", "acme-sidecar-1") // a flag from the environment

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	root := newRoot()
	root.SetArgs([]string{"--config", cfgFile, "--log-level", "warn"})
	go func() { done <- root.ExecuteContext(runCtx) }()
	defer func() {
		stop()
		require.NoError(t, <-done)
		_, err := os.Stat(sock)
		require.True(t, os.IsNotExist(err), "socket removed at exit")
	}()

	unix := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	get := func(client *http.Client, url string, h ...string) (int, string) {
		req, err := http.NewRequest("GET", url, nil)
		require.NoError(t, err)
		for i := 0; i+1 < len(h); i += 2 {
			req.Header.Set(h[i], h[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	require.Eventually(t, func() bool { code, _ := get(unix, "http://rekey/readyz"); return code == 200 }, 20*time.Second, 20*time.Millisecond)
	fi, err := os.Stat(sock)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	probe := newRoot()
	probe.SetArgs([]string{"probe", "--addr=unix:" + sock})
	require.NoError(t, probe.Execute(), "rekey-agent probe")
	probe = newRoot()
	probe.SetArgs([]string{"probe", "--addr=" + awsAddr, "--path=/nope"})
	probe.SetOut(io.Discard)
	require.Error(t, probe.Execute(), "a probe of a path that is not 200 fails")

	code, body := get(unix, "http://rekey/v1/secrets/openai-key", "Authorization", "Bearer rekey-api-token-0123456789")
	require.Equal(t, 200, code, body)
	require.Contains(t, body, `"value":"sk-acme-`)
	code, body = get(unix, "http://rekey/v1/secrets/billing-db", "Authorization", "Bearer rekey-api-token-0123456789")
	require.Equal(t, 404, code, "not in mapping.secrets: %s", body)
	code, body = get(http.DefaultClient, "http://"+awsAddr+"/v1/prod/acme/openai-key", "X-Aws-Parameters-Secrets-Token", "aws-agent-ssrf-token-0123456789")
	require.Equal(t, 200, code, body)
	require.Contains(t, body, `"Name":"prod/acme/openai-key"`)
	code, body = get(http.DefaultClient, "http://"+awsAddr+"/v1//tenants/acme/openai-key", "X-Aws-Parameters-Secrets-Token", "aws-agent-ssrf-token-0123456789")
	require.Equal(t, 400, code, "the default template is not in use: %s", body)
}

func TestRekeyAgentRefusesBadConfig(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no tenant", []string{"--aws-agent-listen="}, map[string]string{"REKEY_AGENT_TOKEN": "rekey-api-token-0123456789"}, "tenant"},
		{"not loopback", []string{"--tenant=acme", "--listen=0.0.0.0:7421", "--aws-agent-listen="}, map[string]string{"REKEY_AGENT_TOKEN": "rekey-api-token-0123456789"}, "only loopback"},
		{"no token", []string{"--tenant=acme", "--aws-agent-listen="}, nil, "token: required"},
		{"no SSRF token", []string{"--tenant=acme", "--listen="}, nil, "aws-agent token: required"},
		{"vault without token", []string{"--tenant=acme", "--listen=", "--aws-agent-listen=", "--vault-listen=127.0.0.1:8200"}, nil, "vault token: required"},
		{"relative socket", []string{"--tenant=acme", "--listen=unix:rekey.sock", "--aws-agent-listen="}, map[string]string{"REKEY_AGENT_TOKEN": "rekey-api-token-0123456789"}, "absolute path"},
		{"bad env flag", []string{"--tenant=acme"}, map[string]string{"REKEY_AGENT_TTL": "soon"}, "REKEY_AGENT_TTL"},
		{"bad listener tool", []string{"--tenant=acme", "--aws-agent-listen=", "--vault-tool=a b"}, map[string]string{"REKEY_AGENT_TOKEN": "rekey-api-token-0123456789"}, "vault-tool"},
		{"negative max runs", []string{"--tenant=acme", "--aws-agent-listen=", "--max-runs=-1"}, map[string]string{"REKEY_AGENT_TOKEN": "rekey-api-token-0123456789"}, "max-runs"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, k := range []string{"REKEY_AGENT_TOKEN", "AWS_TOKEN", "AWS_SESSION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "REKEY_AGENT_TENANT", "REKEY_AGENT_INSTANCE"} {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			root := newRoot()
			root.SetArgs(c.args)
			root.SetOut(io.Discard)
			err := root.Execute()
			require.Error(t, err)
			require.Contains(t, err.Error(), c.want)
		})
	}
}

func TestHelpDocumentsEveryFlag(t *testing.T) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"--help"})
	require.NoError(t, root.Execute())
	for _, f := range []string{"--tenant", "--listen", "--aws-agent-listen", "--aws-api-listen", "--vault-listen", "--fetcher", "--config",
		"--token-file", "--aws-agent-token-file", "--aws-access-key-id", "--aws-secret-access-key-file", "--vault-token-file",
		"--nats-url", "--nats-user", "--nats-token-file", "--max-skew", "AWS_TOKEN", "REKEY_AGENT_TOKEN",
		"--tool", "--aws-agent-tool", "--aws-api-tool", "--vault-tool", "--max-runs", "--run-ttl", "--max-scan-bytes"} {
		require.True(t, strings.Contains(out.String(), f), "help lacks %s", f)
	}
}

// TestDeploymentsUseRealFlags: the Kubernetes example and the systemd unit
// run rekey-agent with flags it has.
func TestDeploymentsUseRealFlags(t *testing.T) {
	b, err := os.ReadFile("../../deployments/kubernetes/examples/agent-sidecar/deployment.yaml")
	require.NoError(t, err)
	var dep appsv1.Deployment
	require.NoError(t, k8syaml.UnmarshalStrict(b, &dep))
	var found bool
	for _, c := range dep.Spec.Template.Spec.InitContainers {
		if c.Name != "rekey-agent" {
			continue
		}
		found = true
		require.NotNil(t, c.RestartPolicy, "a native sidecar")
		args := strings.ReplaceAll(strings.Join(c.Args, "\n"), "$(POD_NAME)", "acme-planner-1")
		require.NoError(t, newRoot().ParseFlags(strings.Split(args, "\n")))
		probe := c.ReadinessProbe.Exec.Command
		require.Equal(t, []string{"rekey-agent", "probe"}, probe[:2])
		require.NoError(t, newProbe().ParseFlags(probe[2:]))
	}
	require.True(t, found, "no rekey-agent sidecar")

	unit, err := os.ReadFile("../../deployments/systemd/rekey-agent.service")
	require.NoError(t, err)
	_, exec, ok := strings.Cut(strings.ReplaceAll(string(unit), "\\\n", " "), "ExecStart=")
	require.True(t, ok)
	exec, _, _ = strings.Cut(exec, "\n")
	fields := strings.Fields(exec)
	require.Equal(t, "/usr/local/bin/rekey-agent", fields[0])
	require.NoError(t, newRoot().ParseFlags(fields[1:]))
}
