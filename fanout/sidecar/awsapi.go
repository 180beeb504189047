package sidecar

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// The Secrets Manager JSON 1.1 API: POST / with X-Amz-Target
// secretsmanager.<Operation>, a JSON body, SigV4 signed with the local key
// pair. The signature is checked by signing the request again, from the
// headers it names and the body's hash, with aws-sdk-go-v2's signer, and
// comparing in constant time; the date must be within MaxSkew of now.

const (
	amzJSON       = "application/x-amz-json-1.1"
	targetPrefix  = "secretsmanager."
	sigAlgorithm  = "AWS4-HMAC-SHA256"
	amzDateFormat = "20060102T150405Z"
	maxAPIBody    = 1 << 20
	// maxBatch is BatchGetSecretValue's limit on SecretIdList.
	maxBatch = 20
)

func writeAWSJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", amzJSON)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeAWSErr(w http.ResponseWriter, e *awsErr) {
	w.Header().Set("X-Amzn-ErrorType", e.typ)
	writeAWSJSON(w, e.status, map[string]string{"__type": e.typ, "message": e.msg})
}

func (s *Server) awsAPIHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if forwarded(r) {
			writeAWSErr(w, &awsErr{http.StatusForbidden, awsDenied, "Requests through a proxy (X-Forwarded-For) are refused."})
			return
		}
		if r.Method != http.MethodPost || r.URL.Path != "/" {
			writeAWSErr(w, &awsErr{http.StatusNotFound, "UnknownOperationException", "Only POST / is served."})
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxAPIBody+1))
		if err != nil || len(body) > maxAPIBody {
			writeAWSErr(w, &awsErr{http.StatusBadRequest, "SerializationException", "The request body could not be read or is too large."})
			return
		}
		if e := s.verifySigV4(r, body, time.Now()); e != nil {
			writeAWSErr(w, e)
			return
		}
		op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), targetPrefix)
		if !ok {
			writeAWSErr(w, &awsErr{http.StatusBadRequest, "UnknownOperationException", "X-Amz-Target must be secretsmanager.<Operation>."})
			return
		}
		switch op {
		case "GetSecretValue":
			s.apiGetSecretValue(w, r, body)
		case "BatchGetSecretValue":
			s.apiBatchGet(w, r, body)
		case "DescribeSecret":
			s.apiDescribe(w, r, body)
		default:
			writeAWSErr(w, &awsErr{http.StatusBadRequest, "UnknownOperationException", "rekey-agent serves GetSecretValue, BatchGetSecretValue and DescribeSecret only."})
		}
	})
}

func decodeInput(body []byte, v any) *awsErr {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return &awsErr{http.StatusBadRequest, "SerializationException", "The request body is not the operation's JSON input."}
	}
	return nil
}

// decodeSecretID decodes an input whose SecretId (at id) is required, and
// writes the error when it fails.
func decodeSecretID(w http.ResponseWriter, body []byte, in any, id *string) bool {
	if e := decodeInput(body, in); e != nil {
		writeAWSErr(w, e)
		return false
	}
	if *id == "" {
		writeAWSErr(w, &awsErr{http.StatusBadRequest, awsInvalidParam, "SecretId is required."})
		return false
	}
	return true
}

func (s *Server) apiGetSecretValue(w http.ResponseWriter, r *http.Request, body []byte) {
	var in struct{ SecretId, VersionId, VersionStage string }
	if !decodeSecretID(w, body, &in, &in.SecretId) {
		return
	}
	out, e := s.awsRead(r, in.SecretId, in.VersionId, in.VersionStage)
	if e != nil {
		writeAWSErr(w, e)
		return
	}
	writeAWSJSON(w, http.StatusOK, out)
}

// batchError is one entry of BatchGetSecretValue's Errors.
type batchError struct {
	SecretID  string `json:"SecretId"`
	ErrorCode string `json:"ErrorCode"`
	Message   string `json:"Message"`
}

// apiBatchGet reads each SecretId of SecretIdList. A revoked tenant fails
// the whole call (AccessDeniedException), as the one read would.
func (s *Server) apiBatchGet(w http.ResponseWriter, r *http.Request, body []byte) {
	var in struct {
		SecretIdList []string
		Filters      []json.RawMessage
		NextToken    string
		MaxResults   int
	}
	if e := decodeInput(body, &in); e != nil {
		writeAWSErr(w, e)
		return
	}
	if len(in.Filters) > 0 || in.NextToken != "" {
		writeAWSErr(w, &awsErr{http.StatusBadRequest, awsValidation, "rekey-agent serves SecretIdList only (no Filters, no NextToken)."})
		return
	}
	if len(in.SecretIdList) == 0 || len(in.SecretIdList) > maxBatch {
		writeAWSErr(w, &awsErr{http.StatusBadRequest, awsInvalidParam, fmt.Sprintf("SecretIdList must hold 1 to %d ids.", maxBatch)})
		return
	}
	out := struct {
		SecretValues []GetSecretValueOutput `json:"SecretValues"`
		Errors       []batchError           `json:"Errors"`
	}{SecretValues: []GetSecretValueOutput{}, Errors: []batchError{}}
	for _, id := range in.SecretIdList {
		v, e := s.awsRead(r, id, "", "")
		switch {
		case e == nil:
			out.SecretValues = append(out.SecretValues, v)
		case e.typ == awsDenied:
			writeAWSErr(w, e)
			return
		default:
			out.Errors = append(out.Errors, batchError{SecretID: clip(id), ErrorCode: e.typ, Message: e.msg})
		}
	}
	writeAWSJSON(w, http.StatusOK, out)
}

func (s *Server) apiDescribe(w http.ResponseWriter, r *http.Request, body []byte) {
	var in struct{ SecretId string }
	if !decodeSecretID(w, body, &in, &in.SecretId) {
		return
	}
	v, e := s.awsRead(r, in.SecretId, "", "")
	if e != nil {
		writeAWSErr(w, e)
		return
	}
	writeAWSJSON(w, http.StatusOK, map[string]any{
		"ARN": v.ARN, "Name": v.Name, "LastChangedDate": v.CreatedDate,
		"VersionIdsToStages": map[string][]string{v.VersionID: {AWSCurrent}},
		"Tags":               []map[string]string{{"Key": "TenantId", "Value": s.cfg.Tenant}},
	})
}

// sigV4Auth is a parsed Authorization header.
type sigV4Auth struct {
	accessKey, date, region, service string
	signedHeaders                    string
	signature                        string
}

func parseSigV4(h string) (sigV4Auth, error) {
	alg, rest, ok := strings.Cut(h, " ")
	if !ok || alg != sigAlgorithm {
		return sigV4Auth{}, errors.New("not " + sigAlgorithm)
	}
	var a sigV4Auth
	var cred string
	for _, part := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return sigV4Auth{}, errors.New("malformed Authorization")
		}
		switch k {
		case "Credential":
			cred = v
		case "SignedHeaders":
			a.signedHeaders = v
		case "Signature":
			a.signature = v
		}
	}
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" || a.signedHeaders == "" || len(a.signature) != 64 {
		return sigV4Auth{}, errors.New("malformed Authorization")
	}
	a.accessKey, a.date, a.region, a.service = scope[0], scope[1], scope[2], scope[3]
	return a, nil
}

var errSig = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."

// verifySigV4 checks r's signature against the local key pair.
func (s *Server) verifySigV4(r *http.Request, body []byte, now time.Time) *awsErr {
	authz := r.Header.Get("Authorization")
	if authz == "" {
		return &awsErr{http.StatusBadRequest, "MissingAuthenticationTokenException", "Request is missing Authentication Token"}
	}
	a, err := parseSigV4(authz)
	if err != nil {
		return &awsErr{http.StatusBadRequest, "IncompleteSignatureException", "Authorization header requires a " + sigAlgorithm + " Credential, SignedHeaders and Signature."}
	}
	if !tokenEqual(a.accessKey, s.cfg.AWSAccessKeyID) || r.Header.Get("X-Amz-Security-Token") != "" {
		return &awsErr{http.StatusForbidden, "UnrecognizedClientException", "The security token included in the request is invalid."}
	}
	if a.service != "secretsmanager" {
		return &awsErr{http.StatusForbidden, "InvalidSignatureException", "Credential should be scoped to correct service: 'secretsmanager'."}
	}
	t, err := time.Parse(amzDateFormat, r.Header.Get("X-Amz-Date"))
	if err != nil {
		return &awsErr{http.StatusBadRequest, "IncompleteSignatureException", "X-Amz-Date is required (" + amzDateFormat + ")."}
	}
	if d := now.Sub(t); d > s.cfg.MaxSkew || d < -s.cfg.MaxSkew {
		return &awsErr{http.StatusForbidden, "InvalidSignatureException", fmt.Sprintf("Signature expired: %s is not within %s of the sidecar's time %s.", t.Format(amzDateFormat), s.cfg.MaxSkew, now.UTC().Format(amzDateFormat))}
	}
	if a.date != t.Format("20060102") {
		return &awsErr{http.StatusForbidden, "InvalidSignatureException", "Credential date does not match X-Amz-Date."}
	}
	signed := strings.Split(a.signedHeaders, ";")
	for _, need := range []string{"host", "x-amz-date", "x-amz-target"} {
		if !slices.Contains(signed, need) {
			return &awsErr{http.StatusForbidden, "InvalidSignatureException", "SignedHeaders must include host, x-amz-date and x-amz-target."}
		}
	}
	sum := sha256.Sum256(body)
	payloadHash := hex.EncodeToString(sum[:])
	if h := r.Header.Get("X-Amz-Content-Sha256"); h != "" && h != payloadHash {
		return &awsErr{http.StatusForbidden, "InvalidSignatureException", errSig}
	}

	// The same request, carrying only the headers the client signed.
	re, err := http.NewRequestWithContext(r.Context(), r.Method, "http://placeholder/", nil)
	if err != nil {
		return &awsErr{http.StatusInternalServerError, awsInternal, "internal error"}
	}
	u := *r.URL
	re.URL = &u
	re.URL.Scheme, re.URL.Host = "http", r.Host
	re.Host = r.Host
	for _, h := range signed {
		switch h {
		case "host":
		case "content-length":
			re.ContentLength = r.ContentLength
		default:
			vs := r.Header.Values(h)
			if len(vs) == 0 {
				return &awsErr{http.StatusForbidden, "InvalidSignatureException", errSig}
			}
			re.Header[http.CanonicalHeaderKey(h)] = vs
		}
	}
	creds := aws.Credentials{AccessKeyID: s.cfg.AWSAccessKeyID, SecretAccessKey: s.cfg.AWSSecretAccessKey}
	if err := s.signer.SignHTTP(r.Context(), creds, re, payloadHash, a.service, a.region, t); err != nil {
		return &awsErr{http.StatusInternalServerError, awsInternal, "internal error"}
	}
	want, err := parseSigV4(re.Header.Get("Authorization"))
	if err != nil || want.signedHeaders != a.signedHeaders ||
		!hmac.Equal([]byte(want.signature), []byte(a.signature)) {
		return &awsErr{http.StatusForbidden, "InvalidSignatureException", errSig}
	}
	return nil
}
