package awsevents

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"golang.org/x/time/rate"

	"github.com/rekey-dev/rekey/schemas"
)

// Events are hints, not truth: whoever may send to the queue (or replay
// what it held) could write any event. Before a Secrets Manager event
// changes what rekey does (a sync and an invalidation, a rotation failed,
// a secret dropped by every agent), the trigger asks Secrets Manager
// itself, with read-only calls in the backend's account and region, and
// acts only on what AWS confirms:
//
//   - DeleteSecret: the secret is gone or scheduled for deletion;
//   - RotationFailed/Abandoned: the event names the version that failed,
//     that version exists and is not AWSCURRENT (a failure without a
//     version cannot say which rotation it ends; a delegated rotation
//     that really failed ends at delegated_timeout);
//   - a change of AWSCURRENT (RotationSucceeded, PutSecretValue,
//     UpdateSecretVersionStage, UpdateSecret): the secret exists, the
//     version the event names exists, and after RotationSucceeded no
//     rotation is still pending (AWSPENDING on another version than
//     AWSCURRENT). The sync then records what AWS holds, not what the
//     event says.
//
// The secret's ARN as AWS answers it must be in the event's account and
// partition (and the ARN the event names, if any, must be that one).
// Anything else is audited as unconfirmed and changes nothing.

// secretsManagerAPI is the part of the Secrets Manager client that
// confirms events: it only reads.
type secretsManagerAPI interface {
	DescribeSecret(ctx context.Context, in *secretsmanager.DescribeSecretInput, opts ...func(*secretsmanager.Options)) (*secretsmanager.DescribeSecretOutput, error)
	ListSecretVersionIds(ctx context.Context, in *secretsmanager.ListSecretVersionIdsInput, opts ...func(*secretsmanager.Options)) (*secretsmanager.ListSecretVersionIdsOutput, error)
}

var _ secretsManagerAPI = (*secretsmanager.Client)(nil)

// errUnavailable is wrapped by the error of a confirmation that could not
// be asked (Secrets Manager unreachable, throttled, denied): the message
// is kept for a later receive.
var errUnavailable = errors.New("secrets manager could not confirm the event")

// Staging labels read when confirming.
const (
	stagePending = "AWSPENDING"
	// maxVersionPages bounds ListSecretVersionIds paging (100 versions a page).
	maxVersionPages = 10
)

// confirmer asks Secrets Manager about events, at most tps calls a second.
type confirmer struct {
	sm        secretsManagerAPI
	limiter   *rate.Limiter
	region    string
	partition string
}

func newConfirmer(sm secretsManagerAPI, region string, tps float64) *confirmer {
	return &confirmer{
		sm: sm, limiter: rate.NewLimiter(rate.Limit(tps), max(1, int(tps))),
		region: region, partition: partitionOf(region),
	}
}

// verdict is what Secrets Manager says of an event.
type verdict struct {
	confirmed bool
	// reason says why the event is not confirmed.
	reason string
	// deleted: the secret is gone or scheduled for deletion.
	deleted bool
	// current is the version holding AWSCURRENT, when the secret exists.
	current string
}

func refuted(format string, args ...any) verdict {
	return verdict{reason: fmt.Sprintf(format, args...)}
}

// secretARN is a full Secrets Manager secret ARN, split.
type secretARN struct {
	partition, region, account, name string
}

// parseSecretARN splits arn:<partition>:secretsmanager:<region>:<account>:secret:<name>-<6 characters>.
func parseSecretARN(arn string) (secretARN, bool) {
	parts := strings.SplitN(arn, ":", 7)
	if len(parts) != 7 || parts[0] != "arn" || parts[2] != "secretsmanager" || parts[5] != "secret" ||
		!strings.HasPrefix(parts[1], "aws") || !regionRE.MatchString(parts[3]) || !isAccountID(parts[4]) {
		return secretARN{}, false
	}
	rest := parts[6]
	if len(rest) < 8 || rest[len(rest)-7] != '-' || !isAlnum(rest[len(rest)-6:]) {
		return secretARN{}, false
	}
	return secretARN{partition: parts[1], region: parts[3], account: parts[4], name: rest[:len(rest)-7]}, true
}

func isAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// partitionOf is the partition of a region's ARNs.
func partitionOf(region string) string {
	for _, p := range []struct{ prefix, partition string }{
		{"cn-", "aws-cn"}, {"us-gov-", "aws-us-gov"}, {"us-isob-", "aws-iso-b"}, {"us-isof-", "aws-iso-f"},
		{"us-iso-", "aws-iso"}, {"eu-isoe-", "aws-iso-e"},
	} {
		if strings.HasPrefix(region, p.prefix) {
			return p.partition
		}
	}
	return "aws"
}

// identify checks every identity the event gives against the secrets'
// region and partition and the event's own account, and returns the
// secret's name (what the confirmation asks Secrets Manager about), or why
// the event is refused. It asks nothing.
func (c *confirmer) identify(m Message, s *SecretEvent) (name, reason string) {
	switch {
	case m.Region != c.region:
		return "", fmt.Sprintf("the event's region %q is not the region of the secrets (%s)", m.Region, c.region)
	case s.AWSRegion != "" && s.AWSRegion != m.Region:
		return "", fmt.Sprintf("detail.awsRegion %q is not the event's region %q", s.AWSRegion, m.Region)
	case s.RecipientAccount != "" && s.RecipientAccount != m.Account:
		return "", fmt.Sprintf("detail.recipientAccountId %s is not the event's account %s", s.RecipientAccount, m.Account)
	}
	for _, id := range []struct{ field, value string }{{"the secret id", s.SecretID}, {"detail.responseElements.arn", s.ARN}} {
		n := id.value
		if strings.HasPrefix(n, "arn:") {
			a, ok := parseSecretARN(n)
			switch {
			case !ok:
				return "", fmt.Sprintf("%s %q is not a Secrets Manager secret ARN", id.field, clip(n, 256))
			case a.partition != c.partition:
				return "", fmt.Sprintf("%s is in partition %q, not %q", id.field, clip(a.partition, 32), c.partition)
			case a.region != c.region:
				return "", fmt.Sprintf("%s is in region %s, not %s", id.field, a.region, c.region)
			case a.account != m.Account:
				return "", fmt.Sprintf("%s is in account %s, not the event's account %s", id.field, a.account, m.Account)
			}
			n = a.name
		}
		switch {
		case n == "":
		case name == "":
			name = n
		case n != name:
			return "", fmt.Sprintf("the event names two secrets, %q and %q", clip(name, 256), clip(n, 256))
		}
	}
	if name == "" {
		return "", "the event names no secret"
	}
	return name, ""
}

// confirm asks Secrets Manager whether what the event says is so. An
// error wraps errUnavailable.
func (c *confirmer) confirm(ctx context.Context, m Message, s *SecretEvent, name string) (verdict, error) {
	outcome, live := s.Change()
	deletion := s.EventName == EventDeleteSecret
	if outcome == schemas.ExternalFailed && s.VersionID == "" {
		return refuted("%s names no version: Secrets Manager cannot confirm which rotation failed "+
			"(a delegated rotation that really failed ends at delegated_timeout)", s.EventName), nil
	}
	desc, err := c.describe(ctx, name)
	var nf *smtypes.ResourceNotFoundException
	switch {
	case errors.As(err, &nf) && deletion:
		return verdict{confirmed: true, deleted: true}, nil
	case errors.As(err, &nf):
		return refuted("the secret %q does not exist in Secrets Manager (%s)", clip(name, 256), c.region), nil
	case err != nil:
		return verdict{}, err
	}
	real, ok := parseSecretARN(aws.ToString(desc.ARN))
	switch {
	case !ok:
		return refuted("Secrets Manager answered an ARN rekey cannot read"), nil
	case real.account != m.Account:
		return refuted("the secret is in account %s, not the event's account %s", real.account, m.Account), nil
	case real.partition != c.partition:
		return refuted("the secret is in partition %s, not %s", real.partition, c.partition), nil
	}
	for _, id := range []string{s.SecretID, s.ARN} {
		if strings.HasPrefix(id, "arn:") && id != aws.ToString(desc.ARN) {
			return refuted("the event names another secret of that name (%s), not the one Secrets Manager has", clip(id, 256)), nil
		}
	}
	v := verdict{deleted: desc.DeletedDate != nil}
	for id, stages := range desc.VersionIdsToStages {
		if slices.Contains(stages, StageCurrent) {
			v.current = id
		}
	}
	switch {
	case deletion && v.deleted:
		v.confirmed = true
		return v, nil
	case deletion:
		return refuted("the secret exists and is not scheduled for deletion"), nil
	case v.deleted:
		return refuted("the secret is scheduled for deletion"), nil
	}
	if s.VersionID != "" {
		exists, err := c.versionExists(ctx, name, s.VersionID, desc.VersionIdsToStages)
		if err != nil {
			return verdict{}, err
		}
		if !exists {
			return refuted("version %q of the secret does not exist", clip(s.VersionID, 128)), nil
		}
	}
	switch {
	case outcome == schemas.ExternalFailed && s.VersionID == v.current:
		return refuted("version %q the event says failed is AWSCURRENT", clip(s.VersionID, 128)), nil
	case s.EventName == EventRotationSucceeded:
		for id, stages := range desc.VersionIdsToStages {
			if slices.Contains(stages, stagePending) && id != v.current {
				return refuted("the rotation is not over: version %q is still AWSPENDING", clip(id, 128)), nil
			}
		}
	case live && v.current == "":
		return refuted("the secret has no AWSCURRENT version"), nil
	}
	v.confirmed = true
	return v, nil
}

// describe is DescribeSecret of name, paced.
func (c *confirmer) describe(ctx context.Context, name string) (*secretsmanager.DescribeSecretOutput, error) {
	if err := c.wait(ctx); err != nil {
		return nil, err
	}
	out, err := c.sm.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String(name)})
	var nf *smtypes.ResourceNotFoundException
	if err != nil && !errors.As(err, &nf) {
		return nil, fmt.Errorf("%w: describe secret: %w", errUnavailable, err)
	}
	return out, err
}

// versionExists reports whether version id of the secret exists: among
// the labelled versions DescribeSecret returned, else among every version
// (deprecated ones included).
func (c *confirmer) versionExists(ctx context.Context, name, id string, labelled map[string][]string) (bool, error) {
	if _, ok := labelled[id]; ok {
		return true, nil
	}
	in := &secretsmanager.ListSecretVersionIdsInput{SecretId: aws.String(name), IncludeDeprecated: aws.Bool(true), MaxResults: aws.Int32(100)}
	for range maxVersionPages {
		if err := c.wait(ctx); err != nil {
			return false, err
		}
		out, err := c.sm.ListSecretVersionIds(ctx, in)
		if err != nil {
			return false, fmt.Errorf("%w: list secret versions: %w", errUnavailable, err)
		}
		for _, v := range out.Versions {
			if aws.ToString(v.VersionId) == id {
				return true, nil
			}
		}
		if out.NextToken == nil {
			return false, nil
		}
		in.NextToken = out.NextToken
	}
	return false, nil
}

// wait takes one call from the rate limit, or fails when the message's
// time runs out first.
func (c *confirmer) wait(ctx context.Context) error {
	if err := c.limiter.Wait(ctx); err != nil {
		return fmt.Errorf("%w: confirm_tps: %w", errUnavailable, err)
	}
	return nil
}

// confirmTimeout bounds the calls confirming one event, within the
// message's handling time.
const confirmTimeout = 6 * time.Second
