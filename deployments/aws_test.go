// Tests of the CloudFormation template in aws/: it decodes strictly into
// the part of CloudFormation it may use (a misspelt key fails), every
// reference names something defined, and, with its intrinsic functions
// evaluated for the default parameters and for others, the rules, queues
// and policies grant exactly what aws/README.md says and nothing more.

package deployments_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/rekey-dev/rekey/fanout/exporters/eventbridge"
	"github.com/rekey-dev/rekey/triggers/awsevents"
)

var cfnPath = filepath.Join("aws", "rekey.cfn.yaml")

// Values the test gives CloudFormation's pseudo parameters.
const (
	testPartition = "aws"
	testRegion    = "eu-west-1"
	testAccount   = "111122223333"
)

var pseudoParams = map[string]string{
	"AWS::Partition": testPartition,
	"AWS::Region":    testRegion,
	"AWS::AccountId": testAccount,
	"AWS::StackName": "rekey",
	"AWS::URLSuffix": "amazonaws.com",
}

// Logical ids of the resources the checks look at.
const (
	idQueue          = "EventQueue"
	idDLQ            = "DeadLetterQueue"
	idQueuePolicy    = "EventQueuePolicy"
	idRekeyPolicy    = "RekeyPolicy"
	idRotationPolicy = "RekeyRotationFunctionPolicy"
	idAgentPolicy    = "AgentPolicy"
)

// A parameter set other than the defaults: every check must hold for it
// too, which proves the parameters reach the resources.
var otherParams = map[string]string{
	"TenantPrefix":               "/prod/t/",
	"TenantTagKey":               "rekey:tenant",
	"MaxReceiveCount":            "3",
	"MessageRetentionSeconds":    "86400",
	"VisibilityTimeoutSeconds":   "300",
	"OutcomeBusName":             "security-ops",
	"RekeyRoleName":              "rekey-prod",
	"RotationFunctionArnPattern": "arn:aws:lambda:eu-west-1:111122223333:function:rotate-*",
}

// cfnTemplate is the part of the CloudFormation template anatomy the
// template may use.
type cfnTemplate struct {
	AWSTemplateFormatVersion string                  `json:"AWSTemplateFormatVersion"`
	Description              string                  `json:"Description"`
	Parameters               map[string]cfnParameter `json:"Parameters"`
	Conditions               map[string]any          `json:"Conditions"`
	Resources                map[string]cfnResource  `json:"Resources"`
	Outputs                  map[string]cfnOutput    `json:"Outputs"`
}

type cfnParameter struct {
	Type                  string   `json:"Type"`
	Default               any      `json:"Default"`
	Description           string   `json:"Description"`
	AllowedPattern        string   `json:"AllowedPattern"`
	ConstraintDescription string   `json:"ConstraintDescription"`
	MinValue              *float64 `json:"MinValue"`
	MaxValue              *float64 `json:"MaxValue"`
}

type cfnResource struct {
	Type       string          `json:"Type"`
	Condition  string          `json:"Condition"`
	Properties json.RawMessage `json:"Properties"`
}

type cfnOutput struct {
	Description string `json:"Description"`
	Condition   string `json:"Condition"`
	Value       any    `json:"Value"`
}

// Properties of each resource type the template may use, after its
// intrinsic functions are evaluated.
type (
	sqsQueueProps struct {
		SqsManagedSseEnabled          bool    `json:"SqsManagedSseEnabled"`
		VisibilityTimeout             *cfnInt `json:"VisibilityTimeout"`
		ReceiveMessageWaitTimeSeconds *cfnInt `json:"ReceiveMessageWaitTimeSeconds"`
		MessageRetentionPeriod        *cfnInt `json:"MessageRetentionPeriod"`
		RedrivePolicy                 *struct {
			DeadLetterTargetArn string `json:"deadLetterTargetArn"`
			MaxReceiveCount     cfnInt `json:"maxReceiveCount"`
		} `json:"RedrivePolicy"`
		Tags []struct {
			Key   string `json:"Key"`
			Value string `json:"Value"`
		} `json:"Tags"`
	}
	queuePolicyProps struct {
		Queues         []string  `json:"Queues"`
		PolicyDocument iamPolicy `json:"PolicyDocument"`
	}
	ruleProps struct {
		Description  string       `json:"Description"`
		EventBusName string       `json:"EventBusName"`
		State        string       `json:"State"`
		EventPattern eventPattern `json:"EventPattern"`
		Targets      []struct {
			ID  string `json:"Id"`
			Arn string `json:"Arn"`
		} `json:"Targets"`
	}
	managedPolicyProps struct {
		Description    string    `json:"Description"`
		Roles          []string  `json:"Roles"`
		PolicyDocument iamPolicy `json:"PolicyDocument"`
	}
)

// newProps returns the properties of a resource type, nil for a type the
// template may not use.
func newProps(typ string) any {
	switch typ {
	case "AWS::SQS::Queue":
		return &sqsQueueProps{}
	case "AWS::SQS::QueuePolicy":
		return &queuePolicyProps{}
	case "AWS::Events::Rule":
		return &ruleProps{}
	case "AWS::IAM::ManagedPolicy":
		return &managedPolicyProps{}
	}
	return nil
}

// getAttrs are the Fn::GetAtt attributes of each resource type.
var getAttrs = map[string][]string{
	"AWS::SQS::Queue":         {"Arn", "QueueName", "QueueUrl"},
	"AWS::SQS::QueuePolicy":   {"Id"},
	"AWS::Events::Rule":       {"Arn"},
	"AWS::IAM::ManagedPolicy": {"PolicyArn"},
}

// eventPattern is the part of EventBridge's pattern language the rules
// may use: exact values only. An operator (prefix, anything-but, $or ...)
// is an object where a string is wanted, so the strict decode refuses it.
type eventPattern struct {
	Source     []string `json:"source"`
	DetailType []string `json:"detail-type"`
	Detail     *struct {
		EventSource []string `json:"eventSource"`
		EventName   []string `json:"eventName"`
	} `json:"detail"`
}

// iamPolicy is an IAM policy document, given as an object or as a JSON
// text (what Fn::Sub of one gives); either decodes strictly.
type iamPolicy struct {
	Version   string         `json:"Version"`
	Statement []iamStatement `json:"Statement"`
}

func (p *iamPolicy) UnmarshalJSON(b []byte) error {
	var text string
	if json.Unmarshal(b, &text) == nil {
		b = []byte(text)
	}
	type plain iamPolicy
	return strictJSON(b, (*plain)(p))
}

type iamStatement struct {
	Sid       string                           `json:"Sid"`
	Effect    string                           `json:"Effect"`
	Principal json.RawMessage                  `json:"Principal"`
	Action    stringList                       `json:"Action"`
	Resource  stringList                       `json:"Resource"`
	Condition map[string]map[string]stringList `json:"Condition"`
}

// stringList is an IAM value that is a string or a list of strings.
type stringList []string

func (s *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = stringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or a list of strings, got %s", b)
	}
	*s = many
	return nil
}

// cfnInt is a number property: a JSON number, or a string holding one
// (what Ref of a Number parameter gives).
type cfnInt int

func (n *cfnInt) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case float64:
		if v == math.Trunc(v) {
			*n = cfnInt(v)
			return nil
		}
	case string:
		if i, err := strconv.Atoi(v); err == nil {
			*n = cfnInt(i)
			return nil
		}
	}
	return fmt.Errorf("want a whole number, got %s", b)
}

func strictJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	return d.Decode(v)
}

// exactKeys checks the keys of a decoded JSON value against the json
// names of t's fields in their exact case: encoding/json matches names
// case-insensitively, CloudFormation and IAM do not.
func exactKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if text, ok := v.(string); ok && t == reflect.TypeFor[iamPolicy]() {
		if json.Unmarshal([]byte(text), &v) != nil {
			return nil // the strict decode reports it
		}
	}
	var errs []error
	switch t.Kind() {
	case reflect.Struct:
		m, _ := v.(map[string]any)
		for k, e := range m {
			f, ok := fieldByJSONName(t, k)
			if !ok {
				errs = append(errs, fmt.Errorf("%s.%s: unknown field (names are case-sensitive)", path, k))
				continue
			}
			errs = append(errs, exactKeys(e, f.Type, path+"."+k))
		}
	case reflect.Map:
		m, _ := v.(map[string]any)
		for k, e := range m {
			errs = append(errs, exactKeys(e, t.Elem(), path+"."+k))
		}
	case reflect.Slice:
		l, _ := v.([]any)
		for i, e := range l {
			errs = append(errs, exactKeys(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)))
		}
	}
	return errors.Join(errs...)
}

func fieldByJSONName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if n, _, _ := strings.Cut(f.Tag.Get("json"), ","); n == name || (n == "" && f.Name == name) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// stack is the template with its parameters given and its intrinsic
// functions evaluated. A resource's Ref evaluates to "{Id}" and its
// Fn::GetAtt to "{Id.Attr}", standing for what AWS would create.
type stack struct {
	tmpl    cfnTemplate
	params  map[string]string
	conds   map[string]bool
	props   map[string]any    // logical id -> *xxxProps, for the resources created
	outputs map[string]string // the outputs created
}

// noValue is what Ref AWS::NoValue evaluates to: the property is left out.
type noValue struct{}

// shortForm finds a YAML tag (!Ref, !Sub ...) outside comments.
var shortForm = regexp.MustCompile(`(^|[\s\[,])![A-Za-z]`)

// loadStack decodes the template strictly and evaluates it with the
// parameter defaults, overridden by params.
func loadStack(src []byte, params map[string]string) (*stack, error) {
	for i, line := range strings.Split(string(src), "\n") {
		if code, _, _ := strings.Cut(line, " #"); !strings.HasPrefix(strings.TrimSpace(code), "#") && shortForm.MatchString(code) {
			return nil, fmt.Errorf("line %d: %q: use the long form of intrinsic functions, not YAML tags", i+1, strings.TrimSpace(line))
		}
	}
	j, err := yaml.YAMLToJSONStrict(src)
	if err != nil {
		return nil, err
	}
	s := &stack{params: map[string]string{}, conds: map[string]bool{}, props: map[string]any{}, outputs: map[string]string{}}
	if err := strictJSON(j, &s.tmpl); err != nil {
		return nil, err
	}
	var tree any
	if err := json.Unmarshal(j, &tree); err != nil {
		return nil, err
	}
	if err := exactKeys(tree, reflect.TypeFor[cfnTemplate](), "template"); err != nil {
		return nil, err
	}
	if s.tmpl.AWSTemplateFormatVersion != "2010-09-09" {
		return nil, fmt.Errorf("AWSTemplateFormatVersion %q, want 2010-09-09", s.tmpl.AWSTemplateFormatVersion)
	}
	if err := s.setParams(params); err != nil {
		return nil, err
	}
	if err := s.checkRefs(); err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(s.tmpl.Conditions)) {
		v, err := s.eval(s.tmpl.Conditions[name])
		b, ok := v.(bool)
		if err != nil || !ok {
			return nil, fmt.Errorf("Conditions.%s: not a boolean (%v, %v)", name, v, err)
		}
		s.conds[name] = b
	}
	for _, id := range slices.Sorted(maps.Keys(s.tmpl.Resources)) {
		r := s.tmpl.Resources[id]
		props := newProps(r.Type)
		if props == nil {
			return nil, fmt.Errorf("Resources.%s: type %q is not one the template may use", id, r.Type)
		}
		if !s.created(id) {
			continue
		}
		var tree any
		if err := json.Unmarshal(r.Properties, &tree); err != nil {
			return nil, fmt.Errorf("Resources.%s.Properties: %w", id, err)
		}
		v, err := s.eval(tree)
		if err != nil {
			return nil, fmt.Errorf("Resources.%s.Properties: %w", id, err)
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		if err := strictJSON(b, props); err != nil {
			return nil, fmt.Errorf("Resources.%s (%s): %w", id, r.Type, err)
		}
		if err := exactKeys(v, reflect.TypeOf(props), "Resources."+id); err != nil {
			return nil, err
		}
		s.props[id] = props
	}
	for _, name := range slices.Sorted(maps.Keys(s.tmpl.Outputs)) {
		o := s.tmpl.Outputs[name]
		if o.Condition != "" && !s.conds[o.Condition] {
			continue
		}
		v, err := s.eval(o.Value)
		str, ok := v.(string)
		if err != nil || !ok {
			return nil, fmt.Errorf("Outputs.%s: not a string (%v, %v)", name, v, err)
		}
		s.outputs[name] = str
	}
	return s, nil
}

// setParams fills s.params from the defaults and params, each value
// checked against its parameter's constraints.
func (s *stack) setParams(params map[string]string) error {
	for name := range params {
		if _, ok := s.tmpl.Parameters[name]; !ok {
			return fmt.Errorf("no parameter %s", name)
		}
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(s.tmpl.Parameters)) {
		p := s.tmpl.Parameters[name]
		v, given := params[name]
		if !given {
			switch d := p.Default.(type) {
			case string:
				v = d
			case float64:
				v = strconv.FormatFloat(d, 'f', -1, 64)
			default:
				errs = append(errs, fmt.Errorf("Parameters.%s: no default and no value", name))
				continue
			}
		}
		if err := p.check(v); err != nil {
			errs = append(errs, fmt.Errorf("Parameters.%s: %w", name, err))
		}
		s.params[name] = v
	}
	return errors.Join(errs...)
}

// check reports whether CloudFormation would accept v for p.
func (p cfnParameter) check(v string) error {
	switch p.Type {
	case "String":
		if p.MinValue != nil || p.MaxValue != nil {
			return errors.New("MinValue/MaxValue are for Number parameters")
		}
		re, err := regexp.Compile(p.AllowedPattern)
		if err != nil {
			return fmt.Errorf("AllowedPattern: %w", err)
		}
		if !re.MatchString(v) {
			return fmt.Errorf("%q does not match %s", v, p.AllowedPattern)
		}
	case "Number":
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", v)
		}
		if (p.MinValue != nil && f < *p.MinValue) || (p.MaxValue != nil && f > *p.MaxValue) {
			return fmt.Errorf("%s is outside [%v, %v]", v, p.MinValue, p.MaxValue)
		}
	default:
		return fmt.Errorf("type %q is not String or Number", p.Type)
	}
	return nil
}

// created reports whether resource id is created: it has no Condition or
// its Condition holds.
func (s *stack) created(id string) bool {
	c := s.tmpl.Resources[id].Condition
	return c == "" || s.conds[c]
}

// eval evaluates the intrinsic functions in a decoded JSON value.
func (s *stack) eval(v any) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		for k, arg := range v {
			if k == "Ref" || strings.HasPrefix(k, "Fn::") {
				if len(v) != 1 {
					return nil, fmt.Errorf("%s beside other keys", k)
				}
				return s.intrinsic(k, arg)
			}
		}
		out := map[string]any{}
		for k, e := range v {
			r, err := s.eval(e)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			if _, none := r.(noValue); !none {
				out[k] = r
			}
		}
		return out, nil
	case []any:
		out := []any{}
		for i, e := range v {
			r, err := s.eval(e)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			if _, none := r.(noValue); !none {
				out = append(out, r)
			}
		}
		return out, nil
	}
	return v, nil
}

func (s *stack) intrinsic(fn string, arg any) (any, error) {
	args, _ := arg.([]any)
	switch fn {
	case "Ref":
		name, ok := arg.(string)
		if !ok {
			return nil, fmt.Errorf("Ref %v: want a name", arg)
		}
		return s.ref(name)
	case "Fn::GetAtt":
		if len(args) != 2 {
			return nil, fmt.Errorf("Fn::GetAtt %v: want [resource, attribute]", arg)
		}
		id, _ := args[0].(string)
		attr, _ := args[1].(string)
		return s.getAtt(id, attr)
	case "Fn::Sub":
		return s.sub(arg)
	case "Fn::If":
		if len(args) != 3 {
			return nil, fmt.Errorf("Fn::If %v: want [condition, then, else]", arg)
		}
		name, _ := args[0].(string)
		holds, ok := s.conds[name]
		if !ok {
			return nil, fmt.Errorf("Fn::If: condition %v is not defined (or not yet evaluated)", args[0])
		}
		if holds {
			return s.eval(args[1])
		}
		return s.eval(args[2])
	case "Fn::Equals":
		if len(args) != 2 {
			return nil, fmt.Errorf("Fn::Equals %v: want two values", arg)
		}
		a, err := s.eval(args[0])
		if err != nil {
			return nil, err
		}
		b, err := s.eval(args[1])
		if err != nil {
			return nil, err
		}
		return reflect.DeepEqual(a, b), nil
	case "Fn::Not":
		if len(args) != 1 {
			return nil, fmt.Errorf("Fn::Not %v: want one condition", arg)
		}
		v, err := s.eval(args[0])
		b, ok := v.(bool)
		if err != nil || !ok {
			return nil, fmt.Errorf("Fn::Not of %v: not a boolean (%v)", v, err)
		}
		return !b, nil
	}
	return nil, fmt.Errorf("%s is not one of the intrinsic functions the template may use", fn)
}

func (s *stack) ref(name string) (any, error) {
	if name == "AWS::NoValue" {
		return noValue{}, nil
	}
	if v, ok := pseudoParams[name]; ok {
		return v, nil
	}
	if v, ok := s.params[name]; ok {
		return v, nil
	}
	if _, ok := s.tmpl.Resources[name]; ok {
		if !s.created(name) {
			return nil, fmt.Errorf("Ref %s: the resource is not created under these parameters", name)
		}
		return "{" + name + "}", nil
	}
	return nil, fmt.Errorf("Ref %s: no such parameter, pseudo parameter or resource", name)
}

func (s *stack) getAtt(id, attr string) (any, error) {
	r, ok := s.tmpl.Resources[id]
	switch {
	case !ok:
		return nil, fmt.Errorf("Fn::GetAtt %s.%s: no such resource", id, attr)
	case !slices.Contains(getAttrs[r.Type], attr):
		return nil, fmt.Errorf("Fn::GetAtt %s.%s: %s has no attribute %q", id, attr, r.Type, attr)
	case !s.created(id):
		return nil, fmt.Errorf("Fn::GetAtt %s.%s: the resource is not created under these parameters", id, attr)
	}
	return "{" + id + "." + attr + "}", nil
}

// sub evaluates Fn::Sub: a template, or [template, {name: value}].
func (s *stack) sub(arg any) (any, error) {
	text, vars, err := subArgs(arg)
	if err != nil {
		return nil, err
	}
	parts, err := parseSub(text)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	for _, p := range parts {
		if !p.variable {
			b.WriteString(p.text)
			continue
		}
		var v any
		if e, ok := vars[p.text]; ok {
			v, err = s.eval(e)
		} else if id, attr, ok := strings.Cut(p.text, "."); ok {
			v, err = s.getAtt(id, attr)
		} else {
			v, err = s.ref(p.text)
		}
		if err != nil {
			return nil, fmt.Errorf("Fn::Sub ${%s}: %w", p.text, err)
		}
		str, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("Fn::Sub ${%s}: %v is not a string", p.text, v)
		}
		b.WriteString(str)
	}
	return b.String(), nil
}

func subArgs(arg any) (string, map[string]any, error) {
	if text, ok := arg.(string); ok {
		return text, nil, nil
	}
	if l, ok := arg.([]any); ok && len(l) == 2 {
		text, ok1 := l[0].(string)
		vars, ok2 := l[1].(map[string]any)
		if ok1 && ok2 {
			return text, vars, nil
		}
	}
	return "", nil, fmt.Errorf("Fn::Sub %v: want a template or [template, {variables}]", arg)
}

type subPart struct {
	text     string // literal text, or the variable's name
	variable bool
}

// parseSub splits an Fn::Sub template into literal text and ${name}
// variables, in one pass: ${!text} is the literal ${text}.
func parseSub(text string) ([]subPart, error) {
	var parts []subPart
	for {
		i := strings.Index(text, "${")
		if i < 0 {
			return append(parts, subPart{text: text}), nil
		}
		j := strings.IndexByte(text[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("Fn::Sub: unclosed ${ in %q", text[i:])
		}
		parts = append(parts, subPart{text: text[:i]})
		if lit, ok := strings.CutPrefix(text[i+2:i+j], "!"); ok {
			parts = append(parts, subPart{text: "${" + lit + "}"})
		} else {
			parts = append(parts, subPart{text: text[i+2 : i+j], variable: true})
		}
		text = text[i+j+1:]
	}
}

// checkRefs checks, whatever the parameters, that every Ref, Fn::GetAtt,
// Fn::Sub variable and condition anywhere in the template names something
// defined, and that every parameter is used.
func (s *stack) checkRefs() error {
	var errs []error
	used := map[string]bool{}
	defined := func(where, name string) {
		switch _, isParam := s.tmpl.Parameters[name]; {
		case isParam:
			used[name] = true
		case pseudoParams[name] != "" || name == "AWS::NoValue":
		default:
			if _, ok := s.tmpl.Resources[name]; !ok {
				errs = append(errs, fmt.Errorf("%s: %s is not a parameter, pseudo parameter or resource", where, name))
			}
		}
	}
	attr := func(where, id, attr string) {
		if r, ok := s.tmpl.Resources[id]; !ok || !slices.Contains(getAttrs[r.Type], attr) {
			errs = append(errs, fmt.Errorf("%s: %s.%s is not a resource attribute", where, id, attr))
		}
	}
	cond := func(where string, name any) {
		if _, ok := s.tmpl.Conditions[fmt.Sprint(name)]; !ok {
			errs = append(errs, fmt.Errorf("%s: condition %v is not defined", where, name))
		}
	}
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				args, _ := e.([]any)
				switch {
				case k == "Ref":
					defined(where, fmt.Sprint(e))
				case k == "Fn::GetAtt" && len(args) == 2:
					attr(where, fmt.Sprint(args[0]), fmt.Sprint(args[1]))
				case k == "Fn::If" && len(args) > 0:
					cond(where, args[0])
				case k == "Fn::Sub":
					text, vars, err := subArgs(e)
					parts, perr := parseSub(text)
					if err = errors.Join(err, perr); err != nil {
						errs = append(errs, fmt.Errorf("%s: %w", where, err))
					}
					for _, p := range parts {
						if _, local := vars[p.text]; !p.variable || local {
							continue
						}
						if id, a, ok := strings.Cut(p.text, "."); ok {
							attr(where, id, a)
						} else {
							defined(where, p.text)
						}
					}
				}
				walk(where+"."+k, e)
			}
		case []any:
			for i, e := range v {
				walk(fmt.Sprintf("%s[%d]", where, i), e)
			}
		}
	}
	for name, c := range s.tmpl.Conditions {
		walk("Conditions."+name, c)
	}
	for id, r := range s.tmpl.Resources {
		if r.Condition != "" {
			cond("Resources."+id, r.Condition)
		}
		var tree any
		if err := json.Unmarshal(r.Properties, &tree); err != nil {
			errs = append(errs, fmt.Errorf("Resources.%s.Properties: %w", id, err))
		}
		walk("Resources."+id+".Properties", tree)
	}
	for name, o := range s.tmpl.Outputs {
		if o.Condition != "" {
			cond("Outputs."+name, o.Condition)
		}
		walk("Outputs."+name, o.Value)
	}
	for name := range s.tmpl.Parameters {
		if !used[name] {
			errs = append(errs, fmt.Errorf("Parameters.%s is never used", name))
		}
	}
	return errors.Join(errs...)
}

// prop returns the properties of resource id, created with type T.
func prop[T any](s *stack, id string) (*T, error) {
	p, ok := s.props[id].(*T)
	if !ok {
		return nil, fmt.Errorf("resource %s is not created, or is not a %T", id, *new(T))
	}
	return p, nil
}

// problems collects what is wrong, each as an error.
type problems []error

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Errorf(format, args...)) }
func (p problems) err() error                      { return errors.Join(p...) }

// secretARN is the ARN pattern of every secret under TenantPrefix.
func (s *stack) secretARN() string {
	return fmt.Sprintf("arn:%s:secretsmanager:%s:%s:secret:%s*", testPartition, testRegion, testAccount, s.params["TenantPrefix"])
}

func (s *stack) tagConditionKey() string {
	return "secretsmanager:ResourceTag/" + s.params["TenantTagKey"]
}

// triggerMessageTimeout is how long triggers/awsevents gives one message
// (its messageTimeout), and also one batch delete.
const triggerMessageTimeout = 10 * time.Second

func checkQueues(s *stack) error {
	var p problems
	q, err := prop[sqsQueueProps](s, idQueue)
	if err != nil {
		return err
	}
	dlq, err := prop[sqsQueueProps](s, idDLQ)
	if err != nil {
		return err
	}
	if !q.SqsManagedSseEnabled || !dlq.SqsManagedSseEnabled {
		p.add("both queues need SqsManagedSseEnabled: true")
	}
	if rp := q.RedrivePolicy; rp == nil || rp.DeadLetterTargetArn != "{"+idDLQ+".Arn}" {
		p.add("%s: RedrivePolicy %+v must send to the dead-letter queue {%s.Arn}", idQueue, rp, idDLQ)
	} else if strconv.Itoa(int(rp.MaxReceiveCount)) != s.params["MaxReceiveCount"] {
		p.add("%s: maxReceiveCount %d, want the MaxReceiveCount parameter %s", idQueue, rp.MaxReceiveCount, s.params["MaxReceiveCount"])
	}
	if dlq.RedrivePolicy != nil {
		p.add("%s: a dead-letter queue must not redrive further", idDLQ)
	}
	// A whole batch must be handled and deleted before its first message
	// becomes visible again.
	batch := time.Duration(awsevents.DefaultMaxMessages+1) * triggerMessageTimeout
	if q.VisibilityTimeout == nil || time.Duration(*q.VisibilityTimeout)*time.Second < batch {
		p.add("%s: VisibilityTimeout %v is shorter than a full batch of rekey's work (%s)", idQueue, q.VisibilityTimeout, batch)
	} else if strconv.Itoa(int(*q.VisibilityTimeout)) != s.params["VisibilityTimeoutSeconds"] {
		p.add("%s: VisibilityTimeout %d is not the VisibilityTimeoutSeconds parameter", idQueue, *q.VisibilityTimeout)
	}
	if w := q.ReceiveMessageWaitTimeSeconds; w == nil || time.Duration(*w)*time.Second != awsevents.DefaultWaitTime {
		p.add("%s: ReceiveMessageWaitTimeSeconds %v, want rekey's long poll %s", idQueue, w, awsevents.DefaultWaitTime)
	}
	if r := q.MessageRetentionPeriod; r == nil || strconv.Itoa(int(*r)) != s.params["MessageRetentionSeconds"] {
		p.add("%s: MessageRetentionPeriod %v is not the MessageRetentionSeconds parameter", idQueue, r)
	}
	// A message moved to the dead-letter queue keeps its enqueue time, so
	// the DLQ must keep messages longer than the queue ever can.
	maxRetention := s.tmpl.Parameters["MessageRetentionSeconds"].MaxValue
	if r := dlq.MessageRetentionPeriod; r == nil || maxRetention == nil || float64(*r) <= *maxRetention || *r > 1209600 {
		p.add("%s: MessageRetentionPeriod %v must be above MessageRetentionSeconds' MaxValue %v and at most 14 days", idDLQ, r, maxRetention)
	}
	return p.err()
}

// wantRule is one rule rekey needs: its source and detail-type, and for
// Secrets Manager the eventSource and event names under detail.
type wantRule struct {
	source, detailType, eventSource string
	eventNames                      []string
}

// wantRules are the rules rekey needs, one per source and detail-type:
// fields of a pattern are ANDed and the values of one field ORed, so one
// rule with two detail-types would also match each with the other's names.
var wantRules = []wantRule{
	{awsevents.SourceSecretsManager, awsevents.DetailTypeServiceEvent, "secretsmanager.amazonaws.com", []string{
		awsevents.EventRotationStarted, awsevents.EventRotationSucceeded, awsevents.EventRotationFailed, awsevents.EventRotationAbandoned,
	}},
	{awsevents.SourceSecretsManager, awsevents.DetailTypeAPICall, "secretsmanager.amazonaws.com", []string{
		awsevents.EventPutSecretValue, awsevents.EventUpdateSecretVersionStage, awsevents.EventRotateSecret,
		awsevents.EventDeleteSecret, awsevents.EventUpdateSecret,
	}},
	{awsevents.SourceGuardDuty, awsevents.DetailTypeFinding, "", nil},
	{awsevents.SourceSecretsManager, awsevents.DetailTypeSecretLabelUpdated, "", nil},
	{awsevents.SourceSecurityHub, awsevents.DetailTypeFindingsImported, "", nil},
	{awsevents.SourceSecurityHub, awsevents.DetailTypeFindingsImportedV2, "", nil},
}

// ruleIDs returns the logical ids of the rules created, sorted.
func ruleIDs(s *stack) []string {
	var ids []string
	for id, p := range s.props {
		if _, ok := p.(*ruleProps); ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func checkRules(s *stack) error {
	var p problems
	found := make([]string, len(wantRules))
	for _, id := range ruleIDs(s) {
		r := s.props[id].(*ruleProps)
		if r.State != "ENABLED" || r.EventBusName != "default" {
			p.add("%s: State %q EventBusName %q, want ENABLED on the default bus (where AWS services send)", id, r.State, r.EventBusName)
		}
		if len(r.Targets) != 1 || r.Targets[0].Arn != "{"+idQueue+".Arn}" || r.Targets[0].ID == "" {
			p.add("%s: targets %+v, want only the queue {%s.Arn}", id, r.Targets, idQueue)
		}
		ep := r.EventPattern
		if len(ep.Source) != 1 || len(ep.DetailType) != 1 {
			p.add("%s: source %q detail-type %q: a rule must name one source and one detail-type, "+
				"or its event names also match the other detail-type", id, ep.Source, ep.DetailType)
			continue
		}
		i := slices.IndexFunc(wantRules, func(w wantRule) bool {
			return w.source == ep.Source[0] && w.detailType == ep.DetailType[0]
		})
		if i < 0 {
			p.add("%s: rekey does not read %s %q events", id, ep.Source[0], ep.DetailType[0])
			continue
		}
		if found[i] != "" {
			p.add("%s and %s both match %s %q", found[i], id, ep.Source[0], ep.DetailType[0])
		}
		found[i] = id
		w := wantRules[i]
		if w.eventSource == "" {
			if ep.Detail != nil {
				p.add("%s: want every %q event, got a detail filter %+v", id, w.detailType, *ep.Detail)
			}
			continue
		}
		if ep.Detail == nil || !slices.Equal(ep.Detail.EventSource, []string{w.eventSource}) ||
			!slices.Equal(slices.Sorted(slices.Values(ep.Detail.EventName)), slices.Sorted(slices.Values(w.eventNames))) {
			p.add("%s: detail %+v, want eventSource %s and exactly the event names %v", id, ep.Detail, w.eventSource, w.eventNames)
		}
	}
	for i, id := range found {
		if id == "" {
			p.add("no rule matches %s %q", wantRules[i].source, wantRules[i].detailType)
		}
	}
	return p.err()
}

// principal decodes an IAM Principal: "*" or {"Service": ...}.
func principal(raw json.RawMessage) (star bool, services []string, err error) {
	if string(raw) == `"*"` {
		return true, nil, nil
	}
	var pr struct {
		Service stringList `json:"Service"`
	}
	if err := strictJSON(raw, &pr); err != nil {
		return false, nil, fmt.Errorf("principal %s: %w", raw, err)
	}
	return false, pr.Service, nil
}

func checkQueuePolicy(s *stack) error {
	var p problems
	qp, err := prop[queuePolicyProps](s, idQueuePolicy)
	if err != nil {
		return err
	}
	if !slices.Equal(qp.Queues, []string{"{" + idQueue + "}"}) {
		p.add("Queues %v, want only {%s}", qp.Queues, idQueue)
	}
	var ruleArns stringList
	for _, id := range ruleIDs(s) {
		ruleArns = append(ruleArns, "{"+id+".Arn}")
	}
	slices.Sort(ruleArns)
	wantCond := map[string]map[string]stringList{"ArnEquals": {"aws:SourceArn": ruleArns}}
	denyOthers := map[string]map[string]stringList{"ArnNotEquals": {"aws:SourceArn": ruleArns}}
	queueArn := stringList{"{" + idQueue + ".Arn}"}
	allows, tls, othersDenied := 0, false, false
	for _, st := range qp.PolicyDocument.Statement {
		star, services, err := principal(st.Principal)
		if err != nil {
			p.add("%s: %v", st.Sid, err)
			continue
		}
		switch st.Effect {
		case "Deny":
			tls = tls || (star && reflect.DeepEqual(st.Condition, map[string]map[string]stringList{"Bool": {"aws:SecureTransport": {"false"}}}))
			cond := st.Condition
			for _, c := range cond {
				for _, v := range c {
					slices.Sort(v)
				}
			}
			othersDenied = othersDenied || (star && reflect.DeepEqual(cond, denyOthers) &&
				slices.Equal(st.Resource, queueArn) && (slices.Contains(st.Action, "sqs:SendMessage") || slices.Contains(st.Action, "sqs:*")))
		case "Allow":
			allows++
			if star || !slices.Equal(services, []string{"events.amazonaws.com"}) {
				p.add("%s: allows %s, want only the service events.amazonaws.com", st.Sid, st.Principal)
			}
			if !slices.Equal(st.Action, stringList{"sqs:SendMessage"}) || !slices.Equal(st.Resource, queueArn) {
				p.add("%s: allows %v on %v, want only sqs:SendMessage on %v", st.Sid, st.Action, st.Resource, queueArn)
			}
			cond := st.Condition
			for _, c := range cond {
				for _, v := range c {
					slices.Sort(v)
				}
			}
			if !reflect.DeepEqual(cond, wantCond) {
				p.add("%s: condition %v, want %v (only the rules may send)", st.Sid, cond, wantCond)
			}
		default:
			p.add("%s: Effect %q", st.Sid, st.Effect)
		}
	}
	if allows == 0 {
		p.add("the queue policy lets EventBridge send nothing")
	}
	if !tls {
		p.add("the queue policy does not deny requests without TLS (aws:SecureTransport false)")
	}
	if !othersDenied {
		p.add("the queue policy does not deny sqs:SendMessage to every sender but the rules (Principal *, ArnNotEquals aws:SourceArn of every rule): " +
			"inside the account an identity policy's allow is enough to send")
	}
	return p.err()
}

// grant is what a policy must allow for one action.
type grant struct {
	resource  string
	condition map[string]map[string]stringList
}

// checkGrants checks that the policy of resource id allows exactly the
// actions of want, each on its resource and under its condition, with no
// wildcard action or resource, and that it is attached to the roles.
func checkGrants(s *stack, id string, want map[string]grant, roles []string) error {
	var p problems
	mp, err := prop[managedPolicyProps](s, id)
	if err != nil {
		return err
	}
	if mp.PolicyDocument.Version != "2012-10-17" {
		p.add("%s: Version %q, want 2012-10-17 (policy variables need it)", id, mp.PolicyDocument.Version)
	}
	if !slices.Equal(mp.Roles, roles) {
		p.add("%s: attached to %v, want %v", id, mp.Roles, roles)
	}
	got := map[string]bool{}
	for _, st := range mp.PolicyDocument.Statement {
		if st.Effect != "Allow" || len(st.Principal) > 0 {
			p.add("%s %s: Effect %q Principal %s, want an identity policy that only allows", id, st.Sid, st.Effect, st.Principal)
		}
		for _, r := range st.Resource {
			if strings.TrimSpace(r) == "*" || strings.HasSuffix(r, ":*") {
				p.add("%s %s: resource %q is a wildcard", id, st.Sid, r)
			}
		}
		for _, a := range st.Action {
			w, ok := want[a]
			switch {
			case strings.ContainsAny(a, "*?"):
				p.add("%s %s: wildcard action %q", id, st.Sid, a)
			case !ok:
				p.add("%s %s: allows %s, which is not needed", id, st.Sid, a)
			case !slices.Equal(st.Resource, stringList{w.resource}):
				p.add("%s %s: %s on %v, want only %s", id, st.Sid, a, st.Resource, w.resource)
			case !reflect.DeepEqual(st.Condition, w.condition):
				p.add("%s %s: %s under condition %v, want %v", id, st.Sid, a, st.Condition, w.condition)
			}
			got[a] = true
		}
	}
	for _, a := range slices.Sorted(maps.Keys(want)) {
		if !got[a] {
			p.add("%s: does not allow %s", id, a)
		}
	}
	return p.err()
}

// rekeyRoles are the roles rekey's policies are attached to.
func rekeyRoles(s *stack) []string {
	if r := s.params["RekeyRoleName"]; r != "" {
		return []string{r}
	}
	return nil
}

func checkRekeyPolicy(s *stack) error {
	// Only secrets under the prefix that carry the tenant tag: the tag's
	// value is compared with the tenant by rekey before any write.
	tagged := grant{s.secretARN(), map[string]map[string]stringList{"Null": {s.tagConditionKey(): {"false"}}}}
	queue := grant{"{" + idQueue + ".Arn}", nil}
	want := map[string]grant{
		"secretsmanager:DescribeSecret":           tagged,
		"secretsmanager:GetSecretValue":           tagged,
		"secretsmanager:PutSecretValue":           tagged,
		"secretsmanager:UpdateSecretVersionStage": tagged,
		"secretsmanager:RotateSecret":             tagged,
		"secretsmanager:ListSecretVersionIds":     tagged,
		"sqs:ReceiveMessage":                      queue,
		"sqs:DeleteMessage":                       queue,
		"sqs:ChangeMessageVisibility":             queue,
		"sqs:GetQueueAttributes":                  queue,
		"events:PutEvents": {fmt.Sprintf("arn:%s:events:%s:%s:event-bus/%s",
			testPartition, testRegion, testAccount, s.params["OutcomeBusName"]), nil},
	}
	return checkGrants(s, idRekeyPolicy, want, rekeyRoles(s))
}

func checkRotationFunctionPolicy(s *stack) error {
	fn := s.params["RotationFunctionArnPattern"]
	if fn == "" {
		if _, ok := s.props[idRotationPolicy]; ok {
			return fmt.Errorf("%s is created with no RotationFunctionArnPattern", idRotationPolicy)
		}
		return nil
	}
	return checkGrants(s, idRotationPolicy, map[string]grant{"lambda:InvokeFunction": {fn, nil}}, rekeyRoles(s))
}

func checkAgentPolicy(s *stack) error {
	// ABAC: the secret's tenant tag equals the same tag on the agent.
	abac := map[string]map[string]stringList{"StringEquals": {
		s.tagConditionKey(): {"${aws:PrincipalTag/" + s.params["TenantTagKey"] + "}"},
	}}
	return checkGrants(s, idAgentPolicy, map[string]grant{"secretsmanager:GetSecretValue": {s.secretARN(), abac}}, nil)
}

func checkOutputs(s *stack) error {
	want := map[string]string{
		"QueueUrl":           "{" + idQueue + "}",
		"QueueArn":           "{" + idQueue + ".Arn}",
		"DeadLetterQueueUrl": "{" + idDLQ + "}",
		"RekeyPolicyArn":     "{" + idRekeyPolicy + "}",
		"AgentPolicyArn":     "{" + idAgentPolicy + "}",
	}
	if s.params["RotationFunctionArnPattern"] != "" {
		want["RekeyRotationFunctionPolicyArn"] = "{" + idRotationPolicy + "}"
	}
	if !maps.Equal(s.outputs, want) {
		return fmt.Errorf("outputs %v, want %v", s.outputs, want)
	}
	return nil
}

var awsChecks = []struct {
	name  string
	check func(*stack) error
}{
	{"queues", checkQueues},
	{"rules", checkRules},
	{"queue policy", checkQueuePolicy},
	{"rekey policy", checkRekeyPolicy},
	{"rotation function policy", checkRotationFunctionPolicy},
	{"agent policy", checkAgentPolicy},
	{"outputs", checkOutputs},
}

// checkAll runs every check on s.
func checkAll(s *stack) error {
	var errs []error
	for _, c := range awsChecks {
		if err := c.check(s); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.name, err))
		}
	}
	return errors.Join(errs...)
}

// awsProblems loads the template with params and runs every check.
func awsProblems(src []byte, params map[string]string) error {
	s, err := loadStack(src, params)
	if err != nil {
		return err
	}
	return checkAll(s)
}

func readTemplate(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(cfnPath)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAWSTemplate(t *testing.T) {
	src := readTemplate(t)
	for name, params := range map[string]map[string]string{"defaults": nil, "other parameters": otherParams} {
		t.Run(name, func(t *testing.T) {
			s, err := loadStack(src, params)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkAll(s); err != nil {
				t.Error(err)
			}
			t.Logf("%d resources created, outputs %v", len(s.props), slices.Sorted(maps.Keys(s.outputs)))
		})
	}
}

// The defaults match rekey's own (backends.awssm tenant_prefix
// "/tenants/{tenant}/" and tenant_tag TenantId, the outcome publisher's
// bus), and the parameters put into JSON policy text cannot break out of
// their string or widen an ARN.
func TestAWSTemplateParameters(t *testing.T) {
	s, err := loadStack(readTemplate(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"TenantPrefix":    "/tenants/",
		"TenantTagKey":    "TenantId",
		"MaxReceiveCount": "5",
		"OutcomeBusName":  eventbridge.DefaultBusName,
		"RekeyRoleName":   "",
	} {
		if got := s.params[name]; got != want {
			t.Errorf("%s defaults to %q, want %q", name, got, want)
		}
	}
	for name, good := range map[string]string{"TenantPrefix": "/tenants/", "TenantTagKey": "TenantId", "OutcomeBusName": "default"} {
		p := s.tmpl.Parameters[name]
		for _, c := range []string{`"`, `\`, "*", "?", "$", "{", " "} {
			if bad := good + c + "x/"; p.check(bad) == nil {
				t.Errorf("%s accepts %q", name, bad)
			}
		}
	}
	if s.tmpl.Parameters["TenantPrefix"].check("/tenants") == nil {
		t.Error(`TenantPrefix accepts "/tenants", which would also cover /tenantsX`)
	}
	if s.tmpl.Parameters["RotationFunctionArnPattern"].check("*") == nil {
		t.Error(`RotationFunctionArnPattern accepts "*"`)
	}
}

// Each mistake below must be caught, or the checks above prove nothing.
func TestAWSTemplateChecksCatchMistakes(t *testing.T) {
	src := string(readTemplate(t))
	for _, m := range []struct {
		name, old, new, want string
	}{
		{"misspelt property", "ReceiveMessageWaitTimeSeconds: 20", "ReceiveMessageWaitTimeSecs: 20", `unknown field "ReceiveMessageWaitTimeSecs"`},
		{"undefined Sub variable", "secret:${TenantPrefix}*", "secret:${TenantPrefixes}*", "TenantPrefixes"},
		{"undefined Ref", `{"Ref": "MaxReceiveCount"}`, `{"Ref": "MaxReceives"}`, "MaxReceives"},
		{"unknown attribute", `["DeadLetterQueue", "Arn"]`, `["DeadLetterQueue", "ARN"]`, "ARN"},
		{"short-form tag", `{"Ref": "MaxReceiveCount"}`, "!Ref MaxReceiveCount", "long form"},
		{"unknown intrinsic", `Arn: {"Fn::GetAtt": ["EventQueue", "Arn"]}`, `Arn: {"Fn::ImportValue": "queue-arn"}`, "Fn::ImportValue"},
		{"unknown resource type", "Type: AWS::SQS::QueuePolicy", "Type: AWS::SNS::TopicPolicy", "AWS::SNS::TopicPolicy"},
		{"both detail-types in one rule", "detail-type: [AWS API Call via CloudTrail]",
			"detail-type: [AWS API Call via CloudTrail, AWS Service Event via CloudTrail]", "one detail-type"},
		{"missing event name", "RotateSecret, DeleteSecret", "DeleteSecret", "exactly the event names"},
		{"pattern operator", "eventSource: [secretsmanager.amazonaws.com]", `eventSource: [{"prefix": "secretsmanager"}]`, "eventSource"},
		{"redrive to itself", `deadLetterTargetArn: {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}`,
			`deadLetterTargetArn: {"Fn::GetAtt": ["EventQueue", "Arn"]}`, "dead-letter queue"},
		{"no SourceArn condition", "ArnEquals:", "ArnLike:", "only the rules may send"},
		{"a rule left out of SourceArn", `- {"Fn::GetAtt": ["GuardDutyFindingsRule", "Arn"]}`, "", "only the rules may send"},
		{"other senders not denied", "ArnNotEquals:", "ArnNotLike:", "deny sqs:SendMessage to every sender but the rules"},
		{"deny of other senders for another action", "Action: sqs:SendMessage\n            Resource: {\"Fn::GetAtt\": [\"EventQueue\", \"Arn\"]}\n            Condition:\n              ArnNotEquals:",
			"Action: sqs:ReceiveMessage\n            Resource: {\"Fn::GetAtt\": [\"EventQueue\", \"Arn\"]}\n            Condition:\n              ArnNotEquals:", "deny sqs:SendMessage to every sender but the rules"},
		{"any principal may send", "Service: events.amazonaws.com", "Service: sns.amazonaws.com", "events.amazonaws.com"},
		{"wildcard action", `"secretsmanager:RotateSecret"`, `"secretsmanager:*"`, "wildcard action"},
		{"extra action", `"secretsmanager:RotateSecret"`, `"secretsmanager:DeleteSecret"`, "DeleteSecret, which is not needed"},
		{"untagged secrets", `"secretsmanager:ResourceTag/${TenantTagKey}": "false"`,
			`"secretsmanager:ResourceTag/${TenantTagKey}": "true"`, "under condition"},
		{"wildcard resource", `"Resource": "${EventQueue.Arn}"`, `"Resource": "*"`, "wildcard"},
		{"hard-coded tag key", "${Dollar}{aws:PrincipalTag/${TenantTagKey}}", "${!aws:PrincipalTag/TenantId}", "PrincipalTag"},
		{"policy not attached", `- [{"Ref": "RekeyRoleName"}]`, "- []", "attached to"},
		{"unused parameter", "Parameters:\n", "Parameters:\n  Unused:\n    Type: String\n    Default: x\n", "Unused is never used"},
		{"key in the wrong case", "SqsManagedSseEnabled", "sqsManagedSseEnabled", "sqsManagedSseEnabled: unknown field"},
		{"IAM key in the wrong case", `"Sid": "TaggedTenantSecrets",`, `"sid": "TaggedTenantSecrets",`, "sid: unknown field"},
	} {
		t.Run(m.name, func(t *testing.T) {
			bad := strings.Replace(src, m.old, m.new, 1)
			if bad == src {
				t.Fatalf("%q not found in %s", m.old, cfnPath)
			}
			err := awsProblems([]byte(bad), otherParams)
			if err == nil || !strings.Contains(err.Error(), m.want) {
				t.Fatalf("want an error mentioning %q, got %v", m.want, err)
			}
			t.Logf("caught: %v", err)
		})
	}
}

// README.md names every parameter and output, and says how to deploy.
func TestAWSReadme(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("aws", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := loadStack(readTemplate(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	names := slices.Concat(slices.Collect(maps.Keys(s.tmpl.Parameters)), slices.Collect(maps.Keys(s.tmpl.Outputs)),
		[]string{"aws cloudformation deploy", "CAPABILITY_IAM", "queue_url", "tenant_prefix", "tenant_tag", "region"})
	for _, n := range names {
		if !bytes.Contains(b, []byte(n)) {
			t.Errorf("aws/README.md does not mention %s", n)
		}
	}
}
