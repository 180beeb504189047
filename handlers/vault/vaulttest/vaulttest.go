// Package vaulttest starts the real servers that the Vault backend's tests
// need, as child processes bound to 127.0.0.1: a Vault dev server (the
// binary that .ci/vault.sh builds) and a throwaway PostgreSQL cluster (the
// Debian packages). A server that cannot be found is an error saying how to
// get it; tests turn it into a failure, never a skip.
//
// The children get SIGKILL if the test process dies (Pdeathsig), so a
// killed test leaves no server behind.
package vaulttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/rekey-dev/rekey/internal/testutil"
)

// EnvVaultBin overrides where the vault binary is looked for.
const EnvVaultBin = "REKEY_VAULT_BIN"

// HowToGetVault is the advice in the error when the binary is missing.
const HowToGetVault = "build it with `bash .ci/vault.sh` (Vault v1.14.0 into .cache/bin/vault, several minutes the first time), or set " + EnvVaultBin

// HowToGetPostgres is the advice in the error when PostgreSQL is missing.
const HowToGetPostgres = "install it with `apt-get install -y postgresql` (or `bash .ci/postgres.sh --install`)"

// FindVault returns the vault binary: $REKEY_VAULT_BIN, else
// <repository>/.cache/bin/vault.
func FindVault() (string, error) {
	return testutil.FindBinary("vault", EnvVaultBin, HowToGetVault)
}

// Vault is a running dev server.
type Vault struct {
	// Addr is http://127.0.0.1:<port>.
	Addr string
	// RootToken is the dev server's root token.
	RootToken string
	// Client is a client with the root token.
	Client *api.Client
	cmd    *exec.Cmd
	log    *testutil.SyncBuffer
	done   chan struct{}
}

// StartVault starts `vault server -dev` on a free 127.0.0.1 port with a
// random root token and waits until it is unsealed and answers.
func StartVault(ctx context.Context) (*Vault, error) { return StartVaultWith(ctx) }

// StartVaultWith is StartVault with more server flags, e.g.
// "-experiment", "events.alpha1" (Vault's event stream, for
// triggers/vaultevents).
func StartVaultWith(ctx context.Context, extraArgs ...string) (*Vault, error) {
	bin, err := FindVault()
	if err != nil {
		return nil, err
	}
	port, err := testutil.FreePort()
	if err != nil {
		return nil, err
	}
	token := "root-" + randomHex(12)
	v := &Vault{Addr: fmt.Sprintf("http://127.0.0.1:%d", port), RootToken: token, log: &testutil.SyncBuffer{}, done: make(chan struct{})}
	v.cmd = exec.Command(bin, "server", "-dev",
		"-dev-listen-address="+fmt.Sprintf("127.0.0.1:%d", port),
		"-dev-root-token-id="+token,
		"-dev-no-store-token", // leave ~/.vault-token alone
		"-log-level=warn")
	v.cmd.Args = append(v.cmd.Args, extraArgs...)
	v.cmd.Env = append(testutil.EnvWithout("VAULT_", "PG"), "HOME="+os.TempDir(), "VAULT_DISABLE_MLOCK=true")
	v.cmd.Stdout, v.cmd.Stderr = v.log, v.log
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := v.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { _ = v.cmd.Wait(); close(v.done) }()

	conf := api.DefaultConfig()
	conf.Address = v.Addr
	conf.MaxRetries = 0
	v.Client, err = api.NewClient(conf)
	if err != nil {
		v.Stop()
		return nil, err
	}
	v.Client.SetToken(token)
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-v.done:
			return nil, fmt.Errorf("vault dev server exited at start: %s", v.Log())
		default:
		}
		h, err := v.Client.Sys().HealthWithContext(ctx)
		if err == nil && h.Initialized && !h.Sealed {
			return v, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			v.Stop()
			return nil, fmt.Errorf("vault dev server did not become ready at %s (last error %v): %s", v.Addr, err, v.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Log returns what the server printed.
func (v *Vault) Log() string {
	if v == nil || v.log == nil {
		return ""
	}
	return testutil.LastLines(v.log.String(), 40)
}

// Stop stops the server (SIGINT, then SIGKILL after 10s) and waits for it.
func (v *Vault) Stop() {
	if v == nil || v.cmd == nil || v.cmd.Process == nil {
		return
	}
	_ = v.cmd.Process.Signal(os.Interrupt)
	select {
	case <-v.done:
	case <-time.After(10 * time.Second):
		_ = v.cmd.Process.Kill()
		<-v.done
	}
}

// Postgres is a running throwaway PostgreSQL cluster.
type Postgres struct {
	Host     string // 127.0.0.1
	Port     int
	User     string // the superuser, "postgres"
	Password string
	Dir      string // data directory (removed by Stop)
	bin      string
	runAs    *syscall.Credential
}

// URL is a libpq URL for database (e.g. "postgres") as the superuser.
func (p *Postgres) URL(database string) string {
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", p.User, p.Password, p.Host, p.Port, database)
}

// FindPostgres returns the bin directory of the newest PostgreSQL under
// /usr/lib/postgresql (Debian's layout).
func FindPostgres() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		return "", fmt.Errorf("PostgreSQL not found (no /usr/lib/postgresql/*/bin/initdb): %s", HowToGetPostgres)
	}
	sort.Slice(matches, func(i, j int) bool { return pgMajor(matches[i]) < pgMajor(matches[j]) })
	return filepath.Dir(matches[len(matches)-1]), nil
}

func pgMajor(initdb string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return n
}

// StartPostgres initialises a cluster in a new temporary directory and
// starts it on a free 127.0.0.1 port with password (scram-sha-256) auth
// for TCP connections. As root, it runs as the postgres user, which
// initdb requires.
func StartPostgres(ctx context.Context) (*Postgres, error) {
	bin, err := FindPostgres()
	if err != nil {
		return nil, err
	}
	p := &Postgres{Host: "127.0.0.1", User: "postgres", Password: randomHex(16), bin: bin}
	p.Dir, err = os.MkdirTemp("", "rekey-pg-")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			p.Stop()
		}
	}()
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, PostgreSQL must run as user postgres: %w; %s", err, HowToGetPostgres)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.runAs = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(p.Dir, uid, gid); err != nil {
			return nil, err
		}
	}
	pwfile := filepath.Join(p.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(p.Password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if p.runAs != nil {
		_ = os.Chown(pwfile, int(p.runAs.Uid), int(p.runAs.Gid))
	}
	data := filepath.Join(p.Dir, "data")
	if out, err := p.run(ctx, "initdb", "-D", data, "-U", p.User, "--auth=scram-sha-256", "--pwfile="+pwfile, "--encoding=UTF8", "--no-sync"); err != nil {
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	_ = os.Remove(pwfile)
	for attempt := 0; ; attempt++ {
		p.Port, err = testutil.FreePort()
		if err != nil {
			return nil, err
		}
		opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories=%s -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
			p.Port, p.Dir)
		out, err := p.run(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(p.Dir, "log"), "-o", opts, "-w", "-t", "60", "start")
		if err == nil {
			break
		}
		if attempt == 2 {
			logText, _ := os.ReadFile(filepath.Join(p.Dir, "log"))
			return nil, fmt.Errorf("pg_ctl start: %w: %s %s", err, out, logText)
		}
	}
	ok = true
	return p, nil
}

// run runs one of PostgreSQL's programs, as postgres when we are root.
// Pdeathsig is not set: pg_ctl daemonises the server, and Stop stops it.
func (p *Postgres) run(ctx context.Context, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, prog), args...)
	cmd.Env = append(testutil.EnvWithout("VAULT_", "PG"), "LC_ALL=C.UTF-8", "LANG=C.UTF-8")
	cmd.Dir = p.Dir
	if p.runAs != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.runAs}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Stop stops the server at once and removes its directory.
func (p *Postgres) Stop() {
	if p == nil || p.Dir == "" {
		return
	}
	if p.Port != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, _ = p.run(ctx, "pg_ctl", "-D", filepath.Join(p.Dir, "data"), "-m", "immediate", "-w", "stop")
		cancel()
	}
	_ = os.RemoveAll(p.Dir)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
