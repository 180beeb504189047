package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
)

// LeakWriter redacts held values from what is written through it (see
// Agent.Scan). A value may arrive over several writes, so it holds back the
// last bytes of each write (twice the longest form of a held value) until
// more come or Flush or Close is called.
type LeakWriter struct {
	a       *Agent
	w       io.Writer
	origin  ScanOrigin
	mu      sync.Mutex
	pending []byte
}

// Writer wraps w with the leak guard. o.Where defaults to "writer".
func (a *Agent) Writer(w io.Writer, o ScanOrigin) *LeakWriter {
	if o.Where == "" {
		o.Where = "writer"
	}
	return &LeakWriter{a: a, w: w, origin: o}
}

// Write scans what was held back and p, writes the redacted text but the
// tail it holds back, and returns len(p) when that succeeded.
func (lw *LeakWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	lw.pending = append(lw.pending, p...)
	clean, leaks := lw.a.ScanBytes(lw.pending, lw.origin)
	hold := 2 * lw.a.guard.matcher().maxSpan
	if hold >= len(clean) {
		if leaks != nil { // keep the redacted text
			lw.pending = append(lw.pending[:0], clean...)
		}
		return len(p), nil
	}
	out, tail := clean[:len(clean)-hold], clean[len(clean)-hold:]
	if _, err := lw.w.Write(out); err != nil {
		return 0, fmt.Errorf("leak guard: write: %w", err)
	}
	lw.pending = append(lw.pending[:0], tail...)
	return len(p), nil
}

// Flush writes what is held back.
func (lw *LeakWriter) Flush() error {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if len(lw.pending) == 0 {
		return nil
	}
	clean, _ := lw.a.ScanBytes(lw.pending, lw.origin)
	lw.pending = lw.pending[:0]
	if _, err := lw.w.Write(clean); err != nil {
		return fmt.Errorf("leak guard: write: %w", err)
	}
	return nil
}

// Close flushes, and closes the underlying writer if it is an io.Closer.
func (lw *LeakWriter) Close() error {
	err := lw.Flush()
	if c, ok := lw.w.(io.Closer); ok {
		err = errors.Join(err, c.Close())
	}
	return err
}

// MaxScannedBody is the largest request body the leak guard's
// RoundTripper reads; a larger one is refused (it could not be scanned).
const MaxScannedBody = 16 << 20

// ErrBodyTooLarge is returned by the leak guard's RoundTripper for a body
// over MaxScannedBody.
var ErrBodyTooLarge = errors.New("agent: leak guard: request body too large to scan")

type leakTransport struct {
	a      *Agent
	next   http.RoundTripper
	origin ScanOrigin
}

// RoundTripper wraps next (http.DefaultTransport when nil) with the leak
// guard: a request's URL, header values and body are scanned and sent
// redacted; each leak is reported with Where "http:url", "http:header" or
// "http:body".
func (a *Agent) RoundTripper(next http.RoundTripper, o ScanOrigin) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return &leakTransport{a: a, next: next, origin: o}
}

func (t *leakTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	out := req.Clone(req.Context())
	o := t.origin
	o.Where = "http:url"
	if u, leaks := t.a.ScanFrom(req.URL.String(), o); leaks != nil {
		nu, err := url.Parse(u)
		if err != nil {
			return nil, fmt.Errorf("leak guard: redacted URL: %w", err)
		}
		out.URL = nu
	}
	o.Where = "http:header"
	for k, vs := range req.Header {
		for i, v := range vs {
			if c, leaks := t.a.ScanFrom(v, o); leaks != nil {
				nv := append([]string(nil), out.Header[k]...)
				nv[i] = c
				out.Header[k] = nv
			}
		}
	}
	if req.Body != nil && req.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(req.Body, MaxScannedBody+1))
		_ = req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("leak guard: read body: %w", err)
		}
		if len(b) > MaxScannedBody {
			return nil, ErrBodyTooLarge
		}
		o.Where = "http:body"
		b, _ = t.a.ScanBytes(b, o)
		out.Body = io.NopCloser(bytes.NewReader(b))
		out.ContentLength = int64(len(b))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	return t.next.RoundTrip(out)
}
