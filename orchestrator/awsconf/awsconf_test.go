package awsconf_test

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator/awsconf"
)

func TestRegionOf(t *testing.T) {
	for url, want := range map[string]string{
		"https://sqs.eu-west-1.amazonaws.com/123456789012/rekey-events":     "eu-west-1",
		"https://sqs.cn-north-1.amazonaws.com.cn/123456789012/rekey-events": "cn-north-1",
		"http://localhost:4566/000000000000/rekey-events":                   "",
		"https://sqs.amazonaws.com/123456789012/q":                          "",
		"https://sqs.a.b.amazonaws.com/123456789012/q":                      "",
		"https://sqs.eu-west-1.amazonaws.com.evil.example/123456789012/q":   "",
		"::not a url": "",
	} {
		require.Equal(t, want, awsconf.RegionOf(url), url)
	}
}

func TestLoad(t *testing.T) {
	cfg, err := awsconf.Load(context.Background(), "eu-west-1", "http://127.0.0.1:4566")
	require.NoError(t, err)
	require.Equal(t, "eu-west-1", cfg.Region)
	require.Equal(t, "http://127.0.0.1:4566", aws.ToString(cfg.BaseEndpoint))
}
