package configkit_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator/configkit"
)

type section struct {
	Token   string        `yaml:"token"`
	Timeout time.Duration `yaml:"timeout"`
	Limits  struct {
		Burst int `yaml:"burst"`
	} `yaml:"limits"`
}

func (s *section) Validate() error {
	if s.Limits.Burst < 0 {
		return configkit.FieldErrorf("limits.burst", "must be >= 0, got %d", s.Limits.Burst)
	}
	return nil
}

// TestDecodeSectionNamesTheField: every error names the field under the
// section's prefix, and none quotes the source's other values.
func TestDecodeSectionNamesTheField(t *testing.T) {
	var s section
	err := configkit.DecodeSection("triggers.x", []byte("token: s3cr3t-value\ntimeout: soon\n"), &s)
	var fe *configkit.FieldError
	require.True(t, errors.As(err, &fe), "%v", err)
	require.Equal(t, "triggers.x.timeout", fe.Field)
	require.Contains(t, fe.Reason, `"soon" is not a duration`)

	s = section{}
	err = configkit.DecodeSection("triggers.x", []byte("token: s3cr3t-value\ntimeot: 5s\n"), &s)
	require.Error(t, err)
	require.True(t, strings.HasPrefix(err.Error(), "triggers.x: "), "%v", err)
	require.Contains(t, err.Error(), "timeot")
	require.NotContains(t, err.Error(), "s3cr3t-value")

	s = section{}
	err = configkit.DecodeSection("triggers.x", []byte("limits:\n  burst: -1\n"), &s)
	require.True(t, errors.As(err, &fe), "%v", err)
	require.Equal(t, "triggers.x.limits.burst", fe.Field)

	s = section{Limits: struct {
		Burst int `yaml:"burst"`
	}{Burst: -2}}
	err = configkit.DecodeSection("triggers.x", nil, &s)
	require.ErrorContains(t, err, "triggers.x.limits.burst: must be >= 0, got -2", "an empty section validates the defaults")

	s = section{}
	require.NoError(t, configkit.DecodeSection("triggers.x", []byte("timeout: 1m30s\n"), &s))
	require.Equal(t, 90*time.Second, s.Timeout)
}

// TestUnmarshalDurationField: without a prefix, a bad duration is a
// *FieldError naming the nested field's path.
func TestUnmarshalDurationField(t *testing.T) {
	var v struct {
		NATS struct {
			Timeout time.Duration `yaml:"timeout"`
		} `yaml:"nats"`
	}
	err := configkit.Unmarshal([]byte("nats:\n  timeout: 10 sec\n"), &v)
	var fe *configkit.FieldError
	require.True(t, errors.As(err, &fe), "%v", err)
	require.Equal(t, "nats.timeout", fe.Field)
}
