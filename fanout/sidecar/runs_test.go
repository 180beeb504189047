package sidecar_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/sidecar"
	"github.com/rekey-dev/rekey/schemas"
)

// awsAgentPath reads acme's openai-key through the AWS agent protocol.
const awsAgentPath = "/secretsmanager/get?secretId=%2Ftenants%2Facme%2Fopenai-key"

var bearer = map[string]string{"Authorization": "Bearer " + rekeyToken}

func with(h map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// TestAttackCallerHeaders: a malformed X-Rekey-Tool or X-Rekey-Run is
// refused by every API, in its own error shape, before anything is read;
// nothing changes.
func TestAttackCallerHeaders(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("t", 129)
	awsAgt := map[string]string{"X-Aws-Parameters-Secrets-Token": awsAgentToken}
	vault := map[string]string{"X-Vault-Token": vaultToken}
	t.Run("rekey", func(t *testing.T) {
		runAttacks(t, e, e.rekey, []attack{
			{name: "tool with a space", path: "/v1/secrets/openai-key", headers: with(bearer, "X-Rekey-Tool", "bad tool"), code: 400, want: `"code":"bad_request"`},
			{name: "tool too long", path: "/v1/secrets/openai-key", headers: with(bearer, "X-Rekey-Tool", long), code: 400, want: "X-Rekey-Tool"},
			{name: "tool starting with a dot", path: "/v1/secrets/openai-key", headers: with(bearer, "X-Rekey-Tool", "../etc"), code: 400, want: "X-Rekey-Tool"},
			{name: "tool with a quote", path: "/v1/secrets/openai-key", headers: with(bearer, "X-Rekey-Tool", `a"b`), code: 400, want: "X-Rekey-Tool"},
			{name: "run with a dot (a NATS token separator)", path: "/v1/secrets/openai-key", headers: with(bearer, "X-Rekey-Run", "run.1"), code: 400, want: "X-Rekey-Run"},
			{name: "run wildcard", path: "/v1/secrets/openai-key", headers: with(bearer, "X-Rekey-Run", ">"), code: 400, want: "X-Rekey-Run"},
			{name: "empty run", path: "/v1/secrets/openai-key", headers: with(bearer, "X-Rekey-Run", ""), code: 400, want: "X-Rekey-Run"},
			{name: "scan with a bad tool", method: "POST", path: "/v1/scan", headers: with(bearer, "X-Rekey-Tool", "a b"), body: "text", code: 400, want: "X-Rekey-Tool"},
			{name: "end a run with a bad id", method: "DELETE", path: "/v1/runs/a.b", headers: bearer, code: 400, want: "run id"},
		})
	})
	t.Run("aws-agent", func(t *testing.T) {
		runAttacks(t, e, e.awsAgt, []attack{
			{name: "bad tool", path: "/secretsmanager/get?secretId=openai-key", headers: with(awsAgt, "X-Rekey-Tool", "a b"), code: 400, want: "X-Rekey-Tool"},
			{name: "bad run", path: awsAgentPath, headers: with(awsAgt, "X-Rekey-Run", "*"), code: 400, want: "X-Rekey-Run"},
		})
	})
	t.Run("aws-api", func(t *testing.T) {
		runAttacks(t, e, e.awsAPI, []attack{
			{name: "bad tool", method: "POST", path: "/", headers: map[string]string{"X-Amz-Target": "secretsmanager.GetSecretValue", "X-Rekey-Tool": long},
				body: `{"SecretId":"openai-key"}`, code: 400, want: "ValidationException"},
		})
	})
	t.Run("vault", func(t *testing.T) {
		runAttacks(t, e, e.vault, []attack{
			{name: "bad tool", path: "/v1/secret/data/tenants/acme/openai-key", headers: with(vault, "X-Rekey-Tool", "a b"), code: 400, want: `"errors"`},
		})
	})
	// Two tool headers are refused too.
	req, err := http.NewRequest("GET", e.rekey+"/v1/secrets/openai-key", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+rekeyToken)
	req.Header.Add("X-Rekey-Tool", "a")
	req.Header.Add("X-Rekey-Tool", "b")
	code, body := do(t, req)
	require.Equal(t, http.StatusBadRequest, code, body)
}

// TestScan: POST /v1/scan redacts the tenant's values (raw and encoded),
// says what it found without the value, and reports the leak with the
// request's tool and run. An oversize body is refused (413) and nothing
// is reported.
func TestScan(t *testing.T) {
	e := newEnv(t)
	value := e.value("openai-key")
	leaks := e.subscribe(schemas.LeakSubject("acme", ">"))

	big := strings.Repeat("x", sidecar.DefaultMaxScanBytes-len(value.Value)) + value.Value + "y"
	runAttacks(t, e, e.rekey, []attack{
		{name: "oversize body holding a value", method: "POST", path: "/v1/scan", headers: bearer, body: big, code: 413, want: `"code":"too_large"`},
		{name: "no token", method: "POST", path: "/v1/scan", body: value.Value, code: 401, want: "unauthorized"},
		{name: "forwarded", method: "POST", path: "/v1/scan", headers: with(bearer, "X-Forwarded-For", "10.0.0.1"), body: value.Value, code: 403, want: "forwarded"},
	})
	select {
	case m := <-leaks:
		t.Fatalf("a refused scan reported a leak: %s", m.Subject)
	case <-time.After(200 * time.Millisecond):
	}

	text := "the key is " + value.Value + " and encoded " + base64.StdEncoding.EncodeToString([]byte(value.Value)) + "; done"
	code, body := call(t, "POST", e.rekey+"/v1/scan", with(bearer, "X-Rekey-Tool", "summarize", "X-Rekey-Run", "run-42"), text)
	require.Equal(t, http.StatusOK, code, body)
	require.NotContains(t, body, value.Value)
	require.NotContains(t, body, base64.StdEncoding.EncodeToString([]byte(value.Value)))
	var reply sidecar.ScanReply
	require.NoError(t, json.Unmarshal([]byte(body), &reply))
	// (the guard may leave the last base64 character and padding, which
	// hold less than a byte of the value)
	require.True(t, strings.HasPrefix(reply.Clean, "the key is "+agent.Redacted+" and encoded "+agent.Redacted), reply.Clean)
	require.True(t, strings.HasSuffix(reply.Clean, "; done"), reply.Clean)
	found := map[string]int{}
	for _, l := range reply.Leaks {
		require.Equal(t, "openai-key", l.Secret)
		require.Equal(t, value.Version, l.Version)
		found[l.Encoding] += l.Count
	}
	require.Equal(t, map[string]int{schemas.EncodingRaw: 1, schemas.EncodingBase64: 1}, found)

	// Reported as the agent's own scans are, with the tool and the run.
	var m *nats.Msg
	select {
	case m = <-leaks:
	case <-time.After(10 * time.Second):
		t.Fatal("no leak report")
	}
	require.NotContains(t, string(m.Data), value.Value)
	ev, err := schemas.Decode(m.Data)
	require.NoError(t, err)
	var r schemas.LeakReport
	require.NoError(t, ev.DecodeData(schemas.TypeLeakReport, &r))
	require.Equal(t, sidecar.ScanWhere, r.Where)
	require.Equal(t, "summarize", r.Tool)
	require.Equal(t, "run-42", r.Run)
	require.Equal(t, "acme-sidecar", r.Agent)
	require.Equal(t, value.Version, r.Version)

	// Clean text: nothing found, nothing reported.
	code, body = call(t, "POST", e.rekey+"/v1/scan", bearer, "nothing to see")
	require.Equal(t, http.StatusOK, code, body)
	require.JSONEq(t, `{"clean":"nothing to see","leaks":[]}`, body)
	e.requireNoValue(value.Value)
}

// TestRunsAndToolsInUseReports: reads name their tool (header, else the
// listener's default) and run; the use reports say so, one per (secret,
// tool, run). DELETE /v1/runs/{id} ends a run: its id is refused by every
// API from then on and never begins again.
func TestRunsAndToolsInUseReports(t *testing.T) {
	e := newEnvCfg(t, nil, sidecar.Mapping{}, func(c *sidecar.Config) {
		c.AWSAgentTool, c.MaxRuns = "aws-sdk", 2
	}, nil)
	used := e.subscribe("rekey.used.acme.>")
	want := e.value("openai-key") // tool: none (Config.Tool empty)
	awsAgt := map[string]string{"X-Aws-Parameters-Secrets-Token": awsAgentToken}

	read := func(h map[string]string) (int, string) {
		return call(t, "GET", e.rekey+"/v1/secrets/openai-key", h, "")
	}
	for range 2 {
		code, body := read(with(bearer, "X-Rekey-Tool", "planner", "X-Rekey-Run", "run-a"))
		require.Equal(t, http.StatusOK, code, body)
		require.Contains(t, body, want.Version)
	}
	code, body := call(t, "GET", e.awsAgt+awsAgentPath, awsAgt, "")
	require.Equal(t, http.StatusOK, code, body)
	code, body = call(t, "GET", e.awsAgt+awsAgentPath, with(awsAgt, "X-Rekey-Tool", "boto3", "X-Rekey-Run", "run-b"), "")
	require.Equal(t, http.StatusOK, code, body)

	// At most MaxRuns open.
	code, body = read(with(bearer, "X-Rekey-Run", "run-c"))
	require.Equal(t, http.StatusServiceUnavailable, code, body)

	// End run-a: 204, then refused everywhere, and a second DELETE finds
	// no open run.
	code, body = call(t, "DELETE", e.rekey+"/v1/runs/run-a", bearer, "")
	require.Equal(t, http.StatusNoContent, code, body)
	runAttacks(t, e, e.rekey, []attack{
		{name: "read through an ended run", path: "/v1/secrets/openai-key", headers: with(bearer, "X-Rekey-Run", "run-a"), code: 410, want: "run_ended"},
		{name: "scan in an ended run", method: "POST", path: "/v1/scan", headers: with(bearer, "X-Rekey-Run", "run-a"), body: "x", code: 410, want: "run_ended"},
		{name: "end it again", method: "DELETE", path: "/v1/runs/run-a", headers: bearer, code: 404, want: "not_found"},
		{name: "end without a token", method: "DELETE", path: "/v1/runs/run-b", code: 401, want: "unauthorized"},
	})
	runAttacks(t, e, e.awsAgt, []attack{{name: "ended run", path: awsAgentPath, headers: with(awsAgt, "X-Rekey-Run", "run-a"), code: 410, want: "run has ended"}})
	runAttacks(t, e, e.vault, []attack{{name: "ended run", path: "/v1/secret/data/tenants/acme/openai-key",
		headers: map[string]string{"X-Vault-Token": vaultToken, "X-Rekey-Run": "run-a"}, code: 410, want: "run has ended"}})
	runAttacks(t, e, e.awsAPI, []attack{{name: "ended run", method: "POST", path: "/",
		headers: map[string]string{"X-Amz-Target": "secretsmanager.GetSecretValue", "X-Rekey-Run": "run-a"}, body: `{"SecretId":"openai-key"}`, code: 400, want: "InvalidRequestException"}})
	// run-b still open, and now there is room for run-c.
	code, body = read(with(bearer, "X-Rekey-Run", "run-b"))
	require.Equal(t, http.StatusOK, code, body)
	code, body = read(with(bearer, "X-Rekey-Run", "run-c", "X-Rekey-Tool", "planner"))
	require.Equal(t, http.StatusOK, code, body)

	require.NoError(t, e.agent.Close()) // flushes the use reports
	wantUses := map[[2]string]int64{
		{"planner", "run-a"}: 2, {"aws-sdk", ""}: 1, {"boto3", "run-b"}: 1, {"", "run-b"}: 1, {"planner", "run-c"}: 1,
	}
	got := map[[2]string]int64{}
	deadline := time.After(10 * time.Second)
	for len(got) < len(wantUses)+1 || len(used) > 0 {
		select {
		case m := <-used:
			ev, err := schemas.Decode(m.Data)
			require.NoError(t, err)
			var r schemas.UsageReport
			require.NoError(t, ev.DecodeData(schemas.TypeUsageReport, &r))
			require.NoError(t, r.Validate())
			require.Equal(t, "acme-sidecar", r.Agent)
			got[[2]string{r.Tool, r.Run}] += r.Count
		case <-deadline:
			t.Fatalf("use reports: got %v", got)
		}
	}
	require.Positive(t, got[[2]string{"", ""}], "reads naming nothing (the test's own)")
	delete(got, [2]string{"", ""})
	require.Equal(t, wantUses, got)
}

// TestAttackOtherTenantsRun: a run id is the sidecar's own: the same id at
// another tenant's sidecar is another run, with that tenant's values;
// ending it there leaves acme's run open, and acme cannot end a run only
// globex has. Nothing in rekeyd changes.
func TestAttackOtherTenantsRun(t *testing.T) {
	e := newEnv(t)
	globex := e.sidecarOf("globex")
	acmeValue, globexValue := e.value("openai-key").Value, e.otherValue("globex", "openai-key")
	before := e.settled()

	h := with(bearer, "X-Rekey-Run", "shared-run")
	code, body := call(t, "GET", e.rekey+"/v1/secrets/openai-key", h, "")
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, acmeValue)

	code, body = call(t, "GET", globex+"/v1/secrets/openai-key", h, "")
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, globexValue)
	require.NotContains(t, body, acmeValue)
	code, body = call(t, "DELETE", globex+"/v1/runs/shared-run", bearer, "")
	require.Equal(t, http.StatusNoContent, code, body)

	// acme's run is untouched.
	code, body = call(t, "GET", e.rekey+"/v1/secrets/openai-key", h, "")
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, acmeValue)
	// A run only globex had is not acme's to end.
	code, body = call(t, "GET", globex+"/v1/secrets/openai-key", with(bearer, "X-Rekey-Run", "globex-only"), "")
	require.Equal(t, http.StatusOK, code, body)
	code, body = call(t, "DELETE", e.rekey+"/v1/runs/globex-only", bearer, "")
	require.Equal(t, http.StatusNotFound, code, body)
	code, body = call(t, "GET", globex+"/v1/secrets/openai-key", with(bearer, "X-Rekey-Run", "globex-only"), "")
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, before, e.streams(), "a run changed a stream or bucket")
	e.requireNoValue(acmeValue, globexValue)
}
