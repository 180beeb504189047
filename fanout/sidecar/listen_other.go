//go:build !unix

package sidecar

import (
	"errors"
	"net"
)

// listenUnix0600 is refused where the socket's mode cannot be set first.
func listenUnix0600(string) (net.Listener, error) {
	return nil, errors.New("unix sockets are supported on Unix systems only")
}
