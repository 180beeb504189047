// Package awssm is the rekey backend for AWS Secrets Manager. A secret
// rotates in one of two modes (the secret option `mode`):
//
//   - staged (default): rekey makes the new value. Create puts it as a new
//     version labelled AWSPENDING plus a label of its own,
//     rekey-staged-<id>, that keeps it staged even when a later Create
//     takes AWSPENDING (a label is on at most one version). Readers of
//     AWSCURRENT still get the old value. Set and Test call the optional
//     set_url and test_url hooks with the tenant, secret and version id
//     (never the value: the downstream system reads AWSPENDING itself);
//     without a test_url, Test reads the new version back. Finish moves
//     AWSCURRENT to it (Secrets Manager makes the old one AWSPREVIOUS) and
//     takes its AWSPENDING and rekey labels off. Rollback takes them off,
//     which leaves the version without a label: deprecated, and removed by
//     Secrets Manager in time.
//   - delegated: the secret has a rotation Lambda that does the work.
//     Create calls RotateSecret; Set and Test do nothing; Finish waits until
//     the rotation ends: a RotationSucceeded or RotationFailed event passed
//     to Notify (by the daemon, from EventBridge via SQS), or AWSCURRENT on
//     the new version when it describes the secret every poll_interval,
//     or delegated_timeout.
//
// Version ids are Secrets Manager VersionIds, derived from the rotation's
// token (VersionID): a retried step with the same token finds or makes the
// same version, since Secrets Manager answers a second PutSecretValue with
// the same ClientRequestToken and another value with
// ResourceExistsException. A version whose id does not start with
// "rekey-" was not made by rekey; an AWSPENDING label on such a version
// (a rotation by Secrets Manager itself in progress) is never moved or
// removed.
//
// Tenant isolation: every name lies under its tenant's prefix
// (tenant_prefix, checked at start), and before any write the backend
// describes the secret and refuses, with handlers.ErrPermanent and nothing
// written, one whose name is not under the prefix or whose tenant_tag tag
// is not the tenant.
//
// Writes are paced on the client (write_tps, rotate_tps) and the SDK
// retries throttled calls with back-off (max_retries). No secret value is
// ever logged or put in an error.
package awssm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"
	"golang.org/x/time/rate"

	"github.com/rekey-dev/rekey/handlers"
)

// Name is the backend name used in configuration.
const Name = "awssm"

var (
	_ handlers.Backend      = (*Backend)(nil)
	_ handlers.StepTimeouts = (*Backend)(nil)
)

// Staging labels with a meaning to Secrets Manager.
const (
	StageCurrent  = "AWSCURRENT"
	StagePending  = "AWSPENDING"
	StagePrevious = "AWSPREVIOUS"
)

// versionPrefix starts every VersionId rekey makes.
const versionPrefix = "rekey-"

// stagedLabelPrefix starts the label that marks a version staged by rekey.
const stagedLabelPrefix = "rekey-staged-"

// secretsManagerAPI is the part of the Secrets Manager API the backend
// calls (*secretsmanager.Client).
type secretsManagerAPI interface {
	DescribeSecret(ctx context.Context, in *secretsmanager.DescribeSecretInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.DescribeSecretOutput, error)
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
	ListSecretVersionIds(ctx context.Context, in *secretsmanager.ListSecretVersionIdsInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.ListSecretVersionIdsOutput, error)
	PutSecretValue(ctx context.Context, in *secretsmanager.PutSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.PutSecretValueOutput, error)
	UpdateSecretVersionStage(ctx context.Context, in *secretsmanager.UpdateSecretVersionStageInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.UpdateSecretVersionStageOutput, error)
	RotateSecret(ctx context.Context, in *secretsmanager.RotateSecretInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.RotateSecretOutput, error)
}

// limiter paces calls (*rate.Limiter).
type limiter interface {
	Wait(ctx context.Context) error
}

// Backend is the AWS Secrets Manager backend. It is safe for concurrent
// use, also by several rekeyd replicas.
type Backend struct {
	cfg         Config
	api         secretsManagerAPI
	log         *slog.Logger
	hooks       *http.Client
	writeLimit  limiter
	rotateLimit limiter
	changes     *changes
}

// New validates cfg and builds a client with the default credential chain
// (environment, shared config and SSO, web identity, ECS or EC2 role), the
// region, the endpoint override, and the SDK's standard retryer making up
// to max_retries retries with exponential back-off, throttling errors
// included. It does not call AWS: missing credentials show on the first
// call.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Backend, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("awssm config: %w", err)
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx,
		awsconfig.WithRegion(cfg.Region),
		awsconfig.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxRetries + 1
				// The backend paces its own writes; the SDK's retry quota
				// would turn a burst of throttling into failures.
				o.RateLimiter = ratelimit.None
			})
		}))
	if err != nil {
		return nil, fmt.Errorf("awssm: load AWS configuration: %w", err)
	}
	client := secretsmanager.NewFromConfig(awsCfg, func(o *secretsmanager.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	return NewWithClient(client, cfg, log)
}

// NewWithClient returns a backend calling Secrets Manager with client, as
// it is configured (tests give it one for the emulator).
func NewWithClient(client *secretsmanager.Client, cfg Config, log *slog.Logger) (*Backend, error) {
	if client == nil {
		return nil, errors.New("awssm: nil Secrets Manager client")
	}
	return newBackend(client, cfg, log)
}

func newBackend(api secretsManagerAPI, cfg Config, log *slog.Logger) (*Backend, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("awssm config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Backend{
		cfg: cfg, api: api, log: log.With("component", "backend.awssm"),
		hooks: &http.Client{
			Timeout:       cfg.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		writeLimit:  rate.NewLimiter(rate.Limit(cfg.WriteTPS), 1),
		rotateLimit: rate.NewLimiter(rate.Limit(cfg.RotateTPS), 1),
		changes:     newChanges(),
	}, nil
}

// Name returns "awssm".
func (b *Backend) Name() string { return Name }

// Config returns the configuration in use, defaults filled.
func (b *Backend) Config() Config { return b.cfg }

// SecretID returns the Secrets Manager name of ref.
func (b *Backend) SecretID(ref handlers.SecretRef) (string, error) {
	loc, err := b.cfg.locate(ref)
	return loc.name, err
}

// StepTimeout is how long the rotator should allow a step of ref: Finish of
// a delegated secret waits up to delegated_timeout, longer than the
// rotator's default step timeout. ok is false for every other step.
func (b *Backend) StepTimeout(ref handlers.SecretRef, step string) (d time.Duration, ok bool) {
	loc, err := b.cfg.locate(ref)
	if err != nil || loc.mode != ModeDelegated || step != handlers.StepFinish {
		return 0, false
	}
	return b.cfg.DelegatedTimeout + b.cfg.Timeout, true
}

// VersionID is the Secrets Manager VersionId (and ClientRequestToken,
// 32-64 characters) rekey uses for a rotation token: "rekey-" + the token
// when it is 26-58 letters, digits and "-" (a request id and its delivery
// and attempt numbers), else "rekey-h-" + 40 hex digits of its SHA-256.
// The same token always gives the same id, so a retried step is
// idempotent; the token can be read back from the id, except for hashed
// ones.
func VersionID(token string) string {
	if plainTokenRE.MatchString(token) && !strings.HasPrefix(token, "h-") {
		return versionPrefix + token
	}
	sum := sha256.Sum256([]byte(token))
	return versionPrefix + "h-" + hex.EncodeToString(sum[:])[:40]
}

var plainTokenRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{25,57}$`)

// tokenOf returns the token a version id was made from, "" when it is not
// known (a hashed id, or a version rekey did not make).
func tokenOf(id string) string {
	if !madeByRekey(id) || strings.HasPrefix(id, versionPrefix+"h-") {
		return ""
	}
	return strings.TrimPrefix(id, versionPrefix)
}

// madeByRekey reports whether a VersionId is one VersionID makes.
func madeByRekey(id string) bool {
	return strings.HasPrefix(id, versionPrefix) && len(id) >= 32 && len(id) <= 64
}

// stagedLabel is the label that keeps version id staged.
func stagedLabel(id string) string { return stagedLabelPrefix + strings.TrimPrefix(id, versionPrefix) }

// resolve locates ref for the operation verb (on version v, when not
// nil) and returns the prefix of the operation's errors, e.g.
// "awssm: finish acme/key (/tenants/acme/key) v<id>".
func (b *Backend) resolve(verb string, ref handlers.SecretRef, v *handlers.Version) (location, string, error) {
	on := ""
	if v != nil {
		on = " v" + v.ID
	}
	loc, err := b.cfg.locate(ref)
	if err != nil {
		return location{}, "", fmt.Errorf("awssm: %s %s%s: %w", verb, ref, on, err)
	}
	return loc, fmt.Sprintf("awssm: %s %s (%s)%s", verb, ref, loc.name, on), nil
}

// Current returns the AWSCURRENT version, or an error wrapping
// handlers.ErrNotFound when the secret or its AWSCURRENT version does not
// exist.
func (b *Backend) Current(ctx context.Context, ref handlers.SecretRef) (handlers.Version, error) {
	loc, op, err := b.resolve("current", ref, nil)
	if err != nil {
		return handlers.Version{}, err
	}
	versions, err := b.listVersions(ctx, loc)
	if err != nil {
		return handlers.Version{}, fmt.Errorf("%s: %w", op, err)
	}
	for _, v := range versions {
		if slices.Contains(v.VersionStages, StageCurrent) {
			return toVersion(v), nil
		}
	}
	return handlers.Version{}, fmt.Errorf("%s: no %s version: %w", op, StageCurrent, handlers.ErrNotFound)
}

// Staged lists the versions rekey made that are staged (AWSPENDING or its
// own label, and neither AWSCURRENT nor AWSPREVIOUS), oldest first. A
// version labelled AWSPENDING that rekey did not make is left out, with a
// warning, so that a rotation by Secrets Manager itself is never rolled
// back.
func (b *Backend) Staged(ctx context.Context, ref handlers.SecretRef) ([]handlers.Version, error) {
	loc, op, err := b.resolve("staged", ref, nil)
	if err != nil {
		return nil, err
	}
	versions, err := b.listVersions(ctx, loc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	var out []handlers.Version
	for _, v := range versions {
		id, labels := aws.ToString(v.VersionId), v.VersionStages
		if slices.Contains(labels, StageCurrent) || slices.Contains(labels, StagePrevious) {
			continue
		}
		pending := slices.Contains(labels, StagePending)
		if !madeByRekey(id) {
			if pending {
				b.log.WarnContext(ctx, "AWSPENDING is on a version rekey did not make; a rotation by Secrets Manager may be in progress",
					"tenant", ref.Tenant, "secret", ref.Secret, "secret_id", loc.name, "version", id)
			}
			continue
		}
		if pending || slices.Contains(labels, stagedLabel(id)) {
			out = append(out, toVersion(v))
		}
	}
	slices.SortFunc(out, func(a, b handlers.Version) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

func toVersion(v types.SecretVersionsListEntry) handlers.Version {
	id := aws.ToString(v.VersionId)
	return handlers.Version{ID: id, Token: tokenOf(id), CreatedAt: aws.ToTime(v.CreatedDate).UTC()}
}

// Create stages a new version for token (see the package documentation
// for the two modes). A second call with the same token returns the same
// version while it is staged or current.
func (b *Backend) Create(ctx context.Context, ref handlers.SecretRef, token string) (handlers.Version, error) {
	loc, op, err := b.resolve("create", ref, nil)
	if err != nil {
		return handlers.Version{}, err
	}
	if token == "" {
		return handlers.Version{}, fmt.Errorf("%s: empty token: %w", op, handlers.ErrPermanent)
	}
	id := VersionID(token)
	v := handlers.Version{ID: id, Token: token, CreatedAt: time.Now().UTC()}
	snap, err := b.describeForWrite(ctx, loc, ref)
	if err != nil {
		return handlers.Version{}, fmt.Errorf("%s: %w", op, err)
	}
	if len(snap.stages[id]) > 0 {
		return v, nil // made by an earlier call with this token, staged or current
	}
	if foreign := snap.foreignPending(); foreign != "" {
		return handlers.Version{}, fmt.Errorf("%s: %s is on version %s, which rekey did not make: a rotation by Secrets Manager may be in progress; not taking the label from it",
			op, StagePending, foreign)
	}
	if loc.mode == ModeDelegated {
		return b.startRotation(ctx, loc, ref, v, op)
	}
	b.tidy(ctx, loc, ref, snap)
	value, err := handlers.Generate(ref.Generator)
	if err != nil {
		return handlers.Version{}, fmt.Errorf("%s: %w: %w", op, err, handlers.ErrPermanent)
	}
	defer clear(value)
	_, err = write(ctx, b, b.writeLimit, b.api.PutSecretValue, &secretsmanager.PutSecretValueInput{
		SecretId: &loc.name, ClientRequestToken: &id, SecretString: aws.String(string(value)),
		VersionStages: []string{StagePending, stagedLabel(id)},
	})
	var exists *types.ResourceExistsException
	if errors.As(err, &exists) {
		// The token's version exists with another value: a concurrent
		// Create with this token made it, or it was rolled back since.
		return b.restage(ctx, loc, ref, v, op)
	}
	if err != nil {
		return handlers.Version{}, fmt.Errorf("%s: %w", op, classify("put secret value", err))
	}
	b.log.InfoContext(ctx, "staged version", "tenant", ref.Tenant, "secret", ref.Secret, "secret_id", loc.name, "version", id, "request_id", token)
	return v, nil
}

// restage returns v when it exists already: as it is if it is staged or
// current, else (rolled back) labelled staged again.
func (b *Backend) restage(ctx context.Context, loc location, ref handlers.SecretRef, v handlers.Version, op string) (handlers.Version, error) {
	snap, err := b.describe(ctx, loc)
	if err != nil {
		return handlers.Version{}, fmt.Errorf("%s: %w", op, err)
	}
	if len(snap.stages[v.ID]) > 0 {
		return v, nil
	}
	if err := b.moveLabel(ctx, loc, stagedLabel(v.ID), v.ID, ""); err != nil {
		return handlers.Version{}, fmt.Errorf("%s: stage rolled back version %s again: %w", op, v.ID, err)
	}
	b.log.InfoContext(ctx, "staged a rolled back version again", "tenant", ref.Tenant, "secret", ref.Secret, "secret_id", loc.name, "version", v.ID, "request_id", v.Token)
	return v, nil
}

// startRotation starts a delegated rotation whose new version is v.
func (b *Backend) startRotation(ctx context.Context, loc location, ref handlers.SecretRef, v handlers.Version, op string) (handlers.Version, error) {
	out, err := write(ctx, b, b.rotateLimit, b.api.RotateSecret, &secretsmanager.RotateSecretInput{
		SecretId: &loc.name, ClientRequestToken: &v.ID, RotateImmediately: aws.Bool(true),
	})
	if err != nil {
		return handlers.Version{}, fmt.Errorf("%s: %w", op, classify("rotate secret", err))
	}
	if got := aws.ToString(out.VersionId); got != "" && got != v.ID {
		return handlers.Version{}, fmt.Errorf("%s: RotateSecret answered version %s, not %s", op, got, v.ID)
	}
	b.log.InfoContext(ctx, "started a rotation by Secrets Manager", "tenant", ref.Tenant, "secret", ref.Secret, "secret_id", loc.name, "version", v.ID, "request_id", v.Token)
	return v, nil
}

// tidy takes rekey labels off versions that are current or previous: left
// by a Finish whose clean-up failed. Failures are logged; the next
// rotation tries again.
func (b *Backend) tidy(ctx context.Context, loc location, ref handlers.SecretRef, snap snapshot) {
	for id, labels := range snap.stages {
		if !madeByRekey(id) || !slices.Contains(labels, stagedLabel(id)) ||
			!slices.Contains(labels, StageCurrent) && !slices.Contains(labels, StagePrevious) {
			continue
		}
		if err := b.removeLabel(ctx, loc, stagedLabel(id), id); err != nil {
			b.log.WarnContext(ctx, "could not take the staged label off a promoted version", "tenant", ref.Tenant, "secret", ref.Secret, "version", id, "error", err)
		}
	}
}

// Set calls the set_url hook of a staged secret, if it has one; without
// one, and in delegated mode, it does nothing.
func (b *Backend) Set(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	loc, op, err := b.resolve("set", ref, &v)
	if err != nil {
		return err
	}
	if loc.mode == ModeDelegated || loc.setURL == "" {
		return nil
	}
	if err := b.callHook(ctx, handlers.StepSet, loc.setURL, loc, ref, v); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// Test calls the test_url hook of a staged secret if it has one, and
// otherwise reads the version back and checks that it has a value. In
// delegated mode the Lambda tests, and Test does nothing.
func (b *Backend) Test(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	loc, op, err := b.resolve("test", ref, &v)
	if err != nil {
		return err
	}
	switch {
	case loc.mode == ModeDelegated:
		return nil
	case loc.testURL != "":
		if err := b.callHook(ctx, handlers.StepTest, loc.testURL, loc, ref, v); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		return nil
	}
	out, err := read(ctx, b, b.api.GetSecretValue, &secretsmanager.GetSecretValueInput{SecretId: &loc.name, VersionId: &v.ID})
	if err != nil {
		return fmt.Errorf("%s: %w", op, classify("get secret value", err))
	}
	empty := aws.ToString(out.SecretString) == "" && len(out.SecretBinary) == 0
	clear(out.SecretBinary)
	if empty {
		return fmt.Errorf("%s: the version's value is empty", op)
	}
	return nil
}

// Finish promotes v: in staged mode it moves AWSCURRENT to it, in
// delegated mode it waits for the rotation to end. Finishing the current
// version again is a no-op.
func (b *Backend) Finish(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	loc, op, err := b.resolve("finish", ref, &v)
	if err != nil {
		return err
	}
	if !madeByRekey(v.ID) {
		return fmt.Errorf("%s: not a version rekey made: %w", op, handlers.ErrNotFound)
	}
	if loc.mode == ModeDelegated {
		if err := b.waitRotation(ctx, loc, ref, v); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		return nil
	}
	snap, err := b.describeForWrite(ctx, loc, ref)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	labels := snap.stages[v.ID]
	if slices.Contains(labels, StageCurrent) {
		b.unstageLogged(ctx, loc, ref, v.ID, labels)
		return nil
	}
	if !slices.Contains(labels, StagePending) && !slices.Contains(labels, stagedLabel(v.ID)) {
		return fmt.Errorf("%s: the version is not staged: %w", op, handlers.ErrNotFound)
	}
	previous := snap.holder(StageCurrent)
	if err := b.moveLabel(ctx, loc, StageCurrent, v.ID, previous); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	b.log.InfoContext(ctx, "promoted version", "tenant", ref.Tenant, "secret", ref.Secret, "secret_id", loc.name,
		"version", v.ID, "previous_version", previous, "request_id", v.Token)
	b.unstageLogged(ctx, loc, ref, v.ID, labels)
	return nil
}

// unstageLogged takes the staging labels off a promoted version. The
// version is live; a failure is logged, and the next Create tidies up.
func (b *Backend) unstageLogged(ctx context.Context, loc location, ref handlers.SecretRef, id string, labels []string) {
	if err := b.unstage(ctx, loc, id, labels); err != nil {
		b.log.WarnContext(ctx, "could not take the staging labels off the promoted version; the next rotation does",
			"tenant", ref.Tenant, "secret", ref.Secret, "version", id, "error", err)
	}
}

// unstage takes AWSPENDING and rekey's staged label off version id, given
// its labels.
func (b *Backend) unstage(ctx context.Context, loc location, id string, labels []string) error {
	var errs []error
	for _, l := range []string{StagePending, stagedLabel(id)} {
		if slices.Contains(labels, l) {
			errs = append(errs, b.removeLabel(ctx, loc, l, id))
		}
	}
	return errors.Join(errs...)
}

// Rollback takes AWSPENDING and rekey's staged label off v, which leaves
// it deprecated unless it is current. A version or secret that is gone, a
// version without those labels and a version rekey did not make are not
// an error (nothing is written).
func (b *Backend) Rollback(ctx context.Context, ref handlers.SecretRef, v handlers.Version) error {
	loc, op, err := b.resolve("rollback", ref, &v)
	if err != nil {
		return err
	}
	if !madeByRekey(v.ID) {
		return nil
	}
	snap, err := b.describe(ctx, loc)
	if errors.Is(err, handlers.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	labels := snap.stages[v.ID]
	if !slices.Contains(labels, StagePending) && !slices.Contains(labels, stagedLabel(v.ID)) {
		return nil
	}
	if err := b.checkTenant(snap, ref); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := b.unstage(ctx, loc, v.ID, labels); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	b.log.InfoContext(ctx, "rolled back version", "tenant", ref.Tenant, "secret", ref.Secret, "secret_id", loc.name, "version", v.ID)
	return nil
}

// Read returns the AWSCURRENT version and its value (SecretString, or
// SecretBinary). The caller owns the value and should clear it.
func (b *Backend) Read(ctx context.Context, ref handlers.SecretRef) (string, []byte, error) {
	loc, op, err := b.resolve("read", ref, nil)
	if err != nil {
		return "", nil, err
	}
	out, err := read(ctx, b, b.api.GetSecretValue, &secretsmanager.GetSecretValueInput{SecretId: &loc.name, VersionStage: aws.String(StageCurrent)})
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", op, classify("get secret value", err))
	}
	if out.SecretString != nil {
		return aws.ToString(out.VersionId), []byte(*out.SecretString), nil
	}
	return aws.ToString(out.VersionId), out.SecretBinary, nil
}

// snapshot is what DescribeSecret tells about a secret.
type snapshot struct {
	name   string
	tags   map[string]string
	stages map[string][]string // labelled version -> its labels
}

// holder is the version that has label, "" if none has.
func (s snapshot) holder(label string) string {
	for id, labels := range s.stages {
		if slices.Contains(labels, label) {
			return id
		}
	}
	return ""
}

// foreignPending is the version that has AWSPENDING when rekey did not
// make it and it is not current (an unfinished rotation by someone else),
// else "".
func (s snapshot) foreignPending() string {
	id := s.holder(StagePending)
	if id == "" || madeByRekey(id) || slices.Contains(s.stages[id], StageCurrent) {
		return ""
	}
	return id
}

func (b *Backend) describe(ctx context.Context, loc location) (snapshot, error) {
	out, err := read(ctx, b, b.api.DescribeSecret, &secretsmanager.DescribeSecretInput{SecretId: &loc.name})
	if err != nil {
		return snapshot{}, classify("describe secret", err)
	}
	s := snapshot{name: aws.ToString(out.Name), tags: map[string]string{}, stages: out.VersionIdsToStages}
	for _, t := range out.Tags {
		s.tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return s, nil
}

// describeForWrite describes the secret and checks that it belongs to the
// tenant.
func (b *Backend) describeForWrite(ctx context.Context, loc location, ref handlers.SecretRef) (snapshot, error) {
	snap, err := b.describe(ctx, loc)
	if err != nil {
		return snapshot{}, err
	}
	if err := b.checkTenant(snap, ref); err != nil {
		return snapshot{}, err
	}
	return snap, nil
}

// checkTenant refuses a secret whose name is not under the tenant's prefix
// or whose tenant tag is not the tenant, saying what did not match.
func (b *Backend) checkTenant(snap snapshot, ref handlers.SecretRef) error {
	var problems []string
	if p := b.cfg.prefix(ref.Tenant); !strings.HasPrefix(snap.name, p) || snap.name == p {
		problems = append(problems, fmt.Sprintf("its name %q is not under tenant %s's prefix %q", snap.name, ref.Tenant, p))
	}
	switch got, ok := snap.tags[b.cfg.TenantTag]; {
	case !ok:
		problems = append(problems, fmt.Sprintf("it has no %s tag (want %q)", b.cfg.TenantTag, ref.Tenant))
	case got != ref.Tenant:
		problems = append(problems, fmt.Sprintf("its %s tag is %q, not %q", b.cfg.TenantTag, got, ref.Tenant))
	}
	if len(problems) > 0 {
		return fmt.Errorf("tenant check refused the secret, nothing was written: %s: %w", strings.Join(problems, "; "), handlers.ErrPermanent)
	}
	return nil
}

// listVersions lists the labelled versions of the secret.
func (b *Backend) listVersions(ctx context.Context, loc location) ([]types.SecretVersionsListEntry, error) {
	var all []types.SecretVersionsListEntry
	in := &secretsmanager.ListSecretVersionIdsInput{SecretId: &loc.name, MaxResults: aws.Int32(100)}
	for {
		out, err := read(ctx, b, b.api.ListSecretVersionIds, in)
		if err != nil {
			return nil, classify("list secret versions of "+loc.name, err)
		}
		all = append(all, out.Versions...)
		if aws.ToString(out.NextToken) == "" {
			return all, nil
		}
		in.NextToken = out.NextToken
	}
}

// moveLabel puts label on version to, taking it off from ("" when no
// version has it).
func (b *Backend) moveLabel(ctx context.Context, loc location, label, to, from string) error {
	if err := b.updateStage(ctx, loc, label, to, from); err != nil {
		return classify(fmt.Sprintf("move %s to version %s", label, to), err)
	}
	return nil
}

// removeLabel takes label off version id. When Secrets Manager answers
// that the version does not have it, a fresh look decides: gone already
// (a concurrent call) is success.
func (b *Backend) removeLabel(ctx context.Context, loc location, label, id string) error {
	err := b.updateStage(ctx, loc, label, "", id)
	var ip *types.InvalidParameterException
	if errors.As(err, &ip) {
		if snap, derr := b.describe(ctx, loc); derr == nil && !slices.Contains(snap.stages[id], label) {
			return nil
		}
	}
	if err != nil {
		return classify(fmt.Sprintf("remove %s from version %s", label, id), err)
	}
	return nil
}

// updateStage calls UpdateSecretVersionStage; to and from may be "".
func (b *Backend) updateStage(ctx context.Context, loc location, label, to, from string) error {
	in := &secretsmanager.UpdateSecretVersionStageInput{SecretId: &loc.name, VersionStage: &label}
	if to != "" {
		in.MoveToVersionId = &to
	}
	if from != "" {
		in.RemoveFromVersionId = &from
	}
	_, err := write(ctx, b, b.writeLimit, b.api.UpdateSecretVersionStage, in)
	return err
}

// apiCall is a method of secretsManagerAPI.
type apiCall[In, Out any] func(context.Context, In, ...func(*secretsmanager.Options)) (Out, error)

// read makes one read call with b's call timeout.
func read[In, Out any](ctx context.Context, b *Backend, call apiCall[In, Out], in In) (Out, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	return call(ctx, in)
}

// write waits for lim, then makes one write call; b's call timeout covers
// the wait.
func write[In, Out any](ctx context.Context, b *Backend, lim limiter, call apiCall[In, Out], in In) (Out, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	if err := lim.Wait(ctx); err != nil {
		var zero Out
		return zero, fmt.Errorf("client-side rate limit: %w", err)
	}
	return call(ctx, in)
}

// classify wraps a Secrets Manager error for the workers:
// ResourceNotFoundException is handlers.ErrNotFound, AccessDeniedException
// is handlers.ErrPermanent (an IAM policy to fix, not a retry), anything
// else (throttling past the retries, outages, a rotation in progress) is
// temporary. Secrets Manager's errors name secrets and versions, never
// values.
func classify(op string, err error) error {
	var nf *types.ResourceNotFoundException
	if errors.As(err, &nf) {
		return fmt.Errorf("%s: %w: %w", op, err, handlers.ErrNotFound)
	}
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "AccessDeniedException" {
		return fmt.Errorf("%s: permission denied (check rekey's IAM policy): %w: %w", op, err, handlers.ErrPermanent)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// hookRequest is the body posted to set_url and test_url. It never
// carries the value: the receiver reads the version from Secrets Manager.
type hookRequest struct {
	Step      string `json:"step"`
	Tenant    string `json:"tenant"`
	Secret    string `json:"secret"`
	SecretID  string `json:"secret_id"`
	VersionID string `json:"version_id"`
	Stage     string `json:"stage"`
}

// callHook posts the step's hookRequest to rawURL and wants a 2xx answer.
// Errors name the URL without its query, which may hold a token.
func (b *Backend) callHook(ctx context.Context, step, rawURL string, loc location, ref handlers.SecretRef, v handlers.Version) error {
	u, _ := url.Parse(rawURL) // checked by the configuration
	where := u.Scheme + "://" + u.Host + u.Path
	body, err := json.Marshal(hookRequest{Step: step, Tenant: ref.Tenant, Secret: ref.Secret, SecretID: loc.name, VersionID: v.ID, Stage: StagePending})
	if err != nil {
		return fmt.Errorf("%s hook: %w", step, err)
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s hook %s: %w", step, where, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "rekey-awssm")
	resp, err := b.hooks.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%s hook %s: %w", step, where, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s hook %s answered HTTP %d", step, where, resp.StatusCode)
	}
	b.log.DebugContext(ctx, "hook accepted the version", "step", step, "tenant", ref.Tenant, "secret", ref.Secret, "version", v.ID, "url", where)
	return nil
}
