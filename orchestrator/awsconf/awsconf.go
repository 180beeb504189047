// Package awsconf loads the AWS SDK configuration rekey's AWS components
// use (the SQS trigger triggers/awsevents and the EventBridge exporter
// fanout/exporters/eventbridge), and reads the region of a standard SQS
// queue URL. It is a leaf: the standard library and the AWS SDK.
package awsconf

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
)

// Load returns the SDK configuration rekey uses for region and endpoint
// (either may be empty): credentials and, when region is empty, the
// region come from the SDK's default chain (environment, shared config
// and credentials files, web identity, container and instance roles). A
// config without a region is an error.
func Load(ctx context.Context, region, endpoint string) (aws.Config, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var opts []func(*awsconfig.LoadOptions) error
	if region != "" {
		opts = append(opts, awsconfig.WithRegion(region))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return aws.Config{}, errors.New("no AWS region: set region (or AWS_REGION), or use a standard queue URL")
	}
	if endpoint != "" {
		cfg.BaseEndpoint = aws.String(endpoint)
	}
	return cfg, nil
}

// RegionOf returns the region of a standard SQS queue URL
// (https://sqs.<region>.amazonaws.com/..., or .amazonaws.com.cn), or "".
func RegionOf(queueURL string) string {
	u, err := url.Parse(queueURL)
	if err != nil {
		return ""
	}
	host := u.Hostname()
	for _, p := range []struct{ prefix, suffix string }{{"sqs.", ".amazonaws.com"}, {"sqs.", ".amazonaws.com.cn"}} {
		if strings.HasPrefix(host, p.prefix) && strings.HasSuffix(host, p.suffix) {
			region := strings.TrimSuffix(strings.TrimPrefix(host, p.prefix), p.suffix)
			if region != "" && !strings.Contains(region, ".") {
				return region
			}
		}
	}
	return ""
}
