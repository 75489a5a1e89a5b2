package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// podHolder is a decoded object that has a pod spec somewhere.
type podHolder interface {
	pod() (*metav1.ObjectMeta, *corev1.PodSpec)
}

type (
	pod         struct{ corev1.Pod }
	deployment  struct{ appsv1.Deployment }
	statefulSet struct{ appsv1.StatefulSet }
	daemonSet   struct{ appsv1.DaemonSet }
	replicaSet  struct{ appsv1.ReplicaSet }
	job         struct{ batchv1.Job }
	cronJob     struct{ batchv1.CronJob }
)

func (o *pod) pod() (*metav1.ObjectMeta, *corev1.PodSpec) { return &o.ObjectMeta, &o.Spec }
func (o *deployment) pod() (*metav1.ObjectMeta, *corev1.PodSpec) {
	return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
}
func (o *statefulSet) pod() (*metav1.ObjectMeta, *corev1.PodSpec) {
	return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
}
func (o *daemonSet) pod() (*metav1.ObjectMeta, *corev1.PodSpec) {
	return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
}
func (o *replicaSet) pod() (*metav1.ObjectMeta, *corev1.PodSpec) {
	return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
}
func (o *job) pod() (*metav1.ObjectMeta, *corev1.PodSpec) {
	return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
}
func (o *cronJob) pod() (*metav1.ObjectMeta, *corev1.PodSpec) {
	return &o.Spec.JobTemplate.Spec.Template.ObjectMeta, &o.Spec.JobTemplate.Spec.Template.Spec
}

// holderFor returns an empty object for the workload kinds Manifest
// injects, nil for any other kind.
func holderFor(apiVersion, kind string) podHolder {
	switch apiVersion + "/" + kind {
	case "v1/Pod":
		return &pod{}
	case "apps/v1/Deployment":
		return &deployment{}
	case "apps/v1/StatefulSet":
		return &statefulSet{}
	case "apps/v1/DaemonSet":
		return &daemonSet{}
	case "apps/v1/ReplicaSet":
		return &replicaSet{}
	case "batch/v1/Job":
		return &job{}
	case "batch/v1/CronJob":
		return &cronJob{}
	}
	return nil
}

// Manifest injects every Pod, Deployment, StatefulSet, DaemonSet,
// ReplicaSet, Job and CronJob of a multi-document YAML (or JSON) stream,
// including the items of a v1 List, and returns the stream with the
// documents in their order, separated by "---". A document that is not
// injected (another kind, opted out, already injected) is returned as it
// was, byte for byte, so Manifest applied to its own output returns that
// output unchanged. Workload documents are decoded strictly: an unknown
// field is an error naming the document.
func (c Config) Manifest(data []byte) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("inject: %w", err)
	}
	var out bytes.Buffer
	for i, doc := range splitDocuments(data) {
		res, err := c.document(doc)
		if err != nil {
			return nil, fmt.Errorf("inject: document %d: %w", i+1, err)
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(res)
		if len(res) > 0 && res[len(res)-1] != '\n' {
			out.WriteByte('\n')
		}
	}
	return out.Bytes(), nil
}

// document injects one document, returning it unchanged when there is
// nothing to inject.
func (c Config) document(doc []byte) ([]byte, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	if tm.APIVersion == "v1" && tm.Kind == "List" {
		return c.list(doc)
	}
	out, changed, err := c.object(doc, tm)
	if err != nil || !changed {
		return doc, err
	}
	return yaml.JSONToYAML(out)
}

// object injects one object's JSON or YAML and returns its JSON.
func (c Config) object(doc []byte, tm metav1.TypeMeta) ([]byte, bool, error) {
	h := holderFor(tm.APIVersion, tm.Kind)
	if h == nil {
		return nil, false, nil
	}
	if err := yaml.UnmarshalStrict(doc, h); err != nil {
		return nil, false, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	meta, spec := h.pod()
	changed, err := c.Pod(meta, spec)
	if err != nil || !changed {
		return nil, false, err
	}
	out, err := json.Marshal(h)
	return out, true, err
}

// list injects the items of a v1 List.
func (c Config) list(doc []byte) ([]byte, error) {
	var l struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   json.RawMessage   `json:"metadata,omitempty"`
		Items      []json.RawMessage `json:"items"`
	}
	if err := yaml.UnmarshalStrict(doc, &l); err != nil {
		return nil, fmt.Errorf("kind List: %w", err)
	}
	injected := false
	for i, item := range l.Items {
		var tm metav1.TypeMeta
		if err := json.Unmarshal(item, &tm); err != nil {
			return nil, fmt.Errorf("kind List, items[%d]: %w", i, err)
		}
		out, changed, err := c.object(item, tm)
		if err != nil {
			return nil, fmt.Errorf("kind List, items[%d]: %w", i, err)
		}
		if changed {
			l.Items[i], injected = out, true
		}
	}
	if !injected {
		return doc, nil
	}
	js, err := json.Marshal(l)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(js)
}

// splitDocuments splits a YAML stream on "---" lines, dropping documents
// with nothing but comments and blank lines.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if hasContent(cur.Bytes()) {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if t := strings.TrimRight(string(line), " \t\r\n"); t == "---" || strings.HasPrefix(t, "--- ") {
			flush()
			continue
		}
		cur.Write(line)
	}
	flush()
	return docs
}

func hasContent(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return true
		}
	}
	return false
}
