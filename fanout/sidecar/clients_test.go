package sidecar_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	vault "github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
)

// rotateWhileReading starts a client that reads in a loop (one line per
// read: <start unix time> <version>) for secs seconds, rotates acme's
// openai-key three times meanwhile, and checks that no read that started
// after the sidecar dropped a version returned it or an older one.
func rotateWhileReading(t *testing.T, e *env, cmd *exec.Cmd) {
	t.Helper()
	initial := e.value("openai-key").Version
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	lines := make(chan []string, 1)
	go func() {
		var ls []string
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			ls = append(ls, sc.Text())
		}
		lines <- ls
	}()
	time.Sleep(time.Second) // the client is reading
	var rot []agent.Invalidated
	for range 3 {
		rot = append(rot, e.rotate("openai-key"))
		time.Sleep(700 * time.Millisecond)
	}
	got := <-lines
	require.NoError(t, cmd.Wait(), stderr.String())
	checkNoStaleRead(t, got, initial, rot)
}

// loopThenRevoke runs script's read loop on id while rekeyd rotates (see
// rotateWhileReading), then revokes acme: a read gets denied; then
// restores it: a read gets served (its output contains served).
func loopThenRevoke(t *testing.T, e *env, script string, env []string, id, denied, served string) {
	t.Helper()
	cmd := exec.Command(python(t), "testdata/"+script, "loop", id, "4")
	cmd.Env = append(testutil.EnvWithout("AWS_", "VAULT_"), env...)
	rotateWhileReading(t, e, cmd)

	e.revoke("revoke", true)
	require.Equal(t, denied+"\n", runPy(t, script, env, "get", id))
	e.revoke("restore", false)
	require.Eventually(t, func() bool {
		return strings.Contains(runPy(t, script, env, "get", id), served)
	}, 60*time.Second, 500*time.Millisecond) // each try runs python: slow on a loaded machine
}

func checkNoStaleRead(t *testing.T, lines []string, initial string, rot []agent.Invalidated) {
	t.Helper()
	order := map[string]int{initial: 0}
	for i, r := range rot {
		order[r.Invalidation.Version] = i + 1
	}
	after := 0
	for _, l := range lines {
		ts, v, ok := strings.Cut(l, " ")
		require.True(t, ok, "line %q", l)
		f, err := strconv.ParseFloat(ts, 64)
		require.NoError(t, err)
		start := time.Unix(0, int64(f*1e9))
		idx, known := order[v]
		require.True(t, known, "read returned unknown version %q", v)
		dropped := 0
		for _, r := range rot {
			if r.DroppedAt.Before(start) {
				dropped++
			}
		}
		if idx < dropped {
			t.Fatalf("a read started %s after the sidecar dropped version %q returned it", start.Sub(rot[idx].DroppedAt), v)
		}
		if dropped == len(rot) {
			after++
		}
	}
	require.NotZero(t, after, "no read after the last rotation (%d reads)", len(lines))
	t.Logf("%d reads, %d after the last drop, none stale", len(lines), after)
}

func TestBoto3ThroughAWSAPI(t *testing.T) {
	e := newEnv(t)
	env := []string{"REKEY_ENDPOINT=" + e.awsAPI, "AWS_ACCESS_KEY_ID=" + accessKeyID, "AWS_SECRET_ACCESS_KEY=" + secretKey, "AWS_DEFAULT_REGION=us-east-1"}
	want := e.value("openai-key")

	var gsv map[string]any
	require.NoError(t, json.Unmarshal([]byte(runPy(t, "boto3_client.py", env, "get", "/tenants/acme/openai-key")), &gsv))
	require.Equal(t, want.Value, gsv["SecretString"])
	require.Equal(t, want.Version, gsv["VersionId"])
	require.Equal(t, "/tenants/acme/openai-key", gsv["Name"])
	require.Equal(t, []any{"AWSCURRENT"}, gsv["VersionStages"])
	arn := gsv["ARN"].(string)
	require.True(t, strings.HasPrefix(arn, "arn:aws:secretsmanager:us-east-1:000000000000:secret:/tenants/acme/openai-key-"), arn)
	require.Contains(t, runPy(t, "boto3_client.py", env, "get", arn), want.Value, "by the ARN it was given")

	require.Contains(t, runPy(t, "boto3_client.py", env, "describe", "/tenants/acme/openai-key"), `"VersionIdsToStages": {"`+want.Version)

	require.Equal(t, "ERROR ResourceNotFoundException\n", runPy(t, "boto3_client.py", env, "get", "/tenants/globex/openai-key"))
	wrong := append(env[:len(env):len(env)], "AWS_SECRET_ACCESS_KEY="+secretKey+"x")
	require.Equal(t, "ERROR InvalidSignatureException\n", runPy(t, "boto3_client.py", wrong, "get", "/tenants/acme/openai-key"))

	loopThenRevoke(t, e, "boto3_client.py", env, "/tenants/acme/openai-key", "ERROR AccessDeniedException", `"SecretString"`)
	e.requireNoValue(want.Value)
}

func TestHvacAndVaultCLIThroughVault(t *testing.T) {
	e := newEnv(t)
	env := []string{"VAULT_ADDR=" + e.vault, "VAULT_TOKEN=" + vaultToken}
	want := e.value("openai-key")

	var kv struct {
		Data struct {
			Data     map[string]string
			Metadata map[string]any
		}
	}
	require.NoError(t, json.Unmarshal([]byte(runPy(t, "hvac_client.py", env, "get", "tenants/acme/openai-key")), &kv))
	require.Equal(t, want.Value, kv.Data.Data["value"])
	require.Equal(t, want.Version, kv.Data.Data["rekey_version"])
	require.Equal(t, "True\n", runPy(t, "hvac_client.py", env, "auth"))
	require.Equal(t, "ERROR InvalidPath\n", runPy(t, "hvac_client.py", env, "get", "tenants/globex/openai-key"))
	require.Equal(t, "ERROR Forbidden\n", runPy(t, "hvac_client.py", []string{"VAULT_ADDR=" + e.vault, "VAULT_TOKEN=wrong"}, "get", "tenants/acme/openai-key"))

	// The vault CLI, as it is.
	bin, err := vaulttest.FindVault()
	require.NoError(t, err)
	vcli := func(token string, args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(testutil.EnvWithout("VAULT_"), "VAULT_ADDR="+e.vault, "VAULT_TOKEN="+token)
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	out, err := vcli(vaultToken, "kv", "get", "-format=json", "-mount=secret", "tenants/acme/openai-key")
	require.NoError(t, err, out)
	require.Contains(t, out, want.Value)
	out, err = vcli(vaultToken, "kv", "get", "-field=value", "secret/tenants/acme/openai-key")
	require.NoError(t, err, out)
	require.Equal(t, want.Value, strings.TrimSpace(out))
	out, err = vcli(vaultToken+"x", "kv", "get", "-mount=secret", "tenants/acme/openai-key")
	require.Error(t, err)
	require.Contains(t, out, "permission denied")
	require.NotContains(t, out, want.Value)
	out, err = vcli(vaultToken, "kv", "get", "-mount=secret", "tenants/globex/openai-key")
	require.Error(t, err)
	require.Contains(t, out, "No value found")

	loopThenRevoke(t, e, "hvac_client.py", env, "tenants/acme/openai-key", "ERROR Forbidden", `"rekey_version"`)
	e.requireNoValue(want.Value)
}

func TestURLLibThroughAWSAgent(t *testing.T) {
	e := newEnv(t)
	_, port, err := net.SplitHostPort(e.srv.Addr("aws-agent"))
	require.NoError(t, err)
	env := []string{"REKEY_AWS_AGENT_PORT=" + port, "AWS_TOKEN=" + awsAgentToken}
	want := e.value("openai-key")

	var gsv map[string]any
	require.NoError(t, json.Unmarshal([]byte(runPy(t, "urllib_agent.py", env, "/tenants/acme/openai-key")), &gsv))
	require.Equal(t, want.Value, gsv["SecretString"])
	require.Equal(t, want.Version, gsv["VersionId"])
	require.Equal(t, "/tenants/acme/openai-key", gsv["Name"])
	require.NotZero(t, gsv["CreatedDate"])

	require.Equal(t, "ERROR 403 Bad Token\n", runPy(t, "urllib_agent.py", []string{"REKEY_AWS_AGENT_PORT=" + port, "AWS_TOKEN=wrong"}, "/tenants/acme/openai-key"))
	require.Contains(t, runPy(t, "urllib_agent.py", env, "/tenants/globex/openai-key"), "ERROR 400 {\"__type\":\"ResourceNotFoundException\"")
	e.revoke("revoke", true)
	require.Contains(t, runPy(t, "urllib_agent.py", env, "/tenants/acme/openai-key"), "ERROR 400 {\"__type\":\"AccessDeniedException\"")
	e.revoke("restore", false)
	require.Eventually(t, func() bool {
		return strings.Contains(runPy(t, "urllib_agent.py", env, "/tenants/acme/openai-key"), `"SecretString"`)
	}, 60*time.Second, 500*time.Millisecond) // each try runs python: slow on a loaded machine
	e.requireNoValue(want.Value)
}

// TestGoClients: aws-sdk-go-v2 configured only by the environment
// (AWS_ENDPOINT_URL_SECRETS_MANAGER), and vault/api.
func TestGoClients(t *testing.T) {
	e := newEnv(t)
	want := e.value("openai-key")
	ctx := context.Background()

	t.Setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", e.awsAPI)
	t.Setenv("AWS_ACCESS_KEY_ID", accessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secretKey)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	cfg, err := config.LoadDefaultConfig(ctx)
	require.NoError(t, err)
	sm := secretsmanager.NewFromConfig(cfg)
	out, err := sm.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("/tenants/acme/openai-key")})
	require.NoError(t, err)
	require.Equal(t, want.Value, aws.ToString(out.SecretString))
	require.Equal(t, want.Version, aws.ToString(out.VersionId))
	d, err := sm.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: out.ARN})
	require.NoError(t, err)
	require.Equal(t, []string{"AWSCURRENT"}, d.VersionIdsToStages[want.Version])
	b, err := sm.BatchGetSecretValue(ctx, &secretsmanager.BatchGetSecretValueInput{SecretIdList: []string{"/tenants/acme/openai-key", "/tenants/acme/billing-db"}})
	require.NoError(t, err)
	require.Len(t, b.SecretValues, 2)
	_, err = sm.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("/tenants/globex/openai-key")})
	require.ErrorContains(t, err, "ResourceNotFoundException")

	vc, err := vault.NewClient(&vault.Config{Address: e.vault})
	require.NoError(t, err)
	vc.SetToken(vaultToken)
	kv, err := vc.KVv2("secret").Get(ctx, "tenants/acme/openai-key")
	require.NoError(t, err)
	require.Equal(t, want.Value, kv.Data["value"])
	meta, err := vc.KVv2("secret").GetMetadata(ctx, "tenants/acme/openai-key")
	require.NoError(t, err)
	require.Equal(t, want.Version, meta.CustomMetadata["rekey_version"])
	_, err = vc.KVv2("secret").Get(ctx, "tenants/globex/openai-key")
	require.ErrorIs(t, err, vault.ErrSecretNotFound)
	h, err := vc.Sys().Health()
	require.NoError(t, err)
	require.False(t, h.Sealed)

	e.revoke("revoke", true)
	_, err = sm.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("/tenants/acme/openai-key")})
	require.ErrorContains(t, err, "AccessDeniedException")
	_, err = vc.KVv2("secret").Get(ctx, "tenants/acme/openai-key")
	require.ErrorContains(t, err, "permission denied")
	e.requireNoValue(want.Value)
}

// TestEventsWithNodeFetch: Node's fetch reads the event stream; a
// rotation, a revocation and a restore arrive as events naming the secret
// and version, never a value.
func TestEventsWithNodeFetch(t *testing.T) {
	e := newEnv(t)
	node, err := exec.LookPath("node")
	require.NoError(t, err, "node is required: apt-get install -y nodejs")
	cmd := exec.Command(node, "testdata/sse_events.mjs", e.rekey+"/v1/events")
	cmd.Env = append(testutil.EnvWithout("REKEY_"), "REKEY_AGENT_TOKEN="+rekeyToken)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(kind string) string {
		t.Helper()
		for {
			select {
			case l, ok := <-lines:
				require.True(t, ok, "stream ended")
				if strings.HasPrefix(l, kind+" ") {
					return l
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("no %s event", kind)
			}
		}
	}
	require.Contains(t, next("ready"), `"revoked":false`)
	old := e.value("openai-key")
	r := e.rotate("openai-key")
	ev := next("rotated")
	require.Contains(t, ev, `"secret":"openai-key"`)
	require.Contains(t, ev, `"version":"`+r.Invalidation.Version+`"`)
	fresh := e.value("openai-key")
	require.NotContains(t, ev, fresh.Value)
	require.NotContains(t, ev, old.Value)
	e.revoke("revoke", true)
	require.Contains(t, next("revoked"), `"tenant":"acme"`)
	e.revoke("restore", false)
	next("restored")

	// A wrong token gets no stream.
	bad := exec.Command(node, "testdata/sse_events.mjs", e.rekey+"/v1/events")
	bad.Env = append(testutil.EnvWithout("REKEY_"), "REKEY_AGENT_TOKEN=wrong")
	b, err := bad.Output()
	require.NoError(t, err)
	require.Equal(t, "ERROR 401\n", string(b))
}
