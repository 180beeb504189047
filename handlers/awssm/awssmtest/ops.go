package awssmtest

import (
	"bytes"
	"crypto/rand"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// secret is one secret and its versions.
type secret struct {
	name, arn       string
	description     string
	tags            []tag // in the order they were added
	versions        map[string]*version
	seq             int // creation counter of versions
	created         time.Time
	changed         time.Time
	rotated         time.Time
	deleted         time.Time // when DeleteSecret scheduled the deletion; zero if not
	rotationLambda  string
	rotationEnabled bool
	rotationDays    *int64
	rotating        string // the token of the rotation in progress
}

type version struct {
	id      string
	str     *string
	bin     []byte
	stages  []string
	created time.Time
	seq     int
}

type tag struct {
	Key   string `json:"Key"`
	Value string `json:"Value"`
}

func (v *version) has(label string) bool { return slices.Contains(v.stages, label) }

func (v *version) sameValue(str *string, bin []byte) bool {
	if (v.str == nil) != (str == nil) {
		return false
	}
	if str != nil {
		return *v.str == *str
	}
	return bytes.Equal(v.bin, bin)
}

// holder is the version that has label, nil if none has.
func (sec *secret) holder(label string) *version {
	for _, v := range sec.versions {
		if v.has(label) {
			return v
		}
	}
	return nil
}

// attach puts label on v, taking it off the version that had it; moving
// AWSCURRENT puts AWSPREVIOUS on the version it came from.
func (sec *secret) attach(label string, v *version) {
	old := sec.holder(label)
	if old == v {
		return
	}
	if old != nil {
		old.stages = slices.DeleteFunc(old.stages, func(l string) bool { return l == label })
	}
	v.stages = append(v.stages, label)
	if label == StageCurrent && old != nil {
		sec.attach(StagePrevious, old)
	}
}

func (sec *secret) detach(label string, v *version) {
	v.stages = slices.DeleteFunc(v.stages, func(l string) bool { return l == label })
}

// prune drops the oldest versions without a label beyond KeepDeprecated.
func (sec *secret) prune() {
	var deprecated []*version
	for _, v := range sec.versions {
		if len(v.stages) == 0 {
			deprecated = append(deprecated, v)
		}
	}
	if len(deprecated) <= KeepDeprecated {
		return
	}
	sort.Slice(deprecated, func(i, j int) bool { return deprecated[i].seq < deprecated[j].seq })
	for _, v := range deprecated[:len(deprecated)-KeepDeprecated] {
		delete(sec.versions, v.id)
	}
}

func (sec *secret) versionsToStages() map[string][]string {
	out := map[string][]string{}
	for id, v := range sec.versions {
		if len(v.stages) > 0 {
			out[id] = slices.Clone(v.stages)
		}
	}
	return out
}

// sortedVersions returns the versions, newest first.
func (sec *secret) sortedVersions() []*version {
	out := make([]*version, 0, len(sec.versions))
	for _, v := range sec.versions {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq > out[j].seq })
	return out
}

// addVersion stores a new version with the labels stages (the first
// version of a secret always gets AWSCURRENT too).
func (sec *secret) addVersion(id string, str *string, bin []byte, stages []string, now time.Time) *version {
	first := len(sec.versions) == 0
	sec.seq++
	v := &version{id: id, str: str, bin: bin, created: now, seq: sec.seq}
	sec.versions[id] = v
	if first && !slices.Contains(stages, StageCurrent) {
		stages = append([]string{StageCurrent}, stages...)
	}
	for _, l := range stages {
		sec.attach(l, v)
	}
	sec.changed = now
	sec.prune()
	return v
}

// find returns the secret named by a name or its full ARN.
func (s *Server) find(id string) *secret {
	if sec, ok := s.secrets[id]; ok {
		return sec
	}
	if strings.HasPrefix(id, "arn:") {
		for _, sec := range s.secrets {
			if sec.arn == id {
				return sec
			}
		}
	}
	return nil
}

// get returns the secret for an operation. A secret scheduled for
// deletion is refused unless allowDeleted.
func (s *Server) get(id *string, allowDeleted bool) (*secret, *apiError) {
	if id == nil || *id == "" {
		return nil, errorf(CodeValidation, "1 validation error detected: Value null at 'secretId' failed to satisfy constraint: Member must not be null")
	}
	sec := s.find(*id)
	if sec == nil {
		return nil, errorf(CodeResourceNotFound, "Secrets Manager can't find the specified secret.")
	}
	if !allowDeleted && !sec.deleted.IsZero() {
		return nil, errorf(CodeInvalidRequest, "You can't perform this operation on the secret because it was marked for deletion.")
	}
	return sec, nil
}

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9/_+=.@-]{1,512}$`)
	tagKeRE = regexp.MustCompile(`^[\p{L}\p{Z}\p{N}_.:/=+\-@]{1,128}$`)
)

func checkToken(tok *string) *apiError {
	if tok != nil && (len(*tok) < 32 || len(*tok) > 64) {
		return errorf(CodeValidation, "1 validation error detected: Value at 'clientRequestToken' failed to satisfy constraint: Member must have length between 32 and 64")
	}
	return nil
}

func checkValue(str *string, bin []byte, required bool) *apiError {
	switch {
	case str != nil && bin != nil:
		return errorf(CodeInvalidParameter, "You can't specify both a binary secret value and a string secret value in the same secret.")
	case required && str == nil && bin == nil:
		return errorf(CodeInvalidParameter, "You must provide either SecretString or SecretBinary.")
	case str != nil && len(*str) > 65536, len(bin) > 65536:
		return errorf(CodeInvalidParameter, "The secret value exceeds the maximum size of 65536 bytes.")
	}
	return nil
}

func checkLabels(labels []string) *apiError {
	if len(labels) > 20 {
		return errorf(CodeLimitExceeded, "A version can have at most 20 staging labels.")
	}
	for _, l := range labels {
		if l == "" || len(l) > 256 {
			return errorf(CodeValidation, "1 validation error detected: a staging label must have length between 1 and 256")
		}
	}
	return nil
}

// firstError returns the first non-nil error.
func firstError(errs ...*apiError) *apiError {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func checkTags(tags []tagIn) ([]tag, *apiError) {
	out := make([]tag, 0, len(tags))
	for _, t := range tags {
		if t.Key == nil || !tagKeRE.MatchString(*t.Key) {
			return nil, errorf(CodeValidation, "1 validation error detected: a tag key must have length between 1 and 128 and use allowed characters")
		}
		if strings.HasPrefix(strings.ToLower(*t.Key), "aws:") {
			return nil, errorf(CodeInvalidParameter, "Tag keys starting with aws: are reserved.")
		}
		v := ""
		if t.Value != nil {
			v = *t.Value
		}
		if len(v) > 256 {
			return nil, errorf(CodeValidation, "1 validation error detected: a tag value must have length at most 256")
		}
		out = append(out, tag{Key: *t.Key, Value: v})
	}
	return out, nil
}

func (sec *secret) setTags(tags []tag) *apiError {
	for _, t := range tags {
		i := slices.IndexFunc(sec.tags, func(o tag) bool { return o.Key == t.Key })
		if i >= 0 {
			sec.tags[i].Value = t.Value
		} else {
			sec.tags = append(sec.tags, t)
		}
	}
	if len(sec.tags) > 50 {
		return errorf(CodeLimitExceeded, "A secret can have at most 50 tags.")
	}
	return nil
}

// randomSuffix is the 6 characters Secrets Manager appends to a name in
// an ARN.
func randomSuffix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hex = "0123456789abcdef"
	var sb strings.Builder
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			sb.WriteByte('-')
		}
		sb.WriteByte(hex[c>>4])
		sb.WriteByte(hex[c&0xf])
	}
	return sb.String()
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// Inputs and outputs of the operations, with the members' wire names.

type tagIn struct {
	Key   *string `json:"Key"`
	Value *string `json:"Value"`
}

type secretRef struct {
	ARN  string `json:"ARN"`
	Name string `json:"Name"`
}

func (sec *secret) ref() secretRef { return secretRef{ARN: sec.arn, Name: sec.name} }

// secretInfo is what DescribeSecret and ListSecrets both tell of a secret.
type secretInfo struct {
	secretRef
	Description       string `json:",omitempty"`
	Tags              []tag  `json:",omitempty"`
	CreatedDate       *epoch `json:",omitempty"`
	LastChangedDate   *epoch `json:",omitempty"`
	LastRotatedDate   *epoch `json:",omitempty"`
	DeletedDate       *epoch `json:",omitempty"`
	RotationEnabled   bool   `json:",omitempty"`
	RotationLambdaARN string `json:",omitempty"`
}

func (sec *secret) info() secretInfo {
	return secretInfo{
		secretRef: sec.ref(), Description: sec.description, Tags: slices.Clone(sec.tags),
		CreatedDate: ts(sec.created), LastChangedDate: ts(sec.changed), LastRotatedDate: ts(sec.rotated), DeletedDate: ts(sec.deleted),
		RotationEnabled: sec.rotationEnabled, RotationLambdaARN: sec.rotationLambda,
	}
}

func opCreateSecret(s *Server, body []byte) (any, *apiError) {
	var in struct {
		Name               *string
		ClientRequestToken *string
		Description        *string
		SecretString       *string
		SecretBinary       []byte
		Tags               []tagIn
	}
	if err := decode(body, &in); err != nil {
		return nil, err
	}
	if in.Name == nil || !nameRE.MatchString(*in.Name) {
		return nil, errorf(CodeValidation, "Invalid name. Must be a valid name containing alphanumeric characters, or any of the following: -/_+=.@!")
	}
	if err := checkToken(in.ClientRequestToken); err != nil {
		return nil, err
	}
	if err := checkValue(in.SecretString, in.SecretBinary, false); err != nil {
		return nil, err
	}
	tags, err := checkTags(in.Tags)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sec := s.secrets[*in.Name]; sec != nil {
		if !sec.deleted.IsZero() {
			return nil, errorf(CodeInvalidRequest, "You can't create this secret because a secret with this name is already scheduled for deletion.")
		}
		// The same request again (same token, same value) is ignored.
		if tok := deref(in.ClientRequestToken); tok != "" {
			if v := sec.versions[tok]; v != nil && v.sameValue(in.SecretString, in.SecretBinary) {
				return struct {
					secretRef
					VersionId string
				}{sec.ref(), v.id}, nil
			}
		}
		return nil, errorf(CodeResourceExists, "The operation failed because the secret %s already exists.", *in.Name)
	}
	now := time.Now()
	sec := &secret{
		name: *in.Name, arn: "arn:aws:secretsmanager:" + Region + ":" + s.account + ":secret:" + *in.Name + "-" + randomSuffix(),
		description: deref(in.Description), versions: map[string]*version{}, created: now, changed: now,
	}
	if err := sec.setTags(tags); err != nil {
		return nil, err
	}
	out := struct {
		secretRef
		VersionId string `json:",omitempty"`
	}{secretRef: sec.ref()}
	if in.SecretString != nil || in.SecretBinary != nil {
		id := deref(in.ClientRequestToken)
		if id == "" {
			id = newUUID()
		}
		sec.addVersion(id, in.SecretString, in.SecretBinary, []string{StageCurrent}, now)
		out.VersionId = id
	}
	s.secrets[sec.name] = sec
	return out, nil
}

// secretID is the member every input of an operation on one secret has.
type secretID struct{ SecretId *string }

func (i *secretID) id() *string { return i.SecretId }

// onSecret runs an operation on one secret: it decodes body into in,
// checks the input with check (nil: none), then runs fn on the secret
// under the lock. A secret scheduled for deletion is refused unless
// allowDeleted.
func onSecret(s *Server, body []byte, in interface{ id() *string }, allowDeleted bool, check func() *apiError, fn func(sec *secret) (any, *apiError)) (any, *apiError) {
	if err := decode(body, in); err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.get(in.id(), allowDeleted)
	if err != nil {
		return nil, err
	}
	return fn(sec)
}

func opDescribeSecret(s *Server, body []byte) (any, *apiError) {
	in := &struct{ secretID }{}
	return onSecret(s, body, in, true, nil, func(sec *secret) (any, *apiError) {
		type rules struct {
			AutomaticallyAfterDays *int64 `json:",omitempty"`
		}
		out := struct {
			secretInfo
			VersionIdsToStages map[string][]string `json:",omitempty"`
			RotationRules      *rules              `json:",omitempty"`
		}{secretInfo: sec.info(), VersionIdsToStages: sec.versionsToStages()}
		if sec.rotationDays != nil {
			out.RotationRules = &rules{AutomaticallyAfterDays: sec.rotationDays}
		}
		return out, nil
	})
}

func opGetSecretValue(s *Server, body []byte) (any, *apiError) {
	in := &struct {
		secretID
		VersionId    *string
		VersionStage *string
	}{}
	return onSecret(s, body, in, false, nil, func(sec *secret) (any, *apiError) {
		var v *version
		switch {
		case in.VersionId != nil:
			v = sec.versions[*in.VersionId]
			if v == nil {
				return nil, errorf(CodeResourceNotFound, "Secrets Manager can't find the specified secret value for VersionId: %s", *in.VersionId)
			}
			if in.VersionStage != nil && !v.has(*in.VersionStage) {
				return nil, errorf(CodeResourceNotFound, "Secrets Manager can't find the specified secret value for VersionId: %s and staging label: %s", *in.VersionId, *in.VersionStage)
			}
		default:
			stage := StageCurrent
			if in.VersionStage != nil {
				stage = *in.VersionStage
			}
			v = sec.holder(stage)
			if v == nil {
				return nil, errorf(CodeResourceNotFound, "Secrets Manager can't find the specified secret value for staging label: %s", stage)
			}
		}
		return struct {
			secretRef
			VersionId     string
			VersionStages []string
			SecretString  *string `json:",omitempty"`
			SecretBinary  []byte  `json:",omitempty"`
			CreatedDate   *epoch
		}{sec.ref(), v.id, slices.Clone(v.stages), v.str, v.bin, ts(v.created)}, nil
	})
}

func opPutSecretValue(s *Server, body []byte) (any, *apiError) {
	in := &struct {
		secretID
		ClientRequestToken *string
		SecretString       *string
		SecretBinary       []byte
		VersionStages      []string
	}{}
	check := func() *apiError {
		if in.VersionStages == nil {
			in.VersionStages = []string{StageCurrent}
		}
		return firstError(checkToken(in.ClientRequestToken), checkValue(in.SecretString, in.SecretBinary, true), checkLabels(in.VersionStages))
	}
	return onSecret(s, body, in, false, check, func(sec *secret) (any, *apiError) {
		id := deref(in.ClientRequestToken)
		if id == "" {
			id = newUUID()
		}
		v := sec.versions[id]
		switch {
		case v == nil:
			v = sec.addVersion(id, in.SecretString, in.SecretBinary, in.VersionStages, time.Now())
		case !v.sameValue(in.SecretString, in.SecretBinary):
			return nil, errorf(CodeResourceExists, "You can't modify an existing version, you can only create a new version.")
		}
		return struct {
			secretRef
			VersionId     string
			VersionStages []string
		}{sec.ref(), v.id, slices.Clone(v.stages)}, nil
	})
}

func opUpdateSecretVersionStage(s *Server, body []byte) (any, *apiError) {
	in := &struct {
		secretID
		VersionStage        *string
		MoveToVersionId     *string
		RemoveFromVersionId *string
	}{}
	check := func() *apiError {
		switch {
		case in.VersionStage == nil:
			return errorf(CodeValidation, "1 validation error detected: Value null at 'versionStage' failed to satisfy constraint: Member must not be null")
		case in.MoveToVersionId == nil && in.RemoveFromVersionId == nil:
			return errorf(CodeInvalidParameter, "You must specify MoveToVersionId or RemoveFromVersionId.")
		}
		return checkLabels([]string{*in.VersionStage})
	}
	return onSecret(s, body, in, false, check, func(sec *secret) (any, *apiError) {
		label := *in.VersionStage
		holder := sec.holder(label)
		var from *version
		if in.RemoveFromVersionId != nil {
			from = sec.versions[*in.RemoveFromVersionId]
			if from == nil || holder != from {
				return nil, errorf(CodeInvalidParameter, "The staging label %s is not attached to the version %s specified in RemoveFromVersionId.", label, *in.RemoveFromVersionId)
			}
		}
		if in.MoveToVersionId == nil {
			if label == StageCurrent {
				return nil, errorf(CodeInvalidParameter, "You can't remove the staging label AWSCURRENT from a version without moving it to another version (MoveToVersionId).")
			}
			sec.detach(label, from)
		} else {
			to := sec.versions[*in.MoveToVersionId]
			if to == nil {
				return nil, errorf(CodeResourceNotFound, "Secrets Manager can't find the specified secret version: %s", *in.MoveToVersionId)
			}
			if holder != nil && holder != to && from == nil {
				return nil, errorf(CodeInvalidParameter, "The parameter RemoveFromVersionId can't be empty. Staging label %s is currently attached to version %s, so you must explicitly reference that version in RemoveFromVersionId.", label, holder.id)
			}
			if err := checkLabels(append(slices.Clone(to.stages), label)); err != nil {
				return nil, err
			}
			sec.attach(label, to)
		}
		sec.changed = time.Now()
		sec.prune()
		return sec.ref(), nil
	})
}

func opListSecretVersionIds(s *Server, body []byte) (any, *apiError) {
	in := &struct {
		secretID
		IncludeDeprecated *bool
		MaxResults        *int32
		NextToken         *string
	}{}
	return onSecret(s, body, in, true, nil, func(sec *secret) (any, *apiError) {
		type entry struct {
			VersionId     string
			VersionStages []string `json:",omitempty"`
			CreatedDate   *epoch
		}
		var all []entry
		for _, v := range sec.sortedVersions() {
			if len(v.stages) == 0 && (in.IncludeDeprecated == nil || !*in.IncludeDeprecated) {
				continue
			}
			all = append(all, entry{v.id, slices.Clone(v.stages), ts(v.created)})
		}
		page, next, err := paginate(all, in.MaxResults, in.NextToken)
		if err != nil {
			return nil, err
		}
		return struct {
			secretRef
			Versions  []entry
			NextToken *string `json:",omitempty"`
		}{sec.ref(), page, next}, nil
	})
}

// paginate cuts a page of at most max (1-100, default 100) items starting
// at the offset in next.
func paginate[T any](all []T, max *int32, next *string) ([]T, *string, *apiError) {
	limit := 100
	if max != nil {
		if *max < 1 || *max > 100 {
			return nil, nil, errorf(CodeValidation, "1 validation error detected: MaxResults must be between 1 and 100")
		}
		limit = int(*max)
	}
	start := 0
	if next != nil {
		n, err := strconv.Atoi(*next)
		if err != nil || n < 0 || n > len(all) {
			return nil, nil, errorf("InvalidNextTokenException", "The NextToken value is invalid.")
		}
		start = n
	}
	end := min(start+limit, len(all))
	if end < len(all) {
		tok := strconv.Itoa(end)
		return all[start:end], &tok, nil
	}
	return all[start:end], nil, nil
}

func opTagResource(s *Server, body []byte) (any, *apiError) {
	in := &struct {
		secretID
		Tags []tagIn
	}{}
	var tags []tag
	check := func() (err *apiError) {
		tags, err = checkTags(in.Tags)
		return err
	}
	return onSecret(s, body, in, false, check, func(sec *secret) (any, *apiError) {
		old := slices.Clone(sec.tags)
		if err := sec.setTags(tags); err != nil {
			sec.tags = old
			return nil, err
		}
		sec.changed = time.Now()
		return struct{}{}, nil
	})
}

func opUntagResource(s *Server, body []byte) (any, *apiError) {
	in := &struct {
		secretID
		TagKeys []string
	}{}
	return onSecret(s, body, in, false, nil, func(sec *secret) (any, *apiError) {
		sec.tags = slices.DeleteFunc(sec.tags, func(t tag) bool { return slices.Contains(in.TagKeys, t.Key) })
		sec.changed = time.Now()
		return struct{}{}, nil
	})
}

type filterIn struct {
	Key    string
	Values []string
}

// matches applies one filter: any of its values matches (a value starting
// with "!" matches when the rest does not).
func (f filterIn) matches(sec *secret) bool {
	for _, v := range f.Values {
		neg := strings.HasPrefix(v, "!")
		v = strings.TrimPrefix(v, "!")
		if f.matchesValue(sec, v) != neg {
			return true
		}
	}
	return false
}

func (f filterIn) matchesValue(sec *secret, v string) bool {
	switch f.Key {
	case "name":
		return strings.HasPrefix(sec.name, v)
	case "description":
		return strings.HasPrefix(strings.ToLower(sec.description), strings.ToLower(v))
	case "tag-key":
		return slices.ContainsFunc(sec.tags, func(t tag) bool { return strings.HasPrefix(t.Key, v) })
	case "tag-value":
		return slices.ContainsFunc(sec.tags, func(t tag) bool { return strings.HasPrefix(t.Value, v) })
	case "primary-region", "owning-service":
		return false
	case "all":
		v = strings.ToLower(v)
		words := []string{strings.ToLower(sec.name), strings.ToLower(sec.description)}
		for _, t := range sec.tags {
			words = append(words, strings.ToLower(t.Key), strings.ToLower(t.Value))
		}
		return slices.ContainsFunc(words, func(w string) bool { return strings.Contains(w, v) })
	}
	return false
}

var filterKeys = []string{"description", "name", "tag-key", "tag-value", "primary-region", "owning-service", "all"}

func opListSecrets(s *Server, body []byte) (any, *apiError) {
	var in struct {
		Filters                []filterIn
		MaxResults             *int32
		NextToken              *string
		IncludePlannedDeletion *bool
		SortOrder              *string
	}
	if err := decode(body, &in); err != nil {
		return nil, err
	}
	for _, f := range in.Filters {
		if !slices.Contains(filterKeys, f.Key) {
			return nil, errorf(CodeValidation, "1 validation error detected: Value '%s' at 'filters.key' failed to satisfy constraint: Member must satisfy enum value set: [%s]", f.Key, strings.Join(filterKeys, ", "))
		}
		if len(f.Values) == 0 || len(f.Values) > 10 {
			return nil, errorf(CodeValidation, "1 validation error detected: a filter must have between 1 and 10 values")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	type entry struct {
		secretInfo
		SecretVersionsToStages map[string][]string `json:",omitempty"`
		created                time.Time
	}
	var all []entry
	for _, sec := range s.secrets {
		if !sec.deleted.IsZero() && (in.IncludePlannedDeletion == nil || !*in.IncludePlannedDeletion) {
			continue
		}
		ok := true
		for _, f := range in.Filters {
			ok = ok && f.matches(sec)
		}
		if ok {
			all = append(all, entry{sec.info(), sec.versionsToStages(), sec.created})
		}
	}
	asc := in.SortOrder != nil && *in.SortOrder == "asc"
	sort.Slice(all, func(i, j int) bool {
		if !all[i].created.Equal(all[j].created) {
			return all[i].created.Before(all[j].created) == asc
		}
		return (all[i].Name < all[j].Name) == asc
	})
	page, next, perr := paginate(all, in.MaxResults, in.NextToken)
	if perr != nil {
		return nil, perr
	}
	return struct {
		SecretList []entry
		NextToken  *string `json:",omitempty"`
	}{page, next}, nil
}

func opDeleteSecret(s *Server, body []byte) (any, *apiError) {
	in := &struct {
		secretID
		ForceDeleteWithoutRecovery *bool
		RecoveryWindowInDays       *int64
	}{}
	days := int64(30)
	check := func() *apiError {
		if in.RecoveryWindowInDays == nil {
			return nil
		}
		if in.ForceDeleteWithoutRecovery != nil && *in.ForceDeleteWithoutRecovery {
			return errorf(CodeInvalidParameter, "You can't use ForceDeleteWithoutRecovery in conjunction with RecoveryWindowInDays.")
		}
		if days = *in.RecoveryWindowInDays; days < 7 || days > 30 {
			return errorf(CodeInvalidParameter, "The RecoveryWindowInDays value must be between 7 and 30 days (inclusive).")
		}
		return nil
	}
	return onSecret(s, body, in, true, check, func(sec *secret) (any, *apiError) {
		now := time.Now()
		var deletion time.Time // when the secret is (or was) deleted
		switch {
		case in.ForceDeleteWithoutRecovery != nil && *in.ForceDeleteWithoutRecovery:
			delete(s.secrets, sec.name)
			deletion = now
		case !sec.deleted.IsZero():
			return nil, errorf(CodeInvalidRequest, "You can't perform this operation on the secret because it was already scheduled for deletion.")
		default:
			sec.deleted = now
			deletion = now.Add(time.Duration(days) * 24 * time.Hour)
		}
		return struct {
			secretRef
			DeletionDate *epoch
		}{sec.ref(), ts(deletion)}, nil
	})
}

func opRestoreSecret(s *Server, body []byte) (any, *apiError) {
	return onSecret(s, body, &struct{ secretID }{}, true, nil, func(sec *secret) (any, *apiError) {
		sec.deleted = time.Time{}
		return sec.ref(), nil
	})
}
