package awssmtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
)

// RotationRequest is what a Lambda gets for one rotation, as a rotation
// Lambda gets it from Secrets Manager: the secret's ARN and the token,
// which is the id of the version to make, plus a client for the emulator
// and the emulator itself (for faults and assertions).
type RotationRequest struct {
	Server   *Server
	Client   *secretsmanager.Client
	SecretID string
	Token    string
}

// Lambda is an in-process rotation function. RotateSecret runs it in a
// goroutine after answering, as Secrets Manager invokes the rotation Lambda
// asynchronously; it does the createSecret, setSecret, testSecret and
// finishSecret steps itself through req.Client, or fails. Its context ends
// when the emulator is closed.
type Lambda func(ctx context.Context, req RotationRequest) error

// RotationEvent reports the end of a rotation, as the RotationSucceeded
// and RotationFailed events Secrets Manager sends to EventBridge.
type RotationEvent struct {
	ARN, Name string
	VersionID string
	// Event is "RotationSucceeded" or "RotationFailed".
	Event string
	// Error is the Lambda's error message of a failed rotation.
	Error string
	Time  time.Time
}

// Rotation event names.
const (
	EventRotationSucceeded = "RotationSucceeded"
	EventRotationFailed    = "RotationFailed"
)

// SetLambda sets the rotation function of every secret (DefaultLambda
// unless set).
func (s *Server) SetLambda(fn Lambda) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lambda = fn
}

// OnRotation calls fn at the end of every rotation (in the rotation's
// goroutine), as an EventBridge rule would deliver the event.
func (s *Server) OnRotation(fn func(RotationEvent)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onRotate = fn
}

// WaitRotations waits until no rotation is running.
func (s *Server) WaitRotations() { s.rotations.Wait() }

// DefaultLambda rotates like the Secrets Manager rotation template for a
// secret without a downstream system: createSecret puts a random value
// labelled AWSPENDING with the token as its version id (unless that is
// done), testSecret reads it back, finishSecret moves AWSCURRENT to it.
func DefaultLambda(ctx context.Context, r RotationRequest) error {
	if err := CreateStep(ctx, r); err != nil {
		return err
	}
	if _, err := r.Client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{
		SecretId: &r.SecretID, VersionId: &r.Token, VersionStage: aws.String(StagePending),
	}); err != nil {
		return fmt.Errorf("testSecret: %w", err)
	}
	return FinishStep(ctx, r)
}

// FailingLambda runs the createSecret step, then fails with message, as a
// rotation whose setSecret step the downstream system refused.
func FailingLambda(message string) Lambda {
	return func(ctx context.Context, r RotationRequest) error {
		if err := CreateStep(ctx, r); err != nil {
			return err
		}
		return errors.New(message)
	}
}

// CreateStep is the template's createSecret step: a new random value
// labelled AWSPENDING, with the token as its version id, unless the token's
// version exists already.
func CreateStep(ctx context.Context, r RotationRequest) error {
	if _, err := r.Client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &r.SecretID}); err != nil {
		return fmt.Errorf("createSecret: read AWSCURRENT: %w", err)
	}
	_, err := r.Client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{
		SecretId: &r.SecretID, VersionId: &r.Token, VersionStage: aws.String(StagePending),
	})
	var nf *types.ResourceNotFoundException
	if !errors.As(err, &nf) {
		if err != nil {
			return fmt.Errorf("createSecret: read AWSPENDING: %w", err)
		}
		return nil
	}
	if _, err := r.Client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
		SecretId: &r.SecretID, ClientRequestToken: &r.Token, SecretString: aws.String(rand.Text()),
		VersionStages: []string{StagePending},
	}); err != nil {
		return fmt.Errorf("createSecret: %w", err)
	}
	return nil
}

// FinishStep is the template's finishSecret step: AWSCURRENT moves to the
// token's version, unless it is there already.
func FinishStep(ctx context.Context, r RotationRequest) error {
	d, err := r.Client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: &r.SecretID})
	if err != nil {
		return fmt.Errorf("finishSecret: %w", err)
	}
	var current *string
	for id, stages := range d.VersionIdsToStages {
		if slices.Contains(stages, StageCurrent) {
			if id == r.Token {
				return nil
			}
			current = aws.String(id)
		}
	}
	if _, err := r.Client.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
		SecretId: &r.SecretID, VersionStage: aws.String(StageCurrent), MoveToVersionId: &r.Token, RemoveFromVersionId: current,
	}); err != nil {
		return fmt.Errorf("finishSecret: %w", err)
	}
	return nil
}

func opRotateSecret(s *Server, body []byte) (any, *apiError) {
	in := &struct {
		secretID
		ClientRequestToken *string
		RotationLambdaARN  *string
		RotateImmediately  *bool
		RotationRules      *struct{ AutomaticallyAfterDays *int64 }
	}{}
	check := func() *apiError { return checkToken(in.ClientRequestToken) }
	return onSecret(s, body, in, false, check, func(sec *secret) (any, *apiError) {
		if in.RotationLambdaARN != nil {
			sec.rotationLambda = *in.RotationLambdaARN
		}
		if sec.rotationLambda == "" {
			return nil, errorf(CodeInvalidRequest, "No Lambda rotation function ARN is associated with this secret.")
		}
		if in.RotationRules != nil {
			sec.rotationDays = in.RotationRules.AutomaticallyAfterDays
		}
		sec.rotationEnabled = true
		type output struct {
			secretRef
			VersionId string `json:",omitempty"`
		}
		if in.RotateImmediately != nil && !*in.RotateImmediately {
			return output{secretRef: sec.ref()}, nil
		}
		tok := deref(in.ClientRequestToken)
		if tok == "" {
			tok = newUUID()
		}
		if sec.rotating == tok || sec.versions[tok] != nil {
			return output{sec.ref(), tok}, nil // the same request again
		}
		if p := sec.holder(StagePending); sec.rotating != "" || p != nil && !p.has(StageCurrent) {
			return nil, errorf(CodeInvalidRequest, "A previous rotation isn't complete. That rotation will be reattempted.")
		}
		if s.ctx.Err() != nil {
			return nil, errorf(CodeInternal, "the emulator is closing")
		}
		sec.rotating = tok
		s.rotations.Add(1)
		go s.rotate(sec.arn, sec.name, tok, s.lambda)
		return output{sec.ref(), tok}, nil
	})
}

// rotate runs the Lambda for one rotation and reports its end.
func (s *Server) rotate(arn, name, tok string, fn Lambda) {
	defer s.rotations.Done()
	err := fn(s.ctx, RotationRequest{Server: s, Client: s.newClient(), SecretID: arn, Token: tok})
	now := time.Now()
	ev := RotationEvent{ARN: arn, Name: name, VersionID: tok, Event: EventRotationSucceeded, Time: now}
	if err != nil {
		ev.Event, ev.Error = EventRotationFailed, err.Error()
	}
	s.mu.Lock()
	if sec := s.secrets[name]; sec != nil && sec.arn == arn {
		sec.rotating = ""
		if err == nil {
			sec.rotated = now
			// Secrets Manager takes AWSPENDING off once the version is current.
			if p := sec.holder(StagePending); p != nil && p.has(StageCurrent) {
				sec.detach(StagePending, p)
			}
		}
	}
	notify := s.onRotate
	s.mu.Unlock()
	if notify != nil {
		notify(ev)
	}
}
