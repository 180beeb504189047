// Package eventbridge is an exporter (exporters: what sends rekey's
// outcomes out of rekey): it puts rekey's lifecycle events, read from the
// EVENTS stream, on an Amazon EventBridge event bus. Its configuration
// stays where users wrote it, under triggers.awsevents.eventbridge, and
// takes the region and endpoint of that section when it sets none.
package eventbridge

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/goccy/go-yaml"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/awsconf"
	"github.com/rekey-dev/rekey/orchestrator/configkit"
	"github.com/rekey-dev/rekey/schemas"
)

// Section is where the exporter's configuration is in rekey.yaml.
const Section = "triggers.awsevents.eventbridge"

// Defaults of Config.
const (
	DefaultSource  = "rekey"
	DefaultBusName = "default"
)

// DefaultKinds are the rekey event kinds the outcome publisher sends to
// EventBridge when eventbridge.kinds is empty.
var DefaultKinds = []string{schemas.KindRotationCompleted, schemas.KindRotationFailed, schemas.KindRevocationCompleted}

// PublishableKinds are the event kinds eventbridge.kinds may name.
var PublishableKinds = []string{
	schemas.KindRotationCompleted, schemas.KindRotationFailed, schemas.KindRevocationStarted,
	schemas.KindRevocationCompleted, schemas.KindTenantRestored, schemas.KindInvalidationConfirmed,
}

// Config configures the outcome publisher: rekey's own lifecycle events,
// read from the EVENTS stream, sent to an event bus. It is the
// triggers.awsevents.eventbridge section of rekey.yaml.
type Config struct {
	// Enabled runs the publisher (default false), whether or not the SQS
	// trigger of triggers.awsevents runs.
	Enabled bool `yaml:"enabled"`
	// BusName is the event bus name or ARN (default "default").
	BusName string `yaml:"bus_name"`
	// Source of the events put (default "rekey"); "aws." is reserved.
	Source string `yaml:"source"`
	// Kinds of rekey events sent (default rotation_completed,
	// rotation_failed, revocation_completed).
	Kinds []string `yaml:"kinds"`
	// Region and Endpoint override triggers.awsevents' region and
	// endpoint for EventBridge. Region defaults to the section's, else
	// to the region of its standard queue_url, else to the SDK's.
	Region   string `yaml:"region"`
	Endpoint string `yaml:"endpoint"`
}

// ParseConfig reads the exporter's configuration from the raw
// triggers.awsevents section: its eventbridge key, decoded strictly and
// validated (errors name their field, e.g.
// "triggers.awsevents.eventbridge.kinds[0]"), with the defaults filled in
// and, when eventbridge sets none, the section's region (else the region
// of its standard queue_url) and endpoint. The other keys are the SQS
// trigger's, which decodes the section strictly. The bool reports whether
// eventbridge.enabled is set.
func ParseConfig(awseventsSection []byte) (Config, bool, error) {
	var keys map[string]yaml.RawMessage
	if !isEmpty(awseventsSection) {
		if err := configkit.Unmarshal(awseventsSection, &keys); err != nil {
			return Config{}, false, fmt.Errorf("triggers.awsevents: %w", err)
		}
	}
	var region, endpoint, queueURL string
	for key, v := range map[string]*string{"region": &region, "endpoint": &endpoint, "queue_url": &queueURL} {
		if raw := keys[key]; !isEmpty(raw) {
			if err := configkit.Unmarshal(raw, v); err != nil {
				return Config{}, false, orchestrator.FieldErrorf("triggers.awsevents."+key, "%v", err)
			}
		}
	}
	var cfg Config
	raw := []byte(keys["eventbridge"])
	if isEmpty(raw) {
		raw = nil
	}
	if err := orchestrator.DecodeSection(Section, raw, &cfg); err != nil {
		return Config{}, false, err
	}
	cfg.Region = cmp.Or(cfg.Region, region, awsconf.RegionOf(queueURL))
	cfg.Endpoint = cmp.Or(cfg.Endpoint, endpoint)
	return cfg.withDefaults(), cfg.Enabled, nil
}

func isEmpty(raw []byte) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null" || s == "~"
}

// Validate checks every field and returns every problem, each an
// *orchestrator.FieldError naming its field within the section.
func (c *Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, orchestrator.FieldErrorf(field, format, args...))
	}
	if len(c.BusName) > 1600 || strings.ContainsAny(c.BusName, " \t\n") {
		add("bus_name", "must be an event bus name or ARN")
	}
	if strings.HasPrefix(c.Source, "aws.") {
		add("source", "%q: sources starting with aws. are reserved for AWS", c.Source)
	} else if len(c.Source) > 256 {
		add("source", "must be at most 256 characters")
	}
	for i, k := range c.Kinds {
		if !slices.Contains(PublishableKinds, k) {
			add(fmt.Sprintf("kinds[%d]", i), "%q is not one of %s", k, strings.Join(PublishableKinds, ", "))
		}
	}
	if c.Endpoint != "" {
		if u, err := url.Parse(c.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add("endpoint", "%q must be an http(s) URL", c.Endpoint)
		}
	}
	return errors.Join(errs...)
}

// withDefaults fills the zero values that stand for defaults.
func (c Config) withDefaults() Config {
	c.BusName = cmp.Or(c.BusName, DefaultBusName)
	c.Source = cmp.Or(c.Source, DefaultSource)
	if len(c.Kinds) == 0 {
		c.Kinds = DefaultKinds
	}
	return c
}
