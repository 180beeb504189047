// Package awsfetch is an agent.Fetcher that reads secrets straight from AWS
// Secrets Manager with the agent's own credentials: rekey rotates and
// invalidates, the agent reads. Use it with agent.New:
//
//	cfg, _ := config.LoadDefaultConfig(ctx, config.WithRegion("eu-west-1"))
//	f, _ := awsfetch.New(secretsmanager.NewFromConfig(cfg), awsfetch.Config{})
//	a, _ := agent.New(nc, f, agent.Config{Tenant: "acme"})
//
// A secret's name comes from the same template as rekey's awssm backend
// (name_template, "/tenants/{tenant}/{secret}") or from a per-secret name
// (the backend's `name` option). Fetch reads the AWSCURRENT version
// (VersionStage), and the version it returns is the Secrets Manager
// VersionId, the id rekey's invalidations carry.
//
// The agent's IAM policy should allow secretsmanager:GetSecretValue on its
// own tenant's names only, e.g.
// arn:aws:secretsmanager:<region>:<account>:secret:/tenants/acme/*. The
// fetcher never logs, nor puts in an error, a secret value.
package awsfetch

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

// ErrPermissionDenied is returned when Secrets Manager refuses the agent's
// credentials the secret (AccessDeniedException): an IAM or resource
// policy that does not grant secretsmanager:GetSecretValue, or a KMS key
// policy that does not grant kms:Decrypt.
var ErrPermissionDenied = errors.New("awsfetch: permission denied by Secrets Manager")

// Defaults, the same as rekey's awssm backend.
const (
	DefaultNameTemplate = "/tenants/{tenant}/{secret}"
	DefaultVersionStage = "AWSCURRENT"
	DefaultTimeout      = 10 * time.Second
)

// Template placeholders, as in the backend's configuration.
const (
	PlaceholderTenant = "{tenant}"
	PlaceholderSecret = "{secret}"
)

// Config says which secret Fetch reads; set it like the backend's
// backends.awssm section and `name` options.
type Config struct {
	// NameTemplate is a secret's name, with {tenant} and {secret}.
	// Default "/tenants/{tenant}/{secret}".
	NameTemplate string
	// Names overrides NameTemplate per secret id (the backend's `name`
	// option); a name may contain {tenant} and {secret}.
	Names map[string]string
	// VersionStage is the staging label read. Default AWSCURRENT.
	VersionStage string
	// Timeout bounds a call whose context has no deadline. Default 10s.
	Timeout time.Duration
}

// Defaults returns c with its unset fields filled.
func (c Config) Defaults() Config {
	if c.NameTemplate == "" {
		c.NameTemplate = DefaultNameTemplate
	}
	if c.VersionStage == "" {
		c.VersionStage = DefaultVersionStage
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}

// nameRE is a Secrets Manager secret name once placeholders are filled.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9/_+=.@-]{1,512}$`)

// Validate checks c after Defaults.
func (c Config) Validate() error {
	c = c.Defaults()
	var errs []error
	errs = append(errs, checkTemplate("name_template", c.NameTemplate))
	if !strings.Contains(c.NameTemplate, PlaceholderSecret) {
		errs = append(errs, fmt.Errorf("name_template %q must contain {secret}", c.NameTemplate))
	}
	for s, n := range c.Names {
		if err := schemas.ValidateID("secret", s); err != nil {
			errs = append(errs, fmt.Errorf("names: %w", err))
		}
		errs = append(errs, checkTemplate("names["+s+"]", n))
	}
	if len(c.VersionStage) > 256 {
		errs = append(errs, errors.New("version_stage is longer than 256 characters"))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %s is negative", c.Timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("awsfetch: %w", err)
	}
	return nil
}

func checkTemplate(field, tmpl string) error {
	rest := strings.NewReplacer(PlaceholderTenant, "x", PlaceholderSecret, "x").Replace(tmpl)
	if strings.ContainsAny(rest, "{}") {
		return fmt.Errorf("%s %q: unknown placeholder (allowed: {tenant}, {secret})", field, tmpl)
	}
	if !nameRE.MatchString(rest) {
		return fmt.Errorf("%s %q: a name is 1-512 letters, digits and /_+=.@-", field, tmpl)
	}
	return nil
}

// getter is the part of the Secrets Manager API the fetcher reads with
// (*secretsmanager.Client).
type getter interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

// Fetcher is an agent.Fetcher reading secrets from Secrets Manager. It is
// safe for concurrent use.
type Fetcher struct {
	cfg Config
	api getter
}

var _ agent.Fetcher = (*Fetcher)(nil)

// New returns a Fetcher reading with client (its region, credentials,
// endpoint and retries). It does not call AWS.
func New(client *secretsmanager.Client, cfg Config) (*Fetcher, error) {
	if client == nil {
		return nil, errors.New("awsfetch: nil Secrets Manager client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Fetcher{cfg: cfg.Defaults(), api: client}, nil
}

// SecretID returns the Secrets Manager name Fetch reads for tenant's secret.
func (f *Fetcher) SecretID(tenant, secret string) string {
	tmpl := f.cfg.NameTemplate
	if n, ok := f.cfg.Names[secret]; ok {
		tmpl = n
	}
	return strings.NewReplacer(PlaceholderTenant, tenant, PlaceholderSecret, secret).Replace(tmpl)
}

// Fetch reads the configured stage (AWSCURRENT) of the secret. Value is its
// SecretString, or its SecretBinary; Version is its VersionId. A missing
// secret or stage is agent.ErrNotFound; AccessDeniedException is
// ErrPermissionDenied.
func (f *Fetcher) Fetch(ctx context.Context, tenant, secret string) (agent.Secret, error) {
	if err := schemas.ValidateRef(tenant, secret); err != nil {
		return agent.Secret{}, fmt.Errorf("aws fetch: %w", err)
	}
	id := f.SecretID(tenant, secret)
	op := "aws fetch " + tenant + "/" + secret + " (" + id + " " + f.cfg.VersionStage + ")"
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.cfg.Timeout)
		defer cancel()
	}
	out, err := f.api.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &id, VersionStage: &f.cfg.VersionStage})
	if err != nil {
		return agent.Secret{}, classify(op, err)
	}
	var value []byte
	switch {
	case out.SecretString != nil:
		value = []byte(*out.SecretString)
	case out.SecretBinary != nil:
		value = out.SecretBinary
	default:
		return agent.Secret{}, fmt.Errorf("%s: the version has no value: %w", op, agent.ErrNotFound)
	}
	return agent.Secret{Name: secret, Version: aws.ToString(out.VersionId), Value: value}, nil
}

// classify wraps a Secrets Manager error: ResourceNotFoundException is
// agent.ErrNotFound, AccessDeniedException ErrPermissionDenied. Secrets
// Manager's errors name secrets, never values.
func classify(op string, err error) error {
	var nf *types.ResourceNotFoundException
	if errors.As(err, &nf) {
		return fmt.Errorf("%s: %w", op, agent.ErrNotFound)
	}
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "AccessDeniedException" {
		return fmt.Errorf("%s: %w (check the agent's IAM policy for secretsmanager:GetSecretValue and the KMS key's for kms:Decrypt): %w", op, ErrPermissionDenied, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
