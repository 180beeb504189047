package cron

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	robfig "github.com/robfig/cron/v3"

	"github.com/rekey-dev/rekey/orchestrator"
)

// parser accepts standard five-field cron expressions (minute hour
// day-of-month month day-of-week) and the descriptors @yearly, @monthly,
// @weekly, @daily, @hourly and @every <duration>.
var parser = robfig.NewParser(robfig.Minute | robfig.Hour | robfig.Dom | robfig.Month | robfig.Dow | robfig.Descriptor)

// Schedule is a parsed policy.schedule in its policy.timezone. Every
// replica computes the same ticks from it: cron expressions are evaluated in
// the policy's time zone (UTC when none is set, never the host's), and
// "@every d" ticks are the multiples of d since the Unix epoch, so
// "@every 1h" fires on the hour whenever rekeyd started.
type Schedule struct {
	spec  string
	loc   *time.Location
	every time.Duration   // "@every": whole seconds, at least 1s
	cron  robfig.Schedule // anything else
}

// ParseSchedule parses spec (cron syntax, @daily, @every 1h...) evaluated in
// timezone (an IANA name; empty means UTC).
func ParseSchedule(spec, timezone string) (*Schedule, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, errors.New("schedule is empty")
	}
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		return nil, fmt.Errorf("%q: set policy.timezone instead of a TZ= prefix", spec)
	}
	loc := time.UTC
	if timezone != "" {
		l, err := time.LoadLocation(timezone)
		if err != nil {
			return nil, fmt.Errorf("timezone %q: %w", timezone, err)
		}
		loc = l
	}
	parsed, err := parser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("%q is not a cron schedule (five fields, @daily, @every 1h...): %w", spec, err)
	}
	s := &Schedule{spec: spec, loc: loc}
	switch p := parsed.(type) {
	case robfig.ConstantDelaySchedule:
		s.every = p.Delay
	case *robfig.SpecSchedule:
		p.Location = loc
		s.cron = p
	default:
		return nil, fmt.Errorf("%q: unsupported schedule type %T", spec, parsed)
	}
	if s.Next(time.Now()).IsZero() {
		return nil, fmt.Errorf("%q never fires", spec)
	}
	return s, nil
}

// String returns the schedule as written in the policy.
func (s *Schedule) String() string { return s.spec }

// Location is the time zone the schedule is evaluated in.
func (s *Schedule) Location() *time.Location { return s.loc }

// Next returns the first tick strictly after t, in the schedule's time
// zone, or the zero time if there is none within five years.
func (s *Schedule) Next(t time.Time) time.Time {
	if s.every > 0 {
		d := int64(s.every)
		n := t.UnixNano()
		q := n / d
		if n < 0 && n%d != 0 {
			q--
		}
		return time.Unix(0, (q+1)*d).In(s.loc)
	}
	next := s.cron.Next(t.In(s.loc))
	if next.IsZero() {
		return next
	}
	return next.In(s.loc)
}

// latest returns the last tick in (after, until].
func (s *Schedule) latest(after, until time.Time) (time.Time, bool) {
	if !until.After(after) {
		return time.Time{}, false
	}
	if s.every > 0 {
		next := s.Next(until)
		l := next.Add(-s.every)
		return l, l.After(after)
	}
	// No Prev in robfig/cron: look in (until-d, until] for growing d, then
	// walk forward to the last tick in that window.
	for d := time.Minute; ; d *= 2 {
		from := until.Add(-d)
		last := d > 50*365*24*time.Hour || !from.After(after)
		if last {
			from = after
		}
		t := s.Next(from)
		if !t.IsZero() && !t.After(until) {
			for {
				n := s.Next(t)
				if n.IsZero() || n.After(until) {
					return t, true
				}
				t = n
			}
		}
		if last {
			return time.Time{}, false
		}
	}
}

// maxCounted bounds the ticks counted by count.
const maxCounted = 1000

// count returns the number of ticks in (after, until], up to maxCounted.
func (s *Schedule) count(after, until time.Time) int {
	if s.every > 0 {
		first := s.Next(after)
		if first.After(until) {
			return 0
		}
		n := until.Sub(first)/s.every + 1
		return int(min(n, maxCounted))
	}
	n := 0
	for t := s.Next(after); !t.IsZero() && !t.After(until) && n < maxCounted; t = s.Next(t) {
		n++
	}
	return n
}

// due returns the latest tick in (after, now] whose fire time (the tick plus
// its jitter) has come, and the number of ticks in (after, tick].
func (s *Schedule) due(after, now time.Time, jitter func(time.Time) time.Duration) (time.Time, int, bool) {
	until := now
	for range maxCounted {
		t, ok := s.latest(after, until)
		if !ok {
			return time.Time{}, 0, false
		}
		if !t.Add(jitter(t)).After(now) {
			return t, s.count(after, t), true
		}
		until = t.Add(-time.Nanosecond)
	}
	return time.Time{}, 0, false
}

// minGap estimates the shortest time between two ticks, from the next few.
func (s *Schedule) minGap(from time.Time) time.Duration {
	if s.every > 0 {
		return s.every
	}
	gap := time.Duration(0)
	t := s.Next(from)
	for range 8 {
		n := s.Next(t)
		if n.IsZero() {
			break
		}
		if g := n.Sub(t); gap == 0 || g < gap {
			gap = g
		}
		t = n
	}
	return gap
}

// Jitter is the delay added to a tick of one secret: a hash of the tenant,
// the secret and the tick, in [0, max). Every replica computes the same
// value, so they fire (and de-duplicate) together.
func Jitter(tenant, secret string, tick time.Time, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	h := sha256.Sum256(fmt.Appendf(nil, "%s/%s@%d", tenant, secret, tick.UnixNano()))
	return time.Duration(binary.BigEndian.Uint64(h[:8]) % uint64(max))
}

// RequestID is the rotation request id (CloudEvent id and Nats-Msg-Id) of
// one tick of one secret, the same on every replica. '.' cannot occur in a
// tenant or secret id, so distinct (tenant, secret, tick) never share one.
func RequestID(tenant, secret string, tick time.Time) string {
	return "cron." + tenant + "." + secret + "." + tick.UTC().Format("20060102T150405Z")
}

// ValidateSchedules checks every tenants.<t>.secrets.<s>.policy.schedule
// (with its timezone) and returns one field error per bad schedule.
func ValidateSchedules(rekey *orchestrator.Config) error {
	var errs []error
	for _, t := range rekey.TenantNames() {
		for _, s := range rekey.TenantSecrets(t) {
			sc, _ := rekey.Secret(t, s)
			if sc.Policy.Schedule == "" {
				continue
			}
			if _, err := ParseSchedule(sc.Policy.Schedule, sc.Policy.TimeZone); err != nil {
				errs = append(errs, orchestrator.FieldErrorf("tenants."+t+".secrets."+s+".policy.schedule", "%v", err))
			}
		}
	}
	return errors.Join(errs...)
}
