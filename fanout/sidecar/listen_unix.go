//go:build unix

package sidecar

import (
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
)

var umaskMu sync.Mutex

// listenUnix0600 binds a Unix socket at p with mode 0600: the umask is
// narrowed while it is created (so no other user can ever connect), and
// the mode is set again after, whatever the umask was.
func listenUnix0600(p string) (net.Listener, error) {
	umaskMu.Lock()
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", p)
	syscall.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(p, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("chmod 0600 %s: %w", p, err)
	}
	return ln, nil
}
