package sidecar

import (
	"encoding/json"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/rekey-dev/rekey/fanout/agent"
)

// AWSCurrent is the only staging label the sidecar serves: it holds the
// current version of each secret.
const AWSCurrent = "AWSCURRENT"

// Secrets Manager error types the sidecar answers with.
const (
	awsNotFound     = "ResourceNotFoundException"
	awsDenied       = "AccessDeniedException"
	awsInvalidParam = "InvalidParameterException"
	awsValidation   = "ValidationException"
	awsInternal     = "InternalServiceError"
	msgNotFound     = "Secrets Manager can't find the specified secret."
	msgDenied       = "The tenant's access to its secrets is revoked."
)

// GetSecretValueOutput is the JSON shape of Secrets Manager's
// GetSecretValue reply (and of the AWS agent's).
type GetSecretValueOutput struct {
	ARN           string   `json:"ARN"`
	Name          string   `json:"Name"`
	VersionID     string   `json:"VersionId"`
	SecretString  *string  `json:"SecretString,omitempty"`
	SecretBinary  []byte   `json:"SecretBinary,omitempty"`
	VersionStages []string `json:"VersionStages"`
	CreatedDate   float64  `json:"CreatedDate"`
}

func epoch(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }

func (s *Server) gsvOutput(secret string, sec agent.Secret) GetSecretValueOutput {
	out := GetSecretValueOutput{
		ARN: s.names.awsARN(secret), Name: s.names.awsName(secret), VersionID: sec.Version,
		VersionStages: []string{AWSCurrent}, CreatedDate: epoch(sec.FetchedAt),
	}
	if utf8.Valid(sec.Value) {
		v := string(sec.Value)
		out.SecretString = &v
	} else {
		out.SecretBinary = sec.Value
	}
	return out
}

// awsErr is a Secrets Manager error: HTTP status, __type and message.
type awsErr struct {
	status   int
	typ, msg string
}

// awsRead reads the secret a SecretId names, at the version and stage
// asked for (empty: current). Only the current version is held: another
// version id or stage is not found, as AWS says of a version it does not
// have.
func (s *Server) awsRead(r *http.Request, secretID, versionID, stage string) (GetSecretValueOutput, *awsErr) {
	secret, ok := s.names.fromAWS(secretID)
	if !ok {
		return GetSecretValueOutput{}, &awsErr{http.StatusBadRequest, awsNotFound, msgNotFound}
	}
	if stage != "" && stage != AWSCurrent {
		return GetSecretValueOutput{}, &awsErr{http.StatusBadRequest, awsNotFound,
			"Secrets Manager can't find the specified secret value for staging label: " + clip(stage)}
	}
	sec, err := s.get(r, secret)
	switch classify(err) {
	case outOK:
	case outNotFound:
		return GetSecretValueOutput{}, &awsErr{http.StatusBadRequest, awsNotFound, msgNotFound}
	case outDenied:
		return GetSecretValueOutput{}, &awsErr{http.StatusBadRequest, awsDenied, msgDenied}
	default:
		s.log.Warn("read failed", "secret", secret, "error", err)
		return GetSecretValueOutput{}, &awsErr{http.StatusInternalServerError, awsInternal, "The secret could not be read; try again."}
	}
	if versionID != "" && versionID != sec.Version {
		return GetSecretValueOutput{}, &awsErr{http.StatusBadRequest, awsNotFound,
			"Secrets Manager can't find the specified secret value for VersionId: " + clip(versionID)}
	}
	return s.gsvOutput(secret, sec), nil
}

// clip bounds an echoed parameter.
func clip(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}
