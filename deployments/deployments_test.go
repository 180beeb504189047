// Tests of the deployment files: every Kubernetes manifest decodes strictly
// into its API type (a misspelt field fails), the ConfigMap's rekey.yaml is a
// valid rekey configuration, the probes, ports and kustomizations agree, the
// NATS Helm values grant what rekey's own users get, and the Grafana
// dashboard only queries metrics rekeyd exports.
package deployments_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/rekey-dev/rekey/orchestrator"
)

const k8sDir = "kubernetes"

// serviceMonitor is the part of monitoring.coreos.com/v1 ServiceMonitor
// these manifests may use; anything else fails the strict decode.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port,omitempty"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
			HonorLabels   bool   `json:"honorLabels,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// kustomization is the part of kustomize.config.k8s.io/v1beta1
// Kustomization these files may use.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
	} `json:"labels,omitempty"`
	Resources []string `json:"resources,omitempty"`
	Replicas  []struct {
		Name  string `json:"name"`
		Count int    `json:"count"`
	} `json:"replicas,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
	Patches []struct {
		Path string `json:"path"`
	} `json:"patches,omitempty"`
}

// manifest is one decoded Kubernetes object.
type manifest struct {
	path string
	obj  any
}

// newObject returns the typed object for apiVersion/kind, nil if unknown.
func newObject(tm metav1.TypeMeta) any {
	switch tm.APIVersion + "/" + tm.Kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}
	case "v1/Service":
		return &corev1.Service{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &serviceMonitor{}
	case "kustomize.config.k8s.io/v1beta1/Kustomization":
		return &kustomization{}
	}
	return nil
}

// loadAll decodes every YAML file under kubernetes/ strictly.
func loadAll(t *testing.T) []manifest {
	t.Helper()
	var out []manifest
	err := filepath.WalkDir(k8sDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			t.Errorf("%s: unexpected file (manifests are .yaml)", path)
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, doc := range splitDocs(b) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Errorf("%s (document %d): %v", path, i, err)
				continue
			}
			obj := newObject(tm)
			if obj == nil {
				t.Errorf("%s (document %d): unknown apiVersion %q kind %q", path, i, tm.APIVersion, tm.Kind)
				continue
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Errorf("%s (document %d): %s: %v", path, i, tm.Kind, err)
				continue
			}
			out = append(out, manifest{path: path, obj: obj})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no manifests found")
	}
	return out
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

func splitDocs(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range docSep.Split(string(b), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func find[T any](ms []manifest, path string) *T {
	for _, m := range ms {
		if o, ok := m.obj.(*T); ok && filepath.ToSlash(m.path) == path {
			return o
		}
	}
	return nil
}

func TestManifestsDecodeStrictly(t *testing.T) {
	ms := loadAll(t)
	for _, m := range ms {
		t.Logf("%s: %T", m.path, m.obj)
	}
}

// The strict decode must catch a misspelt field, or the test above proves nothing.
func TestStrictDecodeCatchesTypos(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(k8sDir, "base", "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), "readinessProbe:", "readynessProbe:", 1)
	if bad == string(b) {
		t.Fatal("readinessProbe not found in deployment.yaml")
	}
	if err := yaml.UnmarshalStrict([]byte(bad), &appsv1.Deployment{}); err == nil {
		t.Fatal("a misspelt field was accepted")
	}
	sm := "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec:\n  selector: {}\n  endpoints: [{port: http, intervall: 30s}]\n"
	if err := yaml.UnmarshalStrict([]byte(sm), &serviceMonitor{}); err == nil {
		t.Fatal("a misspelt ServiceMonitor field was accepted")
	}
}

// Every ConfigMap (the base and the overlays' patches) holds a valid rekey.yaml.
func TestConfigMapsParse(t *testing.T) {
	n := 0
	for _, m := range loadAll(t) {
		cm, ok := m.obj.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		y, ok := cm.Data["rekey.yaml"]
		if !ok {
			t.Errorf("%s: no rekey.yaml in data", m.path)
			continue
		}
		if _, err := orchestrator.Parse([]byte(y)); err != nil {
			t.Errorf("%s: rekey.yaml: %v", m.path, err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no ConfigMap with rekey.yaml")
	}
}

func TestBaseDeployment(t *testing.T) {
	ms := loadAll(t)
	dep := find[appsv1.Deployment](ms, "kubernetes/base/deployment.yaml")
	cm := find[corev1.ConfigMap](ms, "kubernetes/base/configmap.yaml")
	svc := find[corev1.Service](ms, "kubernetes/base/service.yaml")
	pdb := find[policyv1.PodDisruptionBudget](ms, "kubernetes/base/pdb.yaml")
	np := find[networkingv1.NetworkPolicy](ms, "kubernetes/base/networkpolicy.yaml")
	sm := find[serviceMonitor](ms, "kubernetes/base/servicemonitor.yaml")
	if dep == nil || cm == nil || svc == nil || pdb == nil || np == nil || sm == nil {
		t.Fatal("base is missing a Deployment, ConfigMap, Service, PodDisruptionBudget, NetworkPolicy or ServiceMonitor")
	}
	cfg, err := orchestrator.Parse([]byte(cm.Data["rekey.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NATS.URL == "" || cfg.NATS.Replicas != 3 {
		t.Errorf("base config: want an external NATS with 3 replicas, got url %q replicas %d", cfg.NATS.URL, cfg.NATS.Replicas)
	}
	_, httpPort, err := net.SplitHostPort(cfg.HTTP.Addr)
	if err != nil {
		t.Fatal(err)
	}

	spec := dep.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(spec.Containers))
	}
	c := spec.Containers[0]
	portByName := map[string]int32{}
	for _, p := range c.Ports {
		portByName[p.Name] = p.ContainerPort
	}
	resolve := func(what string, g *corev1.HTTPGetAction) int32 {
		if g == nil {
			t.Errorf("%s: not an httpGet probe", what)
			return 0
		}
		if g.Port.StrVal != "" {
			p, ok := portByName[g.Port.StrVal]
			if !ok {
				t.Errorf("%s: port %q is not a container port", what, g.Port.StrVal)
			}
			return p
		}
		return g.Port.IntVal
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"livenessProbe", c.LivenessProbe, "/healthz"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
		{"startupProbe", c.StartupProbe, "/healthz"},
	} {
		if p.probe == nil {
			t.Errorf("%s missing", p.name)
			continue
		}
		if got := resolve(p.name, p.probe.HTTPGet); fmt.Sprint(got) != httpPort {
			t.Errorf("%s: port %d, http.addr port is %s", p.name, got, httpPort)
		}
		if p.probe.HTTPGet != nil && p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s: path %q, want %q", p.name, p.probe.HTTPGet.Path, p.path)
		}
	}
	if fmt.Sprint(portByName["http"]) != httpPort {
		t.Errorf("container port http is %d, http.addr port is %s", portByName["http"], httpPort)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.StrVal != "http" || fmt.Sprint(svc.Spec.Ports[0].Port) != httpPort {
		t.Errorf("service ports %+v: want port %s targetPort http", svc.Spec.Ports, httpPort)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != svc.Spec.Ports[0].Name || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v: want the service's port and /metrics", sm.Spec.Endpoints)
	}

	// The selectors of the Service, PDB, NetworkPolicy and ServiceMonitor select the pods.
	podLabels := dep.Spec.Template.Labels
	for name, sel := range map[string]map[string]string{
		"deployment":     dep.Spec.Selector.MatchLabels,
		"service":        svc.Spec.Selector,
		"pdb":            pdb.Spec.Selector.MatchLabels,
		"networkpolicy":  np.Spec.PodSelector.MatchLabels,
		"servicemonitor": sm.Spec.Selector.MatchLabels,
	} {
		if len(sel) == 0 {
			t.Errorf("%s: empty selector", name)
		}
		for k, v := range sel {
			if podLabels[k] != v {
				t.Errorf("%s: selector %s=%s does not match the pod labels %v", name, k, v, podLabels)
			}
		}
	}
	// ServiceMonitor selects the Service by its labels.
	for k, v := range sm.Spec.Selector.MatchLabels {
		if svc.Labels[k] != v {
			t.Errorf("servicemonitor selector %s=%s does not match the service labels %v", k, v, svc.Labels)
		}
	}
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 2 {
		t.Errorf("pdb minAvailable %v, want 2", pdb.Spec.MinAvailable)
	}
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", dep.Spec.Replicas)
	}

	// --config points at the mounted ConfigMap, data dir is writable.
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	var configPath string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			configPath = v
		}
	}
	m, ok := mounts[filepath.Dir(configPath)]
	if !ok || volumes[m.Name].ConfigMap == nil || volumes[m.Name].ConfigMap.Name != cm.Name {
		t.Errorf("--config=%s is not in a mount of ConfigMap %s", configPath, cm.Name)
	}
	if dm, ok := mounts[cfg.DataDir]; !ok || dm.ReadOnly || volumes[dm.Name].EmptyDir == nil {
		t.Errorf("data_dir %s is not a writable emptyDir mount", cfg.DataDir)
	}

	// Security context.
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Error("pod must run as non-root")
	}
	for _, ct := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		sc := ct.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: want readOnlyRootFilesystem and no privilege escalation", ct.Name)
		}
		if ct.Resources.Requests == nil || ct.Resources.Limits.Memory().IsZero() {
			t.Errorf("container %s: want requests and a memory limit", ct.Name)
		}
	}
	if v := volumes["local-key"]; v.Secret == nil || v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o400 {
		t.Errorf("local-key volume: want Secret with defaultMode 0400, got %+v", v.Secret)
	}

	// Secret references: admin token and NATS password, the latter used in --nats-url.
	env := map[string]*corev1.EnvVarSource{}
	for _, e := range c.Env {
		env[e.Name] = e.ValueFrom
	}
	for name, want := range map[string][2]string{
		"REKEY_ADMIN_TOKEN":    {"rekey-admin", "token"},
		"REKEYD_NATS_PASSWORD": {"rekey-nats", "password"},
	} {
		src := env[name]
		if src == nil || src.SecretKeyRef == nil || src.SecretKeyRef.Name != want[0] || src.SecretKeyRef.Key != want[1] {
			t.Errorf("env %s: want Secret %s key %s", name, want[0], want[1])
		}
	}
	if !slices.ContainsFunc(c.Args, func(a string) bool {
		return strings.HasPrefix(a, "--nats-url=nats://"+orchestrator.RekeydUser+":$(REKEYD_NATS_PASSWORD)@")
	}) {
		t.Errorf("args %v: want --nats-url with user %s and $(REKEYD_NATS_PASSWORD)", c.Args, orchestrator.RekeydUser)
	}
}

// Every resource and patch a kustomization names exists, and every file
// under kubernetes/ is reachable from a kustomization (so none goes unchecked
// or undeployed).
func TestKustomizations(t *testing.T) {
	used := map[string]bool{}
	for _, m := range loadAll(t) {
		k, ok := m.obj.(*kustomization)
		if !ok {
			continue
		}
		if filepath.Base(m.path) != "kustomization.yaml" {
			t.Errorf("%s: a Kustomization must be named kustomization.yaml", m.path)
		}
		used[filepath.Clean(m.path)] = true
		dir := filepath.Dir(m.path)
		var refs []string
		refs = append(refs, k.Resources...)
		for _, p := range k.Patches {
			refs = append(refs, p.Path)
		}
		for _, r := range refs {
			p := filepath.Join(dir, r)
			fi, err := os.Stat(p)
			if err != nil {
				t.Errorf("%s: %s: %v", m.path, r, err)
				continue
			}
			if fi.IsDir() {
				if _, err := os.Stat(filepath.Join(p, "kustomization.yaml")); err != nil {
					t.Errorf("%s: directory %s has no kustomization.yaml", m.path, r)
				}
				continue
			}
			used[filepath.Clean(p)] = true
		}
	}
	for _, o := range []string{"dev", "prod"} {
		if !used[filepath.Join(k8sDir, "overlays", o, "kustomization.yaml")] {
			t.Errorf("overlay %s missing", o)
		}
	}
	for _, m := range loadAll(t) {
		if !used[filepath.Clean(m.path)] {
			t.Errorf("%s is not named by any kustomization", m.path)
		}
	}
}

// The users in the NATS Helm values are the ones `rekeyctl nats-config`
// prints for the base configuration's tenants, with the same permissions
// and password variables.
func TestNATSValues(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("nats", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	type perm struct {
		Allow []string `json:"allow"`
	}
	var v struct {
		Config struct {
			Cluster struct {
				Enabled  bool `json:"enabled"`
				Replicas int  `json:"replicas"`
			} `json:"cluster"`
			JetStream struct {
				Enabled   bool `json:"enabled"`
				FileStore struct {
					Enabled bool `json:"enabled"`
				} `json:"fileStore"`
			} `json:"jetstream"`
			Merge struct {
				Accounts map[string]struct {
					JetStream string `json:"jetstream"`
					Users     []struct {
						User        string `json:"user"`
						Password    string `json:"password"`
						Permissions *struct {
							Publish   perm `json:"publish"`
							Subscribe perm `json:"subscribe"`
						} `json:"permissions"`
					} `json:"users"`
				} `json:"accounts"`
			} `json:"merge"`
		} `json:"config"`
		Container struct {
			Env map[string]corev1.EnvVar `json:"env"`
		} `json:"container"`
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if !v.Config.Cluster.Enabled || v.Config.Cluster.Replicas != 3 || !v.Config.JetStream.Enabled || !v.Config.JetStream.FileStore.Enabled {
		t.Errorf("want a 3-node cluster with JetStream on file storage: %+v", v.Config)
	}

	cmb, err := os.ReadFile(filepath.Join(k8sDir, "base", "configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(cmb, &cm); err != nil {
		t.Fatal(err)
	}
	cfg, err := orchestrator.Parse([]byte(cm.Data["rekey.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	// user -> password variable, from the block rekeyctl nats-config prints.
	wantVars := map[string]string{}
	for _, m := range regexp.MustCompile(`user: "([^"]+)", password: \$([A-Z0-9_]+)`).FindAllStringSubmatch(orchestrator.NATSConfigBlock(cfg.TenantNames()), -1) {
		wantVars[m[1]] = m[2]
	}
	if len(wantVars) != 1+len(orchestrator.Roles)+len(cfg.TenantNames()) {
		t.Fatalf("parsed %d users from NATSConfigBlock: %v", len(wantVars), wantVars)
	}

	acct, ok := v.Config.Merge.Accounts["REKEY"]
	if !ok || acct.JetStream != "enabled" {
		t.Fatal("want account REKEY with jetstream: enabled")
	}
	got := map[string]bool{}
	for _, u := range acct.Users {
		got[u.User] = true
		envVar, ok := wantVars[u.User]
		if !ok {
			t.Errorf("user %s is not a rekey user", u.User)
			continue
		}
		if u.Password != "<< $"+envVar+" >>" {
			t.Errorf("user %s: password %q, want << $%s >>", u.User, u.Password, envVar)
		}
		if e, ok := v.Container.Env[envVar]; !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("container.env has no Secret reference for %s", envVar)
		}
		if u.User == orchestrator.RekeydUser {
			if u.Permissions != nil {
				t.Errorf("user %s must not be restricted", u.User)
			}
			continue
		}
		var want *server.Permissions
		for _, r := range orchestrator.Roles {
			if u.User == orchestrator.RoleUser(r) {
				want = orchestrator.RolePermissions(r, cfg.TenantNames())
			}
		}
		if want == nil {
			want = orchestrator.AgentPermissions(strings.TrimPrefix(u.User, "agent-"))
		}
		if u.Permissions == nil ||
			!reflect.DeepEqual(u.Permissions.Publish.Allow, want.Publish.Allow) ||
			!reflect.DeepEqual(u.Permissions.Subscribe.Allow, want.Subscribe.Allow) {
			t.Errorf("user %s: permissions %+v, want publish %v subscribe %v", u.User, u.Permissions, want.Publish.Allow, want.Subscribe.Allow)
		}
	}
	for u := range wantVars {
		if !got[u] {
			t.Errorf("user %s missing from account REKEY", u)
		}
	}
}

// triggerMetrics are registered by the triggers (siem, usage, leak,
// vaultevents, awsevents, api/tenantauth) on rekeyd's registry; README.md
// lists them under GET /metrics.
var triggerMetrics = []string{
	"rekey_siem_alerts_total",
	"rekey_usage_reports_total",
	"rekey_leak_reports_total",
	"rekey_vault_events_total",
	"rekey_aws_messages_received_total",
	"rekey_aws_messages_total",
	"rekey_aws_eventbridge_events_total",
	"rekey_tenant_auth_total",
	"rekey_selfservice_rate_limited_total",
}

// knownSeries returns every series name rekeyd exports: the metrics of
// orchestrator.NewMetrics (vectors included, which Gather only reports once
// a label value was used), the Go and process collectors, and the trigger
// metrics; histograms with their _bucket, _sum and _count series.
func knownSeries(t *testing.T) map[string]bool {
	t.Helper()
	m := orchestrator.NewMetrics()
	names := map[string]bool{}
	histogram := func(n string) {
		for _, s := range []string{"", "_bucket", "_sum", "_count"} {
			names[n+s] = true
		}
	}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	mv := reflect.ValueOf(m).Elem()
	for i := range mv.NumField() {
		c, ok := mv.Field(i).Interface().(prometheus.Collector)
		if !ok || mv.Type().Field(i).Name == "Registry" {
			continue
		}
		_, isHist := c.(prometheus.Histogram)
		_, isHistVec := c.(*prometheus.HistogramVec)
		ch := make(chan *prometheus.Desc, 16)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			sm := fqName.FindStringSubmatch(d.String())
			if sm == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			if isHist || isHistVec {
				histogram(sm[1])
			} else {
				names[sm[1]] = true
			}
		}
	}
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetType().String() {
		case "HISTOGRAM", "GAUGE_HISTOGRAM":
			histogram(mf.GetName())
		case "SUMMARY":
			names[mf.GetName()+"_sum"] = true
			names[mf.GetName()+"_count"] = true
			names[mf.GetName()] = true
		default:
			names[mf.GetName()] = true
		}
	}
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range triggerMetrics {
		if !strings.Contains(string(readme), "`"+n) {
			t.Errorf("trigger metric %s is not in README.md", n)
		}
		names[n] = true
	}
	return names
}

func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("grafana", "rekey-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string `json:"title"`
			Type       string `json:"type"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || d.UID == "" {
		t.Error("dashboard needs a title and a uid")
	}
	hasDS := slices.ContainsFunc(d.Templating.List, func(v struct {
		Name  string          `json:"name"`
		Type  string          `json:"type"`
		Query json.RawMessage `json:"query"`
	}) bool {
		return v.Type == "datasource" && v.Name == "datasource" && string(v.Query) == `"prometheus"`
	})
	if !hasDS {
		t.Error("dashboard needs a templated Prometheus datasource variable named datasource")
	}

	known := knownSeries(t)
	metricName := regexp.MustCompile(`\b(?:rekey|go|process)_[a-zA-Z0-9_]+`)
	var exprs []string
	for _, v := range d.Templating.List {
		exprs = append(exprs, string(v.Query))
	}
	targets := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource must be ${datasource}", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			targets++
		}
	}
	seen := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricName.FindAllString(e, -1) {
			seen[n] = true
			if !known[n] {
				t.Errorf("dashboard queries %s, which rekeyd does not export", n)
			}
		}
	}
	for _, n := range []string{
		"rekey_rotations_total", "rekey_rotation_duration_seconds_bucket", "rekey_invalidation_latency_seconds_bucket",
		"rekey_requests_total", "rekey_http_requests_total", "rekey_siem_alerts_total", "rekey_revocation_duration_seconds_bucket",
	} {
		if !seen[n] {
			t.Errorf("dashboard does not chart %s", n)
		}
	}
	t.Logf("%d panels, %d queries, %d metric names, all exported by rekeyd", len(d.Panels), targets, len(seen))
}
