package testutil

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rekey-dev/rekey/internal/natsrun"
)

// FindBinary returns a program that tests run as a child process (an
// emulator, a dev server): $env when it is set, else .cache/bin/<name> of
// the repository, the nearest directory above the working directory that
// has .ci/<name>.sh, the script that builds it. The error says where it
// looked and ends with howTo, the advice on getting the program; tests
// turn it into a failure, never a skip.
func FindBinary(name, env, howTo string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s binary %s=%s: %w; %s", name, env, p, err, howTo)
		}
		return p, nil
	}
	root, err := repoRoot(filepath.Join(".ci", name+".sh"))
	if err != nil {
		return "", fmt.Errorf("%s binary: repository root: %w; %s", name, err, howTo)
	}
	p := filepath.Join(root, ".cache", "bin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s binary not found at %s: %s", name, p, howTo)
	}
	return p, nil
}

// repoRoot walks up from the working directory to the first directory
// that has marker.
func repoRoot(marker string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, marker)); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no directory with %s above the working directory", marker)
		}
		dir = parent
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// for a child process that must be told its port.
func FreePort() (int, error) {
	ports, err := natsrun.FreePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// EnvWithout is the environment without the variables whose names start
// with one of prefixes, for a child that must not see the caller's
// settings of what it serves (AWS_, VAULT_ ...).
func EnvWithout(prefixes ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(kv, p) }) {
			out = append(out, kv)
		}
	}
	return out
}

// LastLines returns the last n lines of s, e.g. of a child's output for a
// failure message.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Lazy is a server that the tests of a binary start on first use, once,
// and TestMain stops: the tests that do not need it run without it.
type Lazy[T any] struct {
	mu    sync.Mutex
	tried bool
	v     T
	err   error
}

// Get starts the server with start, given timeout, on first use, and
// fails t, saying what it needs, when the server could not be started.
func (l *Lazy[T]) Get(t testing.TB, need string, timeout time.Duration, start func(context.Context) (T, error)) T {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.tried {
		l.tried = true
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		l.v, l.err = start(ctx)
		cancel()
	}
	if l.err != nil {
		t.Fatalf("this test needs %s: %v", need, l.err)
	}
	return l.v
}

// Value returns the server, the zero T when it was not started; it waits
// for a start under way.
func (l *Lazy[T]) Value() T {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.v
}
