// Package kumotest runs the kumo AWS emulator (github.com/sivchari/kumo,
// the binary that .ci/kumo.sh builds) as a child process bound to
// 127.0.0.1, for the tests that need real SQS and EventBridge APIs, and
// has helpers to set up what those tests use: queues with a dead-letter
// queue, event buses, rules and SQS targets.
//
// A binary that cannot be found is an error saying how to get it; tests
// turn it into a failure, never a skip. The child gets SIGKILL if the test
// process dies (Pdeathsig), so a killed test leaves no emulator behind.
//
// What kumo v0.33.1 does as AWS does (kumo_test.go checks it): a rule's
// matches on source, detail-type and detail reach its SQS target as the
// EventBridge envelope (version, id = the PutEvents EventId, detail-type,
// source, account, time, region, detail); unmatched events do not; a long
// poll returns as soon as a message is sent; a received message stays
// invisible for the visibility timeout and comes back with
// ApproximateReceiveCount one higher; after maxReceiveCount receives the
// redrive policy moves it to the dead-letter queue; a deleted message
// never comes back.
//
// Where it departs from AWS (TestKumoDeviations fails when a new kumo
// fixes one, so that this list stays true):
//
//   - EventBridge delivers to SQS asynchronously, once, through its own
//     HTTP endpoint (KUMO_HOST:KUMO_PORT), with no retry. The envelope
//     has no "resources" (PutEvents' Resources are dropped), its "time"
//     is the delivery time rather than the entry's Time, and it carries
//     an extra "event-bus-name" for a bus other than default.
//   - Event patterns are matched on source, detail-type and detail only;
//     other keys ("account", "region", "resources") are ignored, as if
//     they matched.
//   - PutEvents to an event bus that does not exist succeeds (no failed
//     entry, nothing delivered); AWS reports the entry as failed. kumo
//     never reports a failed entry, so a publisher's retry of failed
//     entries cannot be tested against it.
//   - A long poll is woken only by new messages: a message whose
//     visibility timeout ends while a ReceiveMessage waits is returned by
//     the next receive, not by that one. The move to the dead-letter
//     queue likewise happens on a later receive of the source queue.
//   - MaxNumberOfMessages above 10 is clamped instead of refused.
//   - Queue URLs are always http://localhost:4566/000000000000/<name>,
//     whatever port kumo listens on (requests resolve queues by path, so
//     the URL works with BaseEndpoint set), and ARNs always use account
//     000000000000 and region us-east-1.
//   - DeleteMessage with the receipt handle of a message already deleted
//     fails with ReceiptHandleIsInvalid.
package kumotest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/rekey-dev/rekey/internal/testutil"
)

// EnvKumoBin overrides where the kumo binary is looked for.
const EnvKumoBin = "REKEY_KUMO_BIN"

// HowToGetKumo is the advice in the error when the binary is missing.
const HowToGetKumo = "build it with `bash .ci/kumo.sh` (kumo v0.33.1 into .cache/bin/kumo, several minutes the first time), or set " + EnvKumoBin

// Region is the region the emulator's resources live in.
const Region = "us-east-1"

// Account is the account id kumo puts in every ARN and queue URL.
const Account = "000000000000"

// FindKumo returns the kumo binary: $REKEY_KUMO_BIN, else .cache/bin/kumo
// of the repository (the nearest directory above the working directory
// that has .ci/kumo.sh).
func FindKumo() (string, error) {
	return testutil.FindBinary("kumo", EnvKumoBin, HowToGetKumo)
}

// Kumo is a running emulator.
type Kumo struct {
	// Endpoint is http://127.0.0.1:<port>, the BaseEndpoint of every client.
	Endpoint string
	cmd      *exec.Cmd
	log      *testutil.SyncBuffer
	done     chan struct{}
}

// Start runs kumo on a free 127.0.0.1 port with in-memory storage and
// waits until it answers. Its EventBridge delivers rule matches to
// KUMO_HOST:KUMO_PORT, so the port is passed that way, not as a flag.
func Start(ctx context.Context) (*Kumo, error) {
	bin, err := FindKumo()
	if err != nil {
		return nil, err
	}
	port, err := testutil.FreePort()
	if err != nil {
		return nil, err
	}
	k := &Kumo{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), log: &testutil.SyncBuffer{}, done: make(chan struct{})}
	k.cmd = exec.Command(bin)
	// None of the caller's AWS_* and KUMO_* settings reach the emulator.
	k.cmd.Env = append(testutil.EnvWithout("AWS_", "KUMO_"), "KUMO_HOST=127.0.0.1", "KUMO_PORT="+strconv.Itoa(port), "KUMO_LOG_LEVEL=warn",
		"AWS_DEFAULT_REGION="+Region)
	k.cmd.Stdout, k.cmd.Stderr = k.log, k.log
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { _ = k.cmd.Wait(); close(k.done) }()

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-k.done:
			return nil, fmt.Errorf("kumo exited at start: %s", k.Log())
		default:
		}
		err = k.healthy(ctx, client)
		if err == nil {
			return k, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			k.Stop()
			return nil, fmt.Errorf("kumo did not answer at %s (last error %v): %s", k.Endpoint, err, k.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (k *Kumo) healthy(ctx context.Context, client *http.Client) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.Endpoint+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /health: %s", resp.Status)
	}
	return nil
}

// Log returns the last lines kumo printed, for failure messages.
func (k *Kumo) Log() string {
	if k == nil || k.log == nil {
		return ""
	}
	return testutil.LastLines(k.log.String(), 40)
}

// Stop kills the emulator and waits for it; safe on nil.
func (k *Kumo) Stop() {
	if k == nil || k.cmd == nil || k.cmd.Process == nil {
		return
	}
	_ = k.cmd.Process.Kill()
	<-k.done
}

// AWSConfig is an SDK configuration for the emulator: static credentials,
// region us-east-1 and BaseEndpoint set to it.
func (k *Kumo) AWSConfig() aws.Config {
	return aws.Config{
		Region:       Region,
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDKUMOTEST", "kumo-test-secret", ""),
		BaseEndpoint: aws.String(k.Endpoint),
		// The emulator is local: fail fast rather than retry for long.
		RetryMaxAttempts: 2,
	}
}

// SQS returns an SQS client of the emulator.
func (k *Kumo) SQS() *sqs.Client { return sqs.NewFromConfig(k.AWSConfig()) }

// EventBridge returns an EventBridge client of the emulator.
func (k *Kumo) EventBridge() *eventbridge.Client { return eventbridge.NewFromConfig(k.AWSConfig()) }

// Queue is a queue and its dead-letter queue.
type Queue struct {
	URL, ARN       string
	DLQURL, DLQARN string
}

// QueueOptions shape CreateQueue's queues. Zero values take AWS defaults,
// except that MaxReceiveCount 0 means no dead-letter queue.
type QueueOptions struct {
	// VisibilityTimeout of the queue, in whole seconds (AWS default 30s).
	VisibilityTimeout time.Duration
	// MaxReceiveCount is the redrive policy's maxReceiveCount: after that
	// many receives a message moves to "<name>-dlq".
	MaxReceiveCount int
}

// CreateQueue creates queue name and, when opts.MaxReceiveCount > 0, the
// dead-letter queue "<name>-dlq" and a redrive policy pointing at it.
func (k *Kumo) CreateQueue(ctx context.Context, name string, opts QueueOptions) (Queue, error) {
	c := k.SQS()
	var q Queue
	attrs := map[string]string{}
	if opts.VisibilityTimeout > 0 {
		attrs[string(sqstypes.QueueAttributeNameVisibilityTimeout)] = strconv.Itoa(int(opts.VisibilityTimeout / time.Second))
	}
	if opts.MaxReceiveCount > 0 {
		var err error
		q.DLQURL, q.DLQARN, err = createQueue(ctx, c, name+"-dlq", nil)
		if err != nil {
			return Queue{}, err
		}
		attrs[string(sqstypes.QueueAttributeNameRedrivePolicy)] = fmt.Sprintf(`{"deadLetterTargetArn":%q,"maxReceiveCount":"%d"}`,
			q.DLQARN, opts.MaxReceiveCount)
	}
	var err error
	q.URL, q.ARN, err = createQueue(ctx, c, name, attrs)
	if err != nil {
		return Queue{}, err
	}
	return q, nil
}

func createQueue(ctx context.Context, c *sqs.Client, name string, attrs map[string]string) (url, arn string, err error) {
	out, err := c.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name), Attributes: attrs})
	if err != nil {
		return "", "", fmt.Errorf("create queue %s: %w", name, err)
	}
	got, err := c.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: out.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn},
	})
	if err != nil {
		return "", "", fmt.Errorf("queue %s arn: %w", name, err)
	}
	return aws.ToString(out.QueueUrl), got.Attributes[string(sqstypes.QueueAttributeNameQueueArn)], nil
}

// Depth returns how many messages of a queue are visible and how many
// are in flight (received, not deleted; in kumo, until the next receive
// after their visibility timeout).
func (k *Kumo) Depth(ctx context.Context, queueURL string) (visible, inFlight int, err error) {
	out, err := k.SQS().GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(queueURL),
		AttributeNames: []sqstypes.QueueAttributeName{
			sqstypes.QueueAttributeNameApproximateNumberOfMessages, sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
		},
	})
	if err != nil {
		return 0, 0, fmt.Errorf("depth of %s: %w", queueURL, err)
	}
	visible, err1 := strconv.Atoi(out.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessages)])
	inFlight, err2 := strconv.Atoi(out.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible)])
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("depth of %s: %w", queueURL, err)
	}
	return visible, inFlight, nil
}

// RouteToQueue creates the event bus (unless it is "default" or exists
// already), a rule on it with the event pattern, and the queue as the
// rule's one target.
func (k *Kumo) RouteToQueue(ctx context.Context, bus, rule, pattern, queueARN string) error {
	c := k.EventBridge()
	if bus != "default" {
		_, err := c.CreateEventBus(ctx, &eventbridge.CreateEventBusInput{Name: aws.String(bus)})
		var exists *ebtypes.ResourceAlreadyExistsException
		if err != nil && !errors.As(err, &exists) {
			return fmt.Errorf("create event bus %s: %w", bus, err)
		}
	}
	if _, err := c.PutRule(ctx, &eventbridge.PutRuleInput{
		Name: aws.String(rule), EventBusName: aws.String(bus), EventPattern: aws.String(pattern), State: ebtypes.RuleStateEnabled,
	}); err != nil {
		return fmt.Errorf("put rule %s on %s: %w", rule, bus, err)
	}
	out, err := c.PutTargets(ctx, &eventbridge.PutTargetsInput{
		Rule: aws.String(rule), EventBusName: aws.String(bus),
		Targets: []ebtypes.Target{{Id: aws.String("sqs-" + rule), Arn: aws.String(queueARN)}},
	})
	if err != nil {
		return fmt.Errorf("put target of rule %s: %w", rule, err)
	}
	if out.FailedEntryCount > 0 {
		return fmt.Errorf("put target of rule %s: %d failed entries", rule, out.FailedEntryCount)
	}
	return nil
}

// Servers starts kumo lazily, once per test binary, for the tests that
// need it; Stop it in TestMain. A test that needs it when it cannot be
// found fails with how to get it, never skips.
type Servers struct {
	kumo testutil.Lazy[*Kumo]
}

// Kumo returns the emulator, starting it on first use.
func (s *Servers) Kumo(t testing.TB) *Kumo {
	t.Helper()
	return s.kumo.Get(t, "the kumo AWS emulator", time.Minute, Start)
}

// Stop stops the emulator if it was started.
func (s *Servers) Stop() { s.kumo.Value().Stop() }

// Main runs the tests of m the way TestMain of a package whose code
// takes its credentials from the SDK's default chain (as rekeyd does)
// should: that chain reads fixed test credentials (the emulator accepts
// any) and nothing of the machine's own AWS setup; servers (may be nil)
// are stopped at the end. It returns m.Run's exit code:
//
//	func TestMain(m *testing.M) { os.Exit(kumotest.Main(m, &servers)) }
func Main(m *testing.M, servers *Servers) int {
	dir, err := os.MkdirTemp("", "kumotest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, k := range []string{"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"} {
		_ = os.Unsetenv(k)
	}
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDKUMOTEST", "AWS_SECRET_ACCESS_KEY": "kumotest-secret",
		"AWS_CONFIG_FILE": empty, "AWS_SHARED_CREDENTIALS_FILE": empty, "AWS_EC2_METADATA_DISABLED": "true",
	} {
		_ = os.Setenv(k, v)
	}
	code := m.Run()
	if servers != nil {
		servers.Stop()
	}
	return code
}
