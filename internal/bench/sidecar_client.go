package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// The load generator of `rekeyctl bench sidecar`: a minimal HTTP/1.1
// client, one keep-alive connection per client and one request at a time
// on it, that writes a request prepared once and reads the status line,
// the headers and Content-Length bytes of body. It costs a fraction of
// net/http's client, so that the sidecar, not the clients, is what the
// two cores spend their time on.

// Environment of the client child process (role "sidecar-clients" of
// RunFanoutChild).
const (
	scAddrEnv     = "REKEY_BENCH_SIDECAR_ADDR"
	scRequestEnv  = "REKEY_BENCH_SIDECAR_REQUEST" // base64 of the raw request
	scClientsEnv  = "REKEY_BENCH_SIDECAR_CLIENTS"
	scDurationEnv = "REKEY_BENCH_SIDECAR_DURATION"
)

// rawRead sends req on a keep-alive connection and reads the reply,
// which must be 200 with a Content-Length.
func rawRead(conn net.Conn, br *bufio.Reader, req []byte) error {
	if _, err := conn.Write(req); err != nil {
		return err
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("reply %q", bytes.TrimSpace(line))
	}
	length := -1
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 { // "\r\n": end of the headers
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if ok && len(k) == len("Content-Length") && strings.EqualFold(string(k), "Content-Length") {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(v))); err != nil {
				return fmt.Errorf("Content-Length %q", bytes.TrimSpace(v))
			}
		}
	}
	if length < 0 {
		return errors.New("reply without Content-Length")
	}
	_, err = br.Discard(length)
	return err
}

// rawLoad reads with req from clients connections to addr for d, each
// one request at a time, and times each read.
func rawLoad(ctx context.Context, addr string, req []byte, clients int, d time.Duration) (SidecarRow, error) {
	conns := make([]net.Conn, 0, clients)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	var dialer net.Dialer
	network := "tcp"
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", p
	}
	for range clients {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return SidecarRow{}, err
		}
		conns = append(conns, c)
	}
	return measureEach(clients, d, func(i int) func() error {
		c := conns[i]
		br := bufio.NewReaderSize(c, 16<<10)
		return func() error { return rawRead(c, br, req) }
	})
}

// runSidecarClients is the client child process: it runs rawLoad with
// its environment and prints "<reads> <took ns> <p50 ns> <p99 ns>".
func runSidecarClients(out *lineWriter) error {
	req, err := base64.StdEncoding.DecodeString(os.Getenv(scRequestEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", scRequestEnv, err)
	}
	clients, err := strconv.Atoi(os.Getenv(scClientsEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", scClientsEnv, err)
	}
	d, err := time.ParseDuration(os.Getenv(scDurationEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", scDurationEnv, err)
	}
	row, err := rawLoad(context.Background(), os.Getenv(scAddrEnv), req, clients, d)
	if err != nil {
		return err
	}
	out.line(row.Reads, int64(row.Took), int64(row.P50), int64(row.P99))
	return nil
}

// rawLoadProcess runs rawLoad in a child process (this binary started
// again, see RunFanoutChild), so that the clients' CPU is not this
// process's.
func rawLoadProcess(ctx context.Context, exe, addr string, req []byte, clients int, d time.Duration) (SidecarRow, error) {
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"=sidecar-clients", scAddrEnv+"="+addr,
		scRequestEnv+"="+base64.StdEncoding.EncodeToString(req),
		scClientsEnv+"="+strconv.Itoa(clients), scDurationEnv+"="+d.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return SidecarRow{}, fmt.Errorf("client process: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var row SidecarRow
	var took, p50, p99 int64
	if _, err := fmt.Sscan(string(b), &row.Reads, &took, &p50, &p99); err != nil {
		return SidecarRow{}, fmt.Errorf("client process reply %q: %w", b, err)
	}
	row.Took, row.P50, row.P99 = time.Duration(took), time.Duration(p50), time.Duration(p99)
	row.ClientCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return row, nil
}

// rawRequest is an HTTP/1.1 request as it goes on the wire.
func rawRequest(method, host, target string, header [][2]string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host)
	for _, h := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	if body != nil {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}
