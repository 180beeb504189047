// Package sidecar is rekey-agent: a local process that holds one tenant's
// fanout/agent (its cache, push invalidation, acks, heartbeats, resync,
// use reports and fail-closed behaviour) and serves it to programs in any
// language through the read APIs they already speak:
//
//   - rekey's own API (GET /v1/secrets/{secret}, a Server-Sent Events
//     stream of invalidations, /healthz, /readyz, /metrics);
//   - the AWS Secrets Manager Agent protocol (GET /secretsmanager/get and
//     GET /v1/{secretId}, with its SSRF token header);
//   - the Secrets Manager JSON 1.1 API (GetSecretValue, BatchGetSecretValue,
//     DescribeSecret), SigV4 verified against a local access key;
//   - a subset of Vault's HTTP API (KV v2 data and metadata reads, database
//     creds and static-creds, sys/health, auth/token/lookup-self).
//
// Each API has its own listener, on loopback or a Unix socket (mode 0600).
// Names from the outside (AWS names and ARNs, Vault paths) map to rekey
// secret ids through the templates of Mapping, the same ones as rekey's
// backends; a name that does not map into the tenant is "not found" in that
// API's shape. A revoked tenant gets that API's access-denied error: every
// read goes through Source.Get, which fails closed.
//
// Every API takes X-Rekey-Tool and X-Rekey-Run (malformed ones are refused
// in the API's error shape): the tool (else the listener's default) and
// the run go into the agent's use reports. A read naming a run goes
// through that run (agent.Run.Get: credentials made for the run alone for
// the secrets made per run); DELETE /v1/runs/{id} ends it at once, and an
// ended run's id is refused from then on. POST /v1/scan passes a text
// through the agent's leak guard.
//
// No secret value is written to a log, an error or a metric.
package sidecar

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

// Source is what the sidecar reads secrets from: an *agent.Agent.
type Source interface {
	Get(ctx context.Context, secret string) (agent.Secret, error)
	// GetFor is Get on behalf of a tool (use reports name it).
	GetFor(ctx context.Context, secret string, u agent.Use) (agent.Secret, error)
	// BeginRun starts a pipeline run (X-Rekey-Run).
	BeginRun(ctx context.Context, id string, opts ...agent.RunOption) *agent.Run
	// ScanFrom is the leak guard (POST /v1/scan).
	ScanFrom(text string, o agent.ScanOrigin) (string, []agent.Leak)
	Revoked() bool
}

var _ Source = (*agent.Agent)(nil)

// Defaults of Config.
const (
	DefaultListen         = "127.0.0.1:7421"
	DefaultAWSAgentListen = "127.0.0.1:2773"
	DefaultRegion         = "us-east-1"
	DefaultAccount        = "000000000000"
	// DefaultMaxSkew is how far a SigV4 request's date may be from now,
	// as in AWS.
	DefaultMaxSkew = 5 * time.Minute
	// DefaultRequestTimeout bounds one read (a fetch on a miss). It is the
	// agent's fetch timeout: a read's deadline also bounds the agent's
	// fetch (the later of the two), so a longer one would make a client of
	// the sidecar wait longer than an in-process Get for a fetch request
	// rekeyd dropped (its per-tenant fetch buffer full), which is only
	// noticed at the deadline.
	DefaultRequestTimeout = agent.DefaultFetchTimeout
)

// Config configures a Server. An empty listen address turns its API off.
type Config struct {
	// Tenant served. Required.
	Tenant string
	// Listen, AWSAgentListen, AWSAPIListen, VaultListen: host:port on a
	// loopback address, or unix:/path (or an absolute path) for a Unix
	// socket created with mode 0600.
	Listen, AWSAgentListen, AWSAPIListen, VaultListen string
	// Token is the bearer token clients of rekey's own API send
	// (Authorization: Bearer). Required when Listen is set.
	Token string
	// AWSAgentToken is the SSRF token AWS agent clients send in
	// X-Aws-Parameters-Secrets-Token (or X-Vault-Token). Required when
	// AWSAgentListen is set.
	AWSAgentToken string
	// AWSAccessKeyID and AWSSecretAccessKey are the key pair the local
	// clients of the JSON API sign with. Required when AWSAPIListen is set.
	AWSAccessKeyID, AWSSecretAccessKey string
	// MaxSkew bounds the SigV4 request date. Default 5m.
	MaxSkew time.Duration
	// VaultToken is the sidecar-local token Vault clients send in
	// X-Vault-Token. Required when VaultListen is set.
	VaultToken string
	// Mapping maps outside names to the tenant's secret ids.
	Mapping Mapping
	// RequestTimeout bounds one read. Default DefaultRequestTimeout (5s).
	RequestTimeout time.Duration
	// Logger receives request logs (names and outcomes, never values).
	Logger *slog.Logger
	// Ready reports whether the agent is connected and resynced
	// (agent.Agent.Synced); nil: always.
	Ready func() bool
	// Tool, AWSAgentTool, AWSAPITool, VaultTool: the tool reported for
	// the reads of each API whose request has no X-Rekey-Tool header
	// (empty: the agent's Config.Tool).
	Tool, AWSAgentTool, AWSAPITool, VaultTool string
	// MaxRuns bounds the pipeline runs open at once (X-Rekey-Run).
	// Default DefaultMaxRuns.
	MaxRuns int
	// RunTTL bounds a run: its credentials live at most RunTTL and a run
	// never ended ends RunTTL after it began. Default agent.DefaultRunTTL.
	RunTTL time.Duration
	// MaxScanBytes bounds the body of POST /v1/scan. Default
	// DefaultMaxScanBytes.
	MaxScanBytes int64
}

func (c *Config) setDefaults() {
	if c.MaxSkew == 0 {
		c.MaxSkew = DefaultMaxSkew
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Ready == nil {
		c.Ready = func() bool { return true }
	}
	c.Mapping = c.Mapping.Defaults()
	if c.MaxRuns == 0 {
		c.MaxRuns = DefaultMaxRuns
	}
	if c.RunTTL == 0 {
		c.RunTTL = agent.DefaultRunTTL
	}
	if c.MaxScanBytes == 0 {
		c.MaxScanBytes = DefaultMaxScanBytes
	}
}

// Validate checks c after defaults, naming the field at fault.
func (c Config) Validate() error {
	c.setDefaults()
	var errs []error
	if err := schemas.ValidateID("tenant", c.Tenant); err != nil {
		errs = append(errs, fmt.Errorf("tenant: %w", err))
	}
	for _, l := range []struct{ name, addr string }{
		{"listen", c.Listen}, {"aws-agent-listen", c.AWSAgentListen},
		{"aws-api-listen", c.AWSAPIListen}, {"vault-listen", c.VaultListen},
	} {
		if err := checkAddr(l.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", l.name, err))
		}
	}
	if c.Listen != "" && len(c.Token) < 16 {
		errs = append(errs, errors.New("token: required (at least 16 characters) when listen is set"))
	}
	if c.AWSAgentListen != "" && len(c.AWSAgentToken) < 16 {
		errs = append(errs, errors.New("aws-agent token: required (at least 16 characters) when aws-agent-listen is set"))
	}
	if c.AWSAPIListen != "" && (c.AWSAccessKeyID == "" || len(c.AWSSecretAccessKey) < 16) {
		errs = append(errs, errors.New("aws-api access key: an access key id and a secret access key of at least 16 characters are required when aws-api-listen is set"))
	}
	if c.VaultListen != "" && len(c.VaultToken) < 16 {
		errs = append(errs, errors.New("vault token: required (at least 16 characters) when vault-listen is set"))
	}
	if c.MaxSkew < 0 || c.RequestTimeout < 0 {
		errs = append(errs, errors.New("max-skew and request-timeout must not be negative"))
	}
	for _, t := range []struct{ name, tool string }{
		{"tool", c.Tool}, {"aws-agent-tool", c.AWSAgentTool}, {"aws-api-tool", c.AWSAPITool}, {"vault-tool", c.VaultTool},
	} {
		if t.tool == "" {
			continue
		}
		if err := validTool(t.tool); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.name, err))
		}
	}
	if c.MaxRuns < 0 || c.RunTTL < 0 || c.MaxScanBytes < 0 {
		errs = append(errs, errors.New("max-runs, run-ttl and max-scan-bytes must not be negative"))
	}
	if err := c.Mapping.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("rekey-agent config: %w", err)
	}
	return nil
}

// Server serves a Source through the configured APIs.
type Server struct {
	cfg     Config
	src     Source
	log     *slog.Logger
	metrics *metrics
	events  *broker
	names   names
	runs    *runTable
	// signer signs requests again to check them; one for all, so that its
	// cache of derived signing keys (per key, date, region, service) is kept.
	signer *v4.Signer
	// vaultKVPrefix and vaultDBPrefix are the Vault mounts with a slash.
	vaultKVPrefix, vaultDBPrefix string

	mu   sync.Mutex
	addr map[string]string // API -> bound address, once listening
}

// API names, as in metric labels and Addr.
const (
	APIRekey    = "rekey"
	APIAWSAgent = "aws-agent"
	APIAWS      = "aws-api"
	APIVault    = "vault"
)

// New returns a Server for src. Set OnInvalidate of the agent's Config to
// the Server's OnInvalidate (create the Server first, then the agent, with
// SetSource) so that the event stream sees the invalidations.
func New(cfg Config, src Source) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Server{
		cfg: cfg, src: src, log: cfg.Logger.With("component", "fanout/sidecar", "tenant", cfg.Tenant),
		metrics: newMetrics(), events: newBroker(), addr: map[string]string{}, signer: v4.NewSigner(),
	}
	s.names = names{tenant: cfg.Tenant, m: cfg.Mapping}
	s.vaultKVPrefix, s.vaultDBPrefix = s.names.kvMount()+"/", s.names.dbMount()+"/"
	s.runs = newRunTable(func() Source { return s.src }, cfg.MaxRuns, cfg.RunTTL)
	return s, nil
}

// SetSource sets the Source when it was created after the Server (its
// OnInvalidate is the Server's). Call it before Run.
func (s *Server) SetSource(src Source) { s.src = src }

// OnInvalidate passes an applied invalidation to the event stream and the
// metrics; use it as the agent's Config.OnInvalidate.
func (s *Server) OnInvalidate(ev agent.Invalidated) {
	inv := ev.Invalidation
	s.metrics.invalidations.WithLabelValues(inv.Kind).Inc()
	s.events.publish(Event{
		Kind: inv.Kind, Tenant: inv.Tenant, Secret: inv.Secret, Version: inv.Version,
		Reason: inv.Reason, RequestID: inv.RequestID, PublishedAt: ev.EventTime, DroppedAt: ev.DroppedAt,
	})
}

// Addr returns the address an API listens on once Run has bound it ("" if
// off or not yet bound).
func (s *Server) Addr(api string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr[api]
}

// Run listens on every configured address and serves until ctx ends, then
// stops taking requests and waits up to 5s for those in flight. It returns
// an error if a listener cannot be opened.
func (s *Server) Run(ctx context.Context) error {
	if s.src == nil {
		return errors.New("sidecar: no source (SetSource)")
	}
	type api struct {
		name, addr, tool string
		h                http.Handler
	}
	apis := []api{
		{APIRekey, s.cfg.Listen, s.cfg.Tool, s.rekeyHandler()},
		{APIAWSAgent, s.cfg.AWSAgentListen, s.cfg.AWSAgentTool, s.awsAgentHandler()},
		{APIAWS, s.cfg.AWSAPIListen, s.cfg.AWSAPITool, s.awsAPIHandler()},
		{APIVault, s.cfg.VaultListen, s.cfg.VaultTool, s.vaultHandler()},
	}
	var servers []*http.Server
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}
	for _, a := range apis {
		if a.addr == "" {
			continue
		}
		ln, err := listen(a.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("sidecar: %s listener: %w", a.name, err)
		}
		lns = append(lns, ln)
		servers = append(servers, &http.Server{
			Handler: s.instrument(a.name, s.withCaller(a.name, a.tool, a.h)), ReadHeaderTimeout: 5 * time.Second,
			MaxHeaderBytes: 64 << 10, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		})
		s.mu.Lock()
		s.addr[a.name] = ln.Addr().String()
		s.mu.Unlock()
		s.log.Info("listening", "api", a.name, "addr", ln.Addr().String())
	}
	errc := make(chan error, len(servers))
	for i, srv := range servers {
		go func() {
			if err := srv.Serve(lns[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
				return
			}
			errc <- nil
		}()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.events.close() // ends the event streams, which Shutdown would wait for
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		_ = srv.Shutdown(sctx) // in-flight reads end within RequestTimeout
	}
	if err := s.runs.endAll(); err != nil {
		s.log.Warn("runs ended; credentials not all revoked", "error", err)
	}
	for _, a := range apis {
		if p, ok := unixPath(a.addr); ok {
			_ = os.Remove(p)
		}
	}
	if runErr != nil {
		return fmt.Errorf("sidecar: serve: %w", runErr)
	}
	return nil
}

// get reads one secret for an API request, with the request timeout, on
// behalf of the request's tool, through its run if it names one.
func (s *Server) get(r *http.Request, secret string) (agent.Secret, error) {
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	c := callerOf(ctx)
	if c.run == "" {
		return s.src.GetFor(ctx, secret, agent.Use{Tool: c.tool})
	}
	run, err := s.runs.get(ctx, c.run)
	if err != nil {
		return agent.Secret{}, err
	}
	return run.GetFor(ctx, secret, c.tool)
}

// Outcome of a read, for each API's error shape.
type outcome int

const (
	outOK outcome = iota
	outNotFound
	outDenied
	outUnavailable
)

// classify maps a Source error to an outcome. Revoked, closed and not
// started all refuse: the agent fails closed, and so does the sidecar.
func classify(err error) outcome {
	switch {
	case err == nil:
		return outOK
	case errors.Is(err, agent.ErrNotFound):
		return outNotFound
	case errors.Is(err, agent.ErrRevoked):
		return outDenied
	default:
		return outUnavailable
	}
}

// tokenEqual compares a presented token with the expected one in constant
// time (for equal lengths; the length of the expected token is not secret
// enough to matter and is at least 16).
func tokenEqual(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// forwarded reports whether a request came through a proxy: such requests
// are refused by every API (SSRF through a forwarding proxy).
func forwarded(r *http.Request) bool {
	return r.Header.Get("X-Forwarded-For") != "" || r.Header.Get("Forwarded") != ""
}

// checkAddr accepts "", a loopback host:port, localhost:port, or a Unix
// socket path (unix:/path or /path).
func checkAddr(addr string) error {
	if addr == "" {
		return nil
	}
	if p, ok := unixPath(addr); ok {
		if p == "" || !strings.HasPrefix(p, "/") {
			return fmt.Errorf("unix socket %q: an absolute path is required", addr)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if port == "" {
		return fmt.Errorf("address %q: no port", addr)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q: only loopback addresses (127.0.0.1, ::1, localhost) or a Unix socket may be used", addr)
	}
	return nil
}

func unixPath(addr string) (string, bool) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return p, true
	}
	if strings.HasPrefix(addr, "/") {
		return addr, true
	}
	return "", false
}

// listen opens addr; a Unix socket is created with mode 0600 (a stale
// socket file is removed first).
func listen(addr string) (net.Listener, error) {
	if err := checkAddr(addr); err != nil {
		return nil, err
	}
	p, ok := unixPath(addr)
	if !ok {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(p)
	}
	// The socket is created under a umask that leaves it 0600 from the
	// start, not chmod-ed after others could connect.
	ln, err := listenUnix0600(p)
	if err != nil {
		return nil, err
	}
	return ln, nil
}
