package awsevents

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rekey-dev/rekey/schemas"
)

// rule is a compiled GuardDutyRule.
type rule struct {
	name        string
	tenant      string
	keys        map[string]bool
	principals  map[string]bool
	tagKey      string
	tenants     map[string]bool
	minSeverity float64
	types       []*regexp.Regexp
	resources   map[string]bool
}

func compileRules(cfg []GuardDutyRule) []rule {
	out := make([]rule, 0, len(cfg))
	for i, r := range cfg {
		sev, _ := ParseSeverity(r.MinSeverity) // validated
		c := rule{
			name: r.name(i), tenant: r.Tenant, keys: set(r.AccessKeyIDs), principals: set(r.PrincipalIDs),
			tagKey: r.TagKey, tenants: set(r.Tenants), minSeverity: sev, resources: set(r.ResourceTypes),
		}
		for _, p := range r.FindingTypes {
			c.types = append(c.types, regexp.MustCompile("^(?:"+p+")$")) // compiled once by Validate
		}
		out = append(out, c)
	}
	return out
}

// target is a tenant a finding maps to, the rule that mapped it and how.
type target struct {
	tenant, rule, matched string
	minSeverity           float64
}

// matches returns the tenants rule r maps finding f to, and how many tag
// values it saw that are not among its tenants (never repeated: a tag
// value may be anything).
func (r *rule) matches(f *Finding) (ts []target, badTags int) {
	if !r.narrowed(f) {
		return nil, 0
	}
	switch {
	case f.AccessKeyID != "" && r.keys[f.AccessKeyID]:
		return []target{{tenant: r.tenant, rule: r.name, matched: "access_key_id", minSeverity: r.minSeverity}}, 0
	case f.PrincipalID != "" && r.principals[f.PrincipalID]:
		return []target{{tenant: r.tenant, rule: r.name, matched: "principal_id", minSeverity: r.minSeverity}}, 0
	case r.tagKey == "":
		return nil, 0
	}
	for _, tag := range f.Tags {
		if tag.Key != r.tagKey {
			continue
		}
		v := strings.TrimSpace(tag.Value)
		if !r.tenants[v] {
			badTags++
			continue
		}
		ts = append(ts, target{tenant: v, rule: r.name, matched: "tag:" + r.tagKey, minSeverity: r.minSeverity})
	}
	return ts, badTags
}

// narrowed reports whether the finding's type and resource types are
// among those the rule is narrowed to (finding_types, resource_types).
func (r *rule) narrowed(f *Finding) bool {
	if len(r.types) > 0 && !slices.ContainsFunc(f.Types, func(typ string) bool {
		return slices.ContainsFunc(r.types, func(re *regexp.Regexp) bool { return re.MatchString(typ) })
	}) {
		return false
	}
	if len(r.resources) > 0 && !slices.ContainsFunc(f.ResourceTypes, func(rt string) bool { return r.resources[rt] }) {
		return false
	}
	return true
}

// evaluate maps a finding to the tenants to revoke (one entry per tenant,
// the first rule that reached its severity) and those matched only below
// their rules' min_severity.
func evaluate(rules []rule, f *Finding) (revoke, below []target, badTags int) {
	seen := map[string]bool{}
	var low []target
	for i := range rules {
		ts, bad := rules[i].matches(f)
		badTags += bad
		for _, tg := range ts {
			switch {
			case f.Severity < tg.minSeverity:
				low = append(low, tg)
			case !seen[tg.tenant]:
				seen[tg.tenant] = true
				revoke = append(revoke, tg)
			}
		}
	}
	for _, tg := range low {
		if !seen[tg.tenant] {
			seen[tg.tenant] = true
			below = append(below, tg)
		}
	}
	return revoke, below, badTags
}

// maxClockSkew is how far in the future a finding's time may lie.
const maxClockSkew = 5 * time.Minute

// handleFinding turns a GuardDuty or Security Hub finding into
// revocation requests, with rules (the section's guardduty or
// securityhub rules).
func (t *Trigger) handleFinding(ctx context.Context, d *delivery, rules []rule) string {
	f := d.msg.Finding
	if f.Inactive {
		return t.refuse(ctx, d, OutcomeIgnored, "", "", f.Product+" finding is archived, resolved or suppressed")
	}
	// A finding is news only while it is recent: one last updated before
	// the dedup window could be a replay that the window forgot.
	updated := firstTime(f.UpdatedAt, d.msg.Time, d.now)
	switch age := d.now.Sub(updated); {
	case age > t.cfg.DedupWindow:
		return t.refuse(ctx, d, OutcomeRefused, "", "", fmt.Sprintf("the finding was last updated at %s, longer ago than dedup_window (%s)",
			updated.Format(time.RFC3339), t.cfg.DedupWindow))
	case age < -maxClockSkew:
		return t.refuse(ctx, d, OutcomeRefused, "", "", fmt.Sprintf("the finding's updatedAt %s is in the future", updated.Format(time.RFC3339)))
	}
	revoke, below, badTags := evaluate(rules, f)
	sev := strconv.FormatFloat(f.Severity, 'g', -1, 64)
	findingDetail := func(tg target, extra map[string]string) map[string]string {
		m := map[string]string{"finding_id": clip(f.ID, 128), "finding_type": clip(f.Type, 128), "severity": sev}
		if tg.rule != "" {
			m["rule"], m["matched"] = tg.rule, tg.matched
			m["min_severity"] = strconv.FormatFloat(tg.minSeverity, 'g', -1, 64)
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for _, tg := range below {
		reason := fmt.Sprintf("severity %s is below min_severity %g of rule %s", sev, tg.minSeverity, tg.rule)
		t.log.Info(f.Product+" finding below severity", "tenant", tg.tenant, "rule", tg.rule, "severity", sev, "event_id", d.eventID)
		if err := t.record(ctx, d, d.id("below", tg.tenant), schemas.AuditRecord{
			Tenant: tg.tenant, Action: "revocation.revoke.request", Outcome: schemas.OutcomeRefused,
			Detail: findingDetail(tg, map[string]string{"reason": reason}),
		}); err != nil {
			return OutcomeUnavailable
		}
	}
	if len(revoke) == 0 {
		if len(below) > 0 {
			return OutcomeIgnored
		}
		reason := "no " + strings.ToLower(strings.ReplaceAll(f.Product, " ", "")) + " rule maps the finding to a tenant"
		if badTags > 0 {
			reason += fmt.Sprintf(" (%d tag values are not tenants of their rules)", badTags)
		}
		t.log.Info(f.Product+" finding maps to no tenant", "event_id", d.eventID, "finding_type", clip(f.Type, 128), "reason", reason)
		if err := t.record(ctx, d, d.id("unmapped"), schemas.AuditRecord{
			Action: "aws.event", Outcome: schemas.OutcomeRefused, Detail: findingDetail(target{}, map[string]string{"reason": reason}),
		}); err != nil {
			return OutcomeUnavailable
		}
		return OutcomeRefused
	}
	allDup := true
	for _, tg := range revoke {
		id := d.id("revoke", tg.tenant)
		req := schemas.RevocationRequested{
			Tenant: tg.tenant, Action: schemas.ActionRevoke, Trigger: d.trigger(), RequestedAt: d.now,
			Reason: fmt.Sprintf("%s finding %s (severity %s), rule %s", f.Product, clip(f.Type, 128), sev, tg.rule),
		}
		dup, err := t.publish(ctx, d, schemas.RevokeSubject(tg.tenant), schemas.TypeRevocationRequested, tg.tenant, tg.tenant, id, req)
		if err != nil {
			return OutcomeUnavailable
		}
		allDup = allDup && dup
		t.metrics.RequestsTotal.WithLabelValues("revoke", requested(dup)).Inc()
		if err := t.record(ctx, d, id+"-audit", schemas.AuditRecord{
			Tenant: tg.tenant, Action: "revocation.revoke.request", Outcome: schemas.OutcomeAccepted, RequestID: id,
			Detail: findingDetail(tg, nil),
		}); err != nil {
			return OutcomeUnavailable
		}
		t.log.Warn("revocation requested by a "+f.Product+" finding", "tenant", tg.tenant, "rule", tg.rule, "matched", tg.matched,
			"severity", sev, "finding_type", clip(f.Type, 128), "request_id", id, "duplicate", dup)
	}
	if allDup {
		return OutcomeDuplicate
	}
	return OutcomePublished
}
