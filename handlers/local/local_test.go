package local_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/backendtest"
	"github.com/rekey-dev/rekey/handlers/local"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// startJS runs an embedded nats-server with JetStream for the test.
func startJS(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	s := testutil.StartNATS(t, -1, "")
	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, local.KeySize)
	_, err := rand.Read(k)
	require.NoError(t, err)
	return k
}

func newBackend(t *testing.T, js jetstream.JetStream, key []byte, log *slog.Logger) *local.Backend {
	t.Helper()
	b, err := local.New(t.Context(), js, local.Config{Key: key}, log)
	require.NoError(t, err)
	return b
}

func ref(tenant, secret string) handlers.SecretRef {
	return handlers.SecretRef{Tenant: tenant, Secret: secret, Backend: local.Name}
}

// rawEntry returns the KV bucket and the stored JSON of one secret.
func rawEntry(t *testing.T, js jetstream.JetStream, r handlers.SecretRef) (jetstream.KeyValue, []byte) {
	t.Helper()
	kv, err := js.KeyValue(t.Context(), local.DefaultBucket)
	require.NoError(t, err)
	e, err := kv.Get(t.Context(), r.Tenant+"."+r.Secret)
	require.NoError(t, err)
	return kv, e.Value()
}

func TestBackendSuite(t *testing.T) {
	_, js := startJS(t)
	logs := &backendtest.LogBuffer{}
	b := newBackend(t, js, newKey(t), logs.Logger())
	read := backendtest.ReadsNotLogged(t, logs, b.Read)
	var n atomic.Int64
	backendtest.Run(t, backendtest.Features{Read: true, Ensure: true}, func(t *testing.T) backendtest.Fixture {
		return backendtest.Fixture{Backend: b, Ref: ref("acme", fmt.Sprintf("suite-%d", n.Add(1))), Read: read}
	})
}

// replicas spreads calls over several Backends sharing one bucket, as
// several rekeyd replicas would.
type replicas struct {
	bs []*local.Backend
	n  atomic.Uint64
}

var (
	_ handlers.Backend     = (*replicas)(nil)
	_ handlers.Provisioner = (*replicas)(nil)
)

func (r *replicas) next() *local.Backend { return r.bs[r.n.Add(1)%uint64(len(r.bs))] }
func (r *replicas) Name() string         { return local.Name }
func (r *replicas) Current(ctx context.Context, ref handlers.SecretRef) (handlers.Version, error) {
	return r.next().Current(ctx, ref)
}
func (r *replicas) Staged(ctx context.Context, ref handlers.SecretRef) ([]handlers.Version, error) {
	return r.next().Staged(ctx, ref)
}
func (r *replicas) Create(ctx context.Context, ref handlers.SecretRef, token string) (handlers.Version, error) {
	return r.next().Create(ctx, ref, token)
}
func (r *replicas) Set(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	return r.next().Set(ctx, ref, v)
}
func (r *replicas) Test(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	return r.next().Test(ctx, ref, v)
}
func (r *replicas) Finish(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	return r.next().Finish(ctx, ref, v)
}
func (r *replicas) Rollback(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	return r.next().Rollback(ctx, ref, v)
}
func (r *replicas) Ensure(ctx context.Context, ref handlers.SecretRef) (handlers.Version, bool, error) {
	return r.next().Ensure(ctx, ref)
}
func (r *replicas) Read(ctx context.Context, ref handlers.SecretRef) (string, []byte, error) {
	return r.next().Read(ctx, ref)
}

func TestBackendSuiteReplicas(t *testing.T) {
	key := newKey(t)
	_, js1 := startJS(t)
	// Two connections to one server, two Backends on one bucket.
	b1 := newBackend(t, js1, key, nil)
	nc2, err := nats.Connect(js1.Conn().ConnectedUrl())
	require.NoError(t, err)
	t.Cleanup(nc2.Close)
	js2, err := jetstream.New(nc2)
	require.NoError(t, err)
	b2 := newBackend(t, js2, key, nil)

	r := &replicas{bs: []*local.Backend{b1, b2}}
	var n atomic.Int64
	backendtest.Run(t, backendtest.Features{Read: true, Ensure: true}, func(t *testing.T) backendtest.Fixture {
		return backendtest.Fixture{Backend: r, Ref: ref("acme", fmt.Sprintf("replica-%d", n.Add(1))), Read: r.Read}
	})
}

func TestVersionsAndErrors(t *testing.T) {
	_, js := startJS(t)
	b := newBackend(t, js, newKey(t), nil)
	ctx := t.Context()
	r := ref("acme", "openai-key")

	_, err := b.Current(ctx, r)
	require.ErrorIs(t, err, handlers.ErrNotFound, "Current of a secret without version")
	_, _, err = b.Read(ctx, r)
	require.ErrorIs(t, err, handlers.ErrNotFound, "Read of a secret without version")

	v1, created, err := b.Ensure(ctx, r)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, "1", v1.ID, "first version")

	v2, err := b.Create(ctx, r, "req-2")
	require.NoError(t, err)
	require.Equal(t, "2", v2.ID)
	require.NoError(t, b.Rollback(ctx, r, v2))
	v3, err := b.Create(ctx, r, "req-3")
	require.NoError(t, err)
	require.Equal(t, "3", v3.ID, "a rolled back version number must not be reused")

	// Set and Test check the version is staged.
	for _, tc := range []struct {
		name string
		call func(context.Context, handlers.SecretRef, handlers.Version) error
	}{{"Set", b.Set}, {"Test", b.Test}} {
		err := tc.call(ctx, r, v2)
		require.ErrorIs(t, err, handlers.ErrNotFound, "%s of a rolled back version", tc.name)
		require.ErrorContains(t, err, "acme/openai-key v2", "%s error names what was done", tc.name)
		require.NoError(t, tc.call(ctx, r, v3), "%s of a staged version", tc.name)
	}

	require.NoError(t, b.Finish(ctx, r, v3))
	err = b.Rollback(ctx, r, v3)
	require.ErrorIs(t, err, handlers.ErrPermanent, "Rollback of the current version")
	cur, err := b.Current(ctx, r)
	require.NoError(t, err)
	require.Equal(t, "3", cur.ID, "a refused Rollback changed Current")

	// Finish of the superseded previous version does not demote the current one.
	v4, err := b.Create(ctx, r, "req-4")
	require.NoError(t, err)
	require.NoError(t, b.Finish(ctx, r, v4))
	require.NoError(t, b.Finish(ctx, r, v3), "retried Finish of a superseded version")
	cur, err = b.Current(ctx, r)
	require.NoError(t, err)
	require.Equal(t, "4", cur.ID)

	tests := []struct {
		name string
		err  error
		want error
	}{
		{"empty token", func() error { _, err := b.Create(ctx, r, ""); return err }(), handlers.ErrPermanent},
		{"bad tenant id", func() error { _, err := b.Create(ctx, ref("Acme", "x"), "t"); return err }(), handlers.ErrPermanent},
		{"bad secret id", func() error { _, err := b.Current(ctx, ref("acme", "a.b")); return err }(), handlers.ErrPermanent},
		{"bad generator", func() error {
			bad := ref("acme", "bad-gen")
			bad.Generator = handlers.Generator{Length: 3}
			_, err := b.Create(ctx, bad, "t")
			return err
		}(), handlers.ErrPermanent},
		{"finish unknown", b.Finish(ctx, r, handlers.Version{ID: "99"}), handlers.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, tc.err, tc.want)
			require.True(t, strings.HasPrefix(tc.err.Error(), "local: "), "error %q should start with the backend name", tc.err)
		})
	}
}

func TestPruneAndGenerator(t *testing.T) {
	_, js := startJS(t)
	b := newBackend(t, js, newKey(t), nil)
	ctx := t.Context()
	r := ref("acme", "api")
	r.Generator = handlers.Generator{Style: handlers.StyleAPIKey, Length: 24, Prefix: "sk-"}

	_, _, err := b.Ensure(ctx, r)
	require.NoError(t, err)
	for i := range 4 {
		v, err := b.Create(ctx, r, fmt.Sprintf("req-%d", i))
		require.NoError(t, err)
		require.NoError(t, b.Finish(ctx, r, v))
	}
	staged, err := b.Create(ctx, r, "req-staged")
	require.NoError(t, err)

	_, raw := rawEntry(t, js, r)
	var rec struct {
		Current  string `json:"current"`
		Previous string `json:"previous"`
		Versions []struct {
			ID string `json:"id"`
		} `json:"versions"`
	}
	require.NoError(t, json.Unmarshal(raw, &rec))
	require.Equal(t, "5", rec.Current)
	require.Equal(t, "4", rec.Previous)
	var ids []string
	for _, v := range rec.Versions {
		ids = append(ids, v.ID)
	}
	require.ElementsMatch(t, []string{"4", "5", staged.ID}, ids, "only current, previous and staged versions are kept")

	version, value, err := b.Read(ctx, r)
	require.NoError(t, err)
	require.Equal(t, "5", version)
	require.Len(t, value, 3+24)
	require.True(t, bytes.HasPrefix(value, []byte("sk-")), "generator prefix")
	for _, c := range value[3:] {
		require.Contains(t, handlers.AlphabetAPIKey, string(c))
	}
}

func TestCiphertextHasNoPlaintext(t *testing.T) {
	_, js := startJS(t)
	b := newBackend(t, js, newKey(t), nil)
	ctx := t.Context()
	r := ref("acme", "db-password")

	_, _, err := b.Ensure(ctx, r)
	require.NoError(t, err)
	_, v1, err := b.Read(ctx, r)
	require.NoError(t, err)
	v, err := b.Create(ctx, r, "req")
	require.NoError(t, err)
	require.NoError(t, b.Finish(ctx, r, v))
	_, v2, err := b.Read(ctx, r)
	require.NoError(t, err)

	_, raw := rawEntry(t, js, r)
	require.Contains(t, string(raw), `"ciphertext"`, "not the record this test means to check")
	backendtest.RequireNoValue(t, string(raw), v1, v2)
}

func TestCiphertextBoundToSecretAndVersion(t *testing.T) {
	_, js := startJS(t)
	logs := &backendtest.LogBuffer{}
	b := newBackend(t, js, newKey(t), logs.Logger())
	ctx := t.Context()
	src := ref("acme", "a")
	_, _, err := b.Ensure(ctx, src)
	require.NoError(t, err)
	_, value, err := b.Read(ctx, src)
	require.NoError(t, err)
	kv, raw := rawEntry(t, js, src)

	// The whole record of acme/a moved under another secret or tenant: the
	// version ids match, only the additional data differs.
	for _, dst := range []handlers.SecretRef{ref("acme", "b"), ref("globex", "a")} {
		t.Run("to "+dst.String(), func(t *testing.T) {
			_, _, err := b.Ensure(ctx, dst)
			require.NoError(t, err)
			_, err = kv.Put(ctx, dst.Tenant+"."+dst.Secret, raw)
			require.NoError(t, err)

			_, got, err := b.Read(ctx, dst)
			require.Error(t, err, "a ciphertext of acme/a decrypted as %s", dst)
			require.NotErrorIs(t, err, handlers.ErrNotFound)
			require.Nil(t, got)
			backendtest.RequireNoValue(t, err.Error(), value)
			require.Error(t, b.Test(ctx, dst, handlers.Version{ID: "1"}))
		})
	}

	// A ciphertext moved between versions of one secret.
	t.Run("between versions", func(t *testing.T) {
		v2, err := b.Create(ctx, src, "req")
		require.NoError(t, err)
		require.NoError(t, b.Test(ctx, src, v2))
		_, raw := rawEntry(t, js, src)
		var rec map[string]any
		require.NoError(t, json.Unmarshal(raw, &rec))
		versions := rec["versions"].([]any)
		byID := map[string]map[string]any{}
		for _, v := range versions {
			m := v.(map[string]any)
			byID[m["id"].(string)] = m
		}
		require.Contains(t, byID, "1")
		require.Contains(t, byID, v2.ID)
		byID[v2.ID]["ciphertext"] = byID["1"]["ciphertext"]
		tampered, err := json.Marshal(rec)
		require.NoError(t, err)
		_, err = kv.Put(ctx, "acme.a", tampered)
		require.NoError(t, err)

		err = b.Test(ctx, src, v2)
		require.Error(t, err, "the ciphertext of v1 decrypted as v2")
		backendtest.RequireNoValue(t, err.Error(), value)
		_, got, err := b.Read(ctx, src)
		require.NoError(t, err, "v1 itself is untouched")
		require.Equal(t, value, got)
	})
	backendtest.RequireNoValue(t, logs.String(), value)
}

func TestWrongKey(t *testing.T) {
	_, js := startJS(t)
	ctx := t.Context()
	right := newBackend(t, js, newKey(t), nil)
	wrong := newBackend(t, js, newKey(t), nil) // same bucket, other key
	r := ref("acme", "s")
	v, _, err := right.Ensure(ctx, r)
	require.NoError(t, err)

	_, got, err := wrong.Read(ctx, r)
	require.Error(t, err, "read with the wrong key")
	require.Nil(t, got)
	require.Error(t, wrong.Test(ctx, r, v))

	_, value, err := right.Read(ctx, r)
	require.NoError(t, err)
	require.NotEmpty(t, value)
	backendtest.RequireNoValue(t, err2s(wrong.Test(ctx, r, v)), value)
}

func err2s(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestConfigValidate(t *testing.T) {
	key := make([]byte, 32)
	tests := []struct {
		name    string
		cfg     local.Config
		wantErr string
	}{
		{"defaults", local.Config{Key: key}, ""},
		{"explicit", local.Config{Key: key, Bucket: "my-bucket_1", Replicas: 3}, ""},
		{"no key", local.Config{}, "key is 0 bytes"},
		{"short key", local.Config{Key: key[:16]}, "key is 16 bytes"},
		{"bad bucket", local.Config{Key: key, Bucket: "a.b"}, "bucket"},
		{"replicas low", local.Config{Key: key, Replicas: -1}, "replicas"},
		{"replicas high", local.Config{Key: key, Replicas: 6}, "replicas"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
	d := local.Config{}.Defaults()
	require.Equal(t, "rekey_local", d.Bucket)
	require.Equal(t, 1, d.Replicas)
}

func TestParseKey(t *testing.T) {
	key := bytes.Repeat([]byte{0xab}, 32)
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{"padded", base64.StdEncoding.EncodeToString(key), ""},
		{"unpadded", base64.RawStdEncoding.EncodeToString(key), ""},
		{"newline", base64.StdEncoding.EncodeToString(key) + "\n", ""},
		{"short", base64.StdEncoding.EncodeToString(key[:31]), "31 bytes"},
		{"long", base64.StdEncoding.EncodeToString(append(key, 1)), "33 bytes"},
		{"not base64", "not*base64!", "not base64"},
		{"empty", "", "0 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := local.ParseKey(tc.in)
			if tc.wantErr == "" {
				require.NoError(t, err)
				require.Equal(t, key, got)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
			if tc.in != "" {
				require.NotContains(t, err.Error(), tc.in, "error shows the input")
			}
		})
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "rekey")
	path := filepath.Join(dir, "local.key")

	key, err := local.LoadOrCreateKey(path)
	require.NoError(t, err)
	require.Len(t, key, local.KeySize)
	require.NotEqual(t, make([]byte, local.KeySize), key, "key is all zeros")

	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "key file mode")
	di, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), di.Mode().Perm(), "key directory mode")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "temporary files left behind")

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	parsed, err := local.ParseKey(string(data))
	require.NoError(t, err)
	require.Equal(t, key, parsed, "file holds the returned key")

	again, err := local.LoadOrCreateKey(path)
	require.NoError(t, err)
	require.Equal(t, key, again, "second call must reuse the key file")
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	good := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		wantErr string
	}{
		{"world readable", good, 0o644, "mode 0644"},
		{"group readable", good, 0o640, "mode 0640"},
		{"other writable", good, 0o602, "mode 0602"},
		{"short key", base64.StdEncoding.EncodeToString(make([]byte, 16)), 0o600, "16 bytes"},
		{"garbage", "hello world", 0o600, "not base64"},
		{"empty", "", 0o600, "0 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "local.key")
			require.NoError(t, os.WriteFile(path, []byte(tc.content), 0o600))
			require.NoError(t, os.Chmod(path, tc.mode))

			key, err := local.LoadOrCreateKey(path)
			require.Error(t, err)
			require.Nil(t, key)
			require.ErrorContains(t, err, tc.wantErr)
			require.ErrorContains(t, err, path, "error must name the file")
			require.NotContains(t, err.Error(), good, "error shows the key")

			data, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, tc.content, string(data), "a refused key file must not be replaced")
		})
	}

	t.Run("directory", func(t *testing.T) {
		path := t.TempDir()
		_, err := local.LoadOrCreateKey(path)
		require.ErrorContains(t, err, "not a regular file")
	})
}

func TestFetchServer(t *testing.T) {
	nc, js := startJS(t)
	logs := &backendtest.LogBuffer{}
	b := newBackend(t, js, newKey(t), logs.Logger())
	ctx := t.Context()

	known := map[string]bool{
		"acme/openai-key": true, "acme/empty": true,
		"evil/openai-key": true, "broken/openai-key": true,
	}
	for _, s := range []string{"acme/openai-key", "evil/openai-key", "broken/openai-key"} {
		r, err := schemas.ParseRef(s)
		require.NoError(t, err)
		_, _, err = b.Ensure(ctx, ref(r.Tenant, r.Secret))
		require.NoError(t, err)
	}
	resolve := func(tenant, secret string) (handlers.SecretRef, bool) {
		return ref(tenant, secret), known[tenant+"/"+secret]
	}
	revoked := func(_ context.Context, tenant string) (bool, error) {
		switch tenant {
		case "evil":
			return true, nil
		case "broken":
			return false, fmt.Errorf("state store down")
		}
		return false, nil
	}
	srv := local.NewServer(nc, nil, b, resolve, revoked, nil, logs.Logger())
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	t.Cleanup(stop)

	fetch := func(t *testing.T, subject string) schemas.FetchResponse {
		t.Helper()
		body, err := json.Marshal(schemas.FetchRequest{Agent: "planner-1"})
		require.NoError(t, err)
		// Run subscribes in its goroutine: wait for it to answer.
		var msg *nats.Msg
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			msg, err = tenantRequest(nc, subject, body, 2*time.Second)
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		require.NoError(t, err, "no reply on %s", subject)
		var resp schemas.FetchResponse
		require.NoError(t, json.Unmarshal(msg.Data, &resp))
		return resp
	}

	wantVersion, wantValue, err := b.Read(ctx, ref("acme", "openai-key"))
	require.NoError(t, err)
	_, evilValue, err := b.Read(ctx, ref("evil", "openai-key"))
	require.NoError(t, err)
	_, brokenValue, err := b.Read(ctx, ref("broken", "openai-key"))
	require.NoError(t, err)

	t.Run("value", func(t *testing.T) {
		resp := fetch(t, schemas.FetchSubject("acme", "openai-key"))
		require.Empty(t, resp.Code, "error: %s", resp.Error)
		require.Equal(t, wantVersion, resp.Version)
		require.Equal(t, wantValue, resp.Value)
	})

	tests := []struct {
		name    string
		subject string
		code    string
	}{
		{"unknown secret", schemas.FetchSubject("acme", "nope"), schemas.FetchNotFound},
		{"unknown tenant", schemas.FetchSubject("initech", "openai-key"), schemas.FetchNotFound},
		{"no version", schemas.FetchSubject("acme", "empty"), schemas.FetchNotFound},
		{"revoked", schemas.FetchSubject("evil", "openai-key"), schemas.FetchRevoked},
		{"revocation state unknown", schemas.FetchSubject("broken", "openai-key"), schemas.FetchInternal},
		{"invalid secret", "rekey.fetch.acme._tenant", schemas.FetchInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := fetch(t, tc.subject)
			require.Equal(t, tc.code, resp.Code, "error: %s", resp.Error)
			require.NotEmpty(t, resp.Error)
			require.Empty(t, resp.Value, "an error reply carries a value")
			require.Empty(t, resp.Version)
		})
	}

	// A reply subject that is not an inbox of the tenant named in the
	// request subject gets nothing: NATS does not check it against the
	// requester's permissions, so the server must (the bus back door).
	t.Run("reply subject outside the tenant's inboxes", func(t *testing.T) {
		before := srv.Refused()
		for _, tc := range []struct{ subject, reply string }{
			{schemas.FetchSubject("acme", "openai-key"), "$KV.rekey_tenants.acme"},
			{schemas.FetchSubject("acme", "openai-key"), "rekey.invalidate.globex.openai-key"},
			{schemas.FetchSubject("acme", "openai-key"), "_INBOX_globex.x"},
			{schemas.FetchSubject("acme", "openai-key"), "_INBOX.x"},
			{"rekey.fetch.ACME.openai-key", "_INBOX_ACME.x"},
		} {
			sub, err := nc.SubscribeSync(tc.reply)
			require.NoError(t, err)
			require.NoError(t, nc.PublishRequest(tc.subject, tc.reply, nil))
			_, err = sub.NextMsg(300 * time.Millisecond)
			require.ErrorIs(t, err, nats.ErrTimeout, "a reply was published on %s", tc.reply)
			require.NoError(t, sub.Unsubscribe())
		}
		require.Equal(t, before+5, srv.Refused())
	})

	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for range 50 {
			wg.Go(func() {
				msg, err := tenantRequest(nc, schemas.FetchSubject("acme", "openai-key"), nil, 5*time.Second)
				if err != nil {
					errs <- err
					return
				}
				var resp schemas.FetchResponse
				if err := json.Unmarshal(msg.Data, &resp); err != nil || !bytes.Equal(resp.Value, wantValue) {
					errs <- fmt.Errorf("bad reply: code %q, err %v", resp.Code, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
	})

	stop()
	select {
	case err := <-done:
		require.NoError(t, err, "Run after ctx ended")
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after ctx ended")
	}
	_, err = nc.Request(schemas.FetchSubject("acme", "openai-key"), nil, time.Second)
	require.ErrorIs(t, err, nats.ErrNoResponders, "server still answering after Run returned")

	logText := logs.String()
	require.Contains(t, logText, "fetch refused: tenant revoked", "logs were not captured")
	backendtest.RequireNoValue(t, logText, wantValue, evilValue, brokenValue)
}

// TestFetchServerDrain: a request being served when ctx ends is still
// answered, and Run returns only after it.
func TestFetchServerDrain(t *testing.T) {
	nc, js := startJS(t)
	b := newBackend(t, js, newKey(t), nil)
	r := ref("acme", "openai-key")
	_, _, err := b.Ensure(t.Context(), r)
	require.NoError(t, err)

	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	revoked := func(context.Context, string) (bool, error) {
		entered <- struct{}{}
		<-release
		return false, nil
	}
	resolve := func(tenant, secret string) (handlers.SecretRef, bool) { return ref(tenant, secret), true }
	srv := local.NewServer(nc, nil, b, resolve, revoked, nil, nil)
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	replies := make(chan *nats.Msg, 1)
	go func() {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			msg, err := tenantRequest(nc, schemas.FetchSubject("acme", "openai-key"), nil, 10*time.Second)
			if err == nil {
				replies <- msg
				return
			}
		}
		close(replies)
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("request never reached the server")
	}
	stop()
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) while a request was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)

	msg, ok := <-replies
	require.True(t, ok, "in-flight request got no reply")
	var resp schemas.FetchResponse
	require.NoError(t, json.Unmarshal(msg.Data, &resp))
	require.Empty(t, resp.Code, "error: %s", resp.Error)
	require.NotEmpty(t, resp.Value)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after the in-flight request was done")
	}
}

// tenantRequest sends a fetch request as an agent of the subject's tenant
// does: with a reply subject under the tenant's inbox prefix.
func tenantRequest(nc *nats.Conn, subject string, data []byte, timeout time.Duration) (*nats.Msg, error) {
	tenant := strings.Split(subject, ".")[2]
	inbox := schemas.AgentInboxPrefix(tenant) + "." + strings.TrimPrefix(nats.NewInbox(), "_INBOX.")
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, data); err != nil {
		return nil, err
	}
	return sub.NextMsg(timeout)
}
