package usage

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/rekey-dev/rekey/schemas"
)

// ErrRefused is returned (wrapped) by ParseReport for a well-formed report
// whose subject names another tenant or secret than its payload: an agent
// may publish only on its own subjects, so the payload is not believed.
var ErrRefused = errors.New("use report refused")

// MaxReportBytes bounds the size of one use report.
const MaxReportBytes = 64 << 10

// maxVersionBytes bounds a version string.
const maxVersionBytes = 256

// ParseReport decodes and checks a use report received on subject
// (rekey.used.<tenant>.<secret>). Errors wrap schemas.ErrMalformed for
// anything that is not a valid report, or ErrRefused when the subject and
// the payload disagree on the tenant or secret.
func ParseReport(subject string, data []byte) (schemas.UsageReport, error) {
	if len(data) > MaxReportBytes {
		return schemas.UsageReport{}, fmt.Errorf("use report of %d bytes is over %d: %w", len(data), MaxReportBytes, schemas.ErrMalformed)
	}
	tenant, secret, instance, err := parseSubject(subject)
	if err != nil {
		return schemas.UsageReport{}, err
	}
	ev, err := schemas.Decode(data)
	if err != nil {
		return schemas.UsageReport{}, err
	}
	var r schemas.UsageReport
	if err := ev.DecodeData(schemas.TypeUsageReport, &r); err != nil {
		return schemas.UsageReport{}, err
	}
	// The instance comes from the subject, which NATS lets an agent
	// publish on under its own name only.
	if r.Tenant != tenant || r.Secret != secret || r.Agent != instance || ev.Tenant != tenant ||
		(ev.Subject != "" && ev.Subject != tenant+"/"+secret) {
		return schemas.UsageReport{}, fmt.Errorf("report for %s/%s (event tenant %q) on subject %s: %w",
			r.Tenant, r.Secret, ev.Tenant, subject, ErrRefused)
	}
	if err := validateVersion(r.Version); err != nil {
		return schemas.UsageReport{}, err
	}
	return r, nil
}

func parseSubject(subject string) (tenant, secret, instance string, err error) {
	rest, ok := strings.CutPrefix(subject, "rekey.used.")
	tokens := strings.Split(rest, ".")
	if !ok || len(tokens) != 3 {
		return "", "", "", fmt.Errorf("subject %q is not rekey.used.<tenant>.<secret>.<instance>: %w", truncate(subject), schemas.ErrMalformed)
	}
	tenant, secret, instance = tokens[0], tokens[1], tokens[2]
	if err := schemas.ValidateRef(tenant, secret); err != nil {
		return "", "", "", fmt.Errorf("subject %q: %w: %w", truncate(subject), err, schemas.ErrMalformed)
	}
	if err := schemas.ValidateInstance(instance); err != nil {
		return "", "", "", fmt.Errorf("subject %q: %w: %w", truncate(subject), err, schemas.ErrMalformed)
	}
	return tenant, secret, instance, nil
}

// validateVersion accepts any printable version string of a sane length:
// backends name versions differently (numbers, UUIDs...).
func validateVersion(v string) error {
	if v == "" {
		return fmt.Errorf("version is empty: %w", schemas.ErrMalformed)
	}
	if len(v) > maxVersionBytes || !utf8.ValidString(v) {
		return fmt.Errorf("version is not valid UTF-8 of at most %d bytes: %w", maxVersionBytes, schemas.ErrMalformed)
	}
	if !schemas.Printable(v) {
		return fmt.Errorf("version %q has a non-printable character: %w", truncate(v), schemas.ErrMalformed)
	}
	return nil
}

// Key is the KV key of one secret version's count in the "rekey_usage"
// bucket.
func Key(tenant, secret, version string) string {
	return tenant + "." + secret + "." + schemas.VersionToken(version)
}

// RequestID is the rotation request id (CloudEvent id and Nats-Msg-Id)
// asked for when a version reaches its max_uses, the same on every
// replica. '.' cannot occur in a tenant or secret id, so distinct
// versions never share one.
func RequestID(tenant, secret, version string) string {
	return "usage." + Key(tenant, secret, version)
}

func truncate(s string) string {
	if len(s) <= 80 {
		return s
	}
	return s[:80] + "..."
}
