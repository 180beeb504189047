package leak

import (
	"errors"
	"fmt"
	"strings"

	"github.com/rekey-dev/rekey/schemas"
)

// ErrRefused is returned (wrapped) by ParseReport for a well-formed report
// whose subject names another tenant or secret than its payload: an agent
// may publish on its own tenant's subjects only, so the payload is not
// believed.
var ErrRefused = errors.New("leak report refused")

// MaxReportBytes bounds the size of one leak report.
const MaxReportBytes = 16 << 10

// ParseReport decodes and checks a leak report received on subject
// (rekey.leak.<tenant>.<secret>). Errors wrap schemas.ErrMalformed for
// anything that is not a valid report, or ErrRefused when the subject and
// the payload disagree on the tenant or the secret.
func ParseReport(subject string, data []byte) (schemas.LeakReport, error) {
	if len(data) > MaxReportBytes {
		return schemas.LeakReport{}, fmt.Errorf("leak report of %d bytes is over %d: %w", len(data), MaxReportBytes, schemas.ErrMalformed)
	}
	rest, ok := strings.CutPrefix(subject, "rekey.leak.")
	tokens := strings.Split(rest, ".")
	if !ok || len(tokens) != 2 {
		return schemas.LeakReport{}, fmt.Errorf("subject %q is not rekey.leak.<tenant>.<secret>: %w", truncate(subject), schemas.ErrMalformed)
	}
	tenant, secret := tokens[0], tokens[1]
	if err := schemas.ValidateRef(tenant, secret); err != nil {
		return schemas.LeakReport{}, fmt.Errorf("subject %q: %w: %w", truncate(subject), err, schemas.ErrMalformed)
	}
	ev, err := schemas.Decode(data)
	if err != nil {
		return schemas.LeakReport{}, err
	}
	var r schemas.LeakReport
	if err := ev.DecodeData(schemas.TypeLeakReport, &r); err != nil {
		return schemas.LeakReport{}, err
	}
	if r.Tenant != tenant || r.Secret != secret || ev.Tenant != tenant ||
		(ev.Subject != "" && ev.Subject != tenant+"/"+secret) {
		return schemas.LeakReport{}, fmt.Errorf("report for %s/%s (event tenant %q) on subject %s: %w",
			truncate(r.Tenant), truncate(r.Secret), truncate(ev.Tenant), subject, ErrRefused)
	}
	if err := r.Validate(); err != nil {
		return schemas.LeakReport{}, err
	}
	for _, f := range []string{r.Version, r.Tool, r.Run, r.Where} {
		if !schemas.Printable(f) {
			return schemas.LeakReport{}, fmt.Errorf("version, tool, run and where must be printable UTF-8: %w", schemas.ErrMalformed)
		}
	}
	return r, nil
}

// Key is the KV key (bucket "rekey_leak") of the decision about one leaked
// secret version.
func Key(tenant, secret, version string) string {
	return tenant + "." + secret + "." + schemas.VersionToken(version)
}

// RequestID is the id of the request a leak of one version makes (the
// CloudEvent id and Nats-Msg-Id of the rotation or revocation request, and
// the request id of every audit record about it), the same for every
// report of that version on every replica.
func RequestID(tenant, secret, version string) string {
	return "leak." + Key(tenant, secret, version)
}

func truncate(s string) string {
	if len(s) <= 80 {
		return s
	}
	return s[:80] + "..."
}
