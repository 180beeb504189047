// Package awssmtest is an in-process AWS Secrets Manager emulator for tests,
// and the conformance suite that checks it (and real Secrets Manager)
// behaves the way rekey's awssm backend relies on.
//
// The emulator is a fake, written because the AWS emulator available to
// the tests lacks UpdateSecretVersionStage, RotateSecret, TagResource and
// the ListSecrets filters and gets AWSPENDING wrong. It speaks the real
// wire protocol (AWS JSON 1.1: POST / with X-Amz-Target:
// secretsmanager.<Operation>, errors as HTTP 400 {"__type": code,
// "message": ...}), so the code under test uses the real SDK client, and
// Conformance runs the same checks against it and against AWS.
//
// Implemented operations, with the documented semantics: CreateSecret,
// DescribeSecret, GetSecretValue, PutSecretValue, UpdateSecretVersionStage,
// ListSecretVersionIds, RotateSecret (through an in-process Lambda, see
// Lambda), TagResource, UntagResource, ListSecrets (filters name,
// tag-key, tag-value, description, all; "!" negation), DeleteSecret and
// RestoreSecret.
//
// Not implemented: request signing checks (any credentials are accepted),
// IAM and resource policies (no AccessDeniedException unless injected with
// Fail), KMS (KmsKeyId is ignored), replication, UpdateSecret,
// BatchGetSecretValue, GetRandomPassword, CancelRotateSecret, partial ARNs
// as SecretId (a name or the full ARN only), the primary-region and
// owning-service filters (they match nothing), ListSecrets' SortBy,
// LastAccessedDate, RotationToken and external secret rotation, rotation
// schedules (RotationRules are stored, never acted on), the testSecret run of
// RotateSecret with RotateImmediately=false (it only stores the
// configuration), eventual consistency (every change is visible at once),
// and the time-based removal of deprecated versions: the emulator keeps the
// last KeepDeprecated versions without a staging label and drops older ones.
//
// Fault injection: Throttle answers the next calls with ThrottlingException,
// Fail makes an operation fail with any error code, Stop and Restart take
// the listener down and bring it back on the same port, and Calls counts
// the requests per operation (faulted ones included).
package awssmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
)

// Emulated account and region; ARNs are
// arn:aws:secretsmanager:us-east-1:123456789012:secret:<name>-<6 chars>.
const (
	Region    = "us-east-1"
	AccountID = "123456789012"
)

// Staging labels with a meaning to Secrets Manager.
const (
	StageCurrent  = "AWSCURRENT"
	StagePending  = "AWSPENDING"
	StagePrevious = "AWSPREVIOUS"
)

// Error codes the emulator answers with (the __type of the error body).
const (
	CodeResourceNotFound = "ResourceNotFoundException"
	CodeResourceExists   = "ResourceExistsException"
	CodeInvalidParameter = "InvalidParameterException"
	CodeInvalidRequest   = "InvalidRequestException"
	CodeValidation       = "ValidationException"
	CodeLimitExceeded    = "LimitExceededException"
	CodeThrottling       = "ThrottlingException"
	CodeAccessDenied     = "AccessDeniedException"
	CodeInternal         = "InternalServiceError"
	CodeUnknownOperation = "UnknownOperationException"
)

// KeepDeprecated is how many versions without a staging label a secret
// keeps; older ones are dropped, as Secrets Manager eventually does.
const KeepDeprecated = 5

// Server is a running emulator. It is safe for concurrent use.
type Server struct {
	// srvMu guards the listener; mu guards everything else.
	srvMu sync.Mutex
	addr  string
	srv   *http.Server

	mu       sync.Mutex
	secrets  map[string]*secret // by name
	calls    map[string]int
	throttle int
	faults   map[string]*fault
	lambda   Lambda
	onRotate func(RotationEvent)
	account  string // in the ARNs of secrets created from now on

	// rotations are the in-flight Lambda runs; Close cancels and waits.
	rotations sync.WaitGroup
	ctx       context.Context
	cancel    context.CancelFunc
}

type fault struct {
	times         int // <0: until cleared
	code, message string
}

// Start starts an emulator on 127.0.0.1 (a free port) and stops it when
// the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		secrets: map[string]*secret{}, calls: map[string]int{}, faults: map[string]*fault{},
		lambda: DefaultLambda, ctx: ctx, cancel: cancel, account: AccountID,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("awssmtest: listen: %v", err)
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	t.Cleanup(s.Close)
	return s
}

func (s *Server) serve(ln net.Listener) {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.srv = srv
	go func() { _ = srv.Serve(ln) }()
}

// Endpoint is the base URL to give the SDK (BaseEndpoint).
func (s *Server) Endpoint() string { return "http://" + s.addr }

// Client returns a real Secrets Manager client for the emulator: static
// credentials, region us-east-1, the SDK's standard retryer with at most 5
// attempts and a 20 ms back-off (so that tests of throttling and outages
// are quick). optFns change the options further.
func (s *Server) Client(t testing.TB, optFns ...func(*secretsmanager.Options)) *secretsmanager.Client {
	t.Helper()
	return s.newClient(optFns...)
}

func (s *Server) newClient(optFns ...func(*secretsmanager.Options)) *secretsmanager.Client {
	return secretsmanager.New(secretsmanager.Options{
		Region:       Region,
		BaseEndpoint: aws.String(s.Endpoint()),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIAEMULATOR", "emulator-secret-key", ""),
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 5
			o.MaxBackoff = 20 * time.Millisecond
			o.RateLimiter = ratelimit.None
		}),
	}, optFns...)
}

// Stop closes the listener and every open connection: calls fail as if
// Secrets Manager could not be reached. State is kept for Restart.
func (s *Server) Stop() {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.srv != nil {
		_ = s.srv.Close()
		s.srv = nil
	}
}

// Restart listens again on the port of Start, after Stop.
func (s *Server) Restart() error {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.srv != nil {
		return nil
	}
	var ln net.Listener
	var err error
	for range 50 { // the port can take a moment to be free again
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			s.serve(ln)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("awssmtest: listen again on %s: %w", s.addr, err)
}

// Close stops the emulator and waits for the rotations in flight.
func (s *Server) Close() {
	s.Stop()
	s.cancel()
	s.rotations.Wait()
}

// Throttle answers the next n calls, whatever their operation, with
// ThrottlingException.
func (s *Server) Throttle(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttle = n
}

// Fail makes the next times calls of op (e.g. "PutSecretValue") fail with
// code and message; times < 0 makes every call fail until ClearFaults.
// An InternalServiceError is answered with HTTP 500, anything else 400.
func (s *Server) Fail(op string, times int, code, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[op] = &fault{times: times, code: code, message: message}
}

// ClearFaults removes every fault set by Throttle and Fail.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttle = 0
	clear(s.faults)
}

// Calls returns how many requests for op were received (faulted ones too).
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// CallCounts returns the number of requests received per operation.
func (s *Server) CallCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.calls)
}

// ResetCalls sets every count to zero.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.calls)
}

// Stages returns the staging labels of each labelled version of the
// secret (its name or ARN), as DescribeSecret's VersionIdsToStages; nil
// when there is no such secret.
func (s *Server) Stages(secretID string) map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.find(secretID)
	if sec == nil {
		return nil
	}
	return sec.versionsToStages()
}

// SetAccount sets the account id in the ARNs of the secrets created
// from now on (AccountID until set), e.g. to the account another emulator
// puts in its events.
func (s *Server) SetAccount(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.account = id
}

// ARN returns the ARN of the secret (its name or ARN), "" if there is none.
func (s *Server) ARN(secretID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sec := s.find(secretID); sec != nil {
		return sec.arn
	}
	return ""
}

// operation is one API operation: it decodes its input from body and
// returns its output, or an error.
type operation func(s *Server, body []byte) (any, *apiError)

var operations = map[string]operation{
	"CreateSecret":             opCreateSecret,
	"DescribeSecret":           opDescribeSecret,
	"GetSecretValue":           opGetSecretValue,
	"PutSecretValue":           opPutSecretValue,
	"UpdateSecretVersionStage": opUpdateSecretVersionStage,
	"ListSecretVersionIds":     opListSecretVersionIds,
	"RotateSecret":             opRotateSecret,
	"TagResource":              opTagResource,
	"UntagResource":            opUntagResource,
	"ListSecrets":              opListSecrets,
	"DeleteSecret":             opDeleteSecret,
	"RestoreSecret":            opRestoreSecret,
}

// ServeHTTP answers one AWS JSON 1.1 request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	op, ok := strings.CutPrefix(target, "secretsmanager.")
	if r.Method != http.MethodPost || r.URL.Path != "/" || !ok {
		writeError(w, &apiError{code: CodeUnknownOperation, message: fmt.Sprintf("unknown operation %q", target)})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeError(w, &apiError{code: CodeValidation, message: "cannot read the request body"})
		return
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	w.Header().Set("X-Amzn-RequestId", fmt.Sprintf("emulator-%d", time.Now().UnixNano()))
	out, aerr := s.call(op, body)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_ = json.NewEncoder(w).Encode(out)
}

// call counts the request, applies the faults, then runs the operation.
func (s *Server) call(op string, body []byte) (any, *apiError) {
	fn, known := operations[op]
	s.mu.Lock()
	s.calls[op]++
	if s.throttle > 0 {
		s.throttle--
		s.mu.Unlock()
		return nil, &apiError{code: CodeThrottling, message: "Rate exceeded"}
	}
	if f := s.faults[op]; f != nil && f.times != 0 {
		f.times--
		s.mu.Unlock()
		return nil, &apiError{code: f.code, message: f.message}
	}
	s.mu.Unlock()
	if !known {
		return nil, &apiError{code: CodeUnknownOperation, message: fmt.Sprintf("operation %s is not implemented by the emulator", op)}
	}
	return fn(s, body)
}

// apiError is an error as Secrets Manager returns it.
type apiError struct {
	code, message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errorf(code, format string, args ...any) *apiError {
	return &apiError{code: code, message: fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, e *apiError) {
	status := http.StatusBadRequest
	if e.code == CodeInternal {
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", e.code)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": e.code, "message": e.message})
}

// decode reads an operation's input. The emulator ignores members it does
// not model, as the service ignores ones it does not know.
func decode(body []byte, in any) *apiError {
	if err := json.Unmarshal(body, in); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return errorf(CodeValidation, "the request body is not JSON")
		}
		return errorf(CodeValidation, "the request body does not match the operation's input")
	}
	return nil
}

// epoch is a timestamp encoded as AWS JSON does: seconds since the epoch.
type epoch time.Time

func (e epoch) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("%.3f", float64(time.Time(e).UnixMilli())/1000)), nil
}

func ts(t time.Time) *epoch {
	if t.IsZero() {
		return nil
	}
	e := epoch(t)
	return &e
}
