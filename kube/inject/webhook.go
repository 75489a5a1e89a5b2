package inject

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxReviewBytes bounds an AdmissionReview body (the API server caps
// objects at 3 MiB in etcd; reviews carry one object plus metadata).
const maxReviewBytes = 8 << 20

// PatchOp is one RFC 6902 JSON Patch operation.
type PatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// PodPatch returns the JSON Patch that injects pod, or nil when Skip says
// the pod is left alone. The patch "add"s whole members (annotations, init
// containers, containers, volumes) with their injected values, which RFC
// 6902 defines as a replace for a member that exists, so applying it to the
// pod gives exactly what Pod produces.
func (c Config) PodPatch(pod *corev1.Pod) ([]PatchOp, error) {
	injected := pod.DeepCopy()
	changed, err := c.Pod(&injected.ObjectMeta, &injected.Spec)
	if err != nil || !changed {
		return nil, err
	}
	var ops []PatchOp
	add := func(path string, before, after any) {
		if !reflect.DeepEqual(before, after) {
			ops = append(ops, PatchOp{Op: "add", Path: path, Value: after})
		}
	}
	add("/metadata/annotations", pod.Annotations, injected.Annotations)
	add("/spec/initContainers", pod.Spec.InitContainers, injected.Spec.InitContainers)
	add("/spec/containers", pod.Spec.Containers, injected.Spec.Containers)
	add("/spec/volumes", pod.Spec.Volumes, injected.Spec.Volumes)
	return ops, nil
}

// Webhook serves the injection as a mutating admission webhook
// (admission.k8s.io/v1 AdmissionReview over HTTPS, the caller's TLS). A
// pod is answered with allowed and a JSONPatch, or with allowed and no
// patch when it is left alone; any other resource is allowed untouched. A
// request that is not a valid AdmissionReview gets 400; a pod the injector
// cannot inject (a bad annotation) is denied with the reason, so the
// failure shows in the creating client's error.
type Webhook struct {
	Config Config
	// Logger receives one line per review; nil discards them.
	Logger *slog.Logger
}

// ServeHTTP implements http.Handler.
func (wh *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := wh.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		http.Error(w, fmt.Sprintf("Content-Type %q: want application/json", ct), http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReviewBytes+1))
	if err != nil || len(body) > maxReviewBytes {
		http.Error(w, "reading the AdmissionReview: too large or truncated", http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		http.Error(w, "decoding the AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview" || review.Request == nil {
		http.Error(w, "want an admission.k8s.io/v1 AdmissionReview with a request", http.StatusBadRequest)
		return
	}
	req := review.Request
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Group == "" && req.Kind.Kind == "Pod" && req.Operation == admissionv1.Create {
		wh.review(log, req, resp)
	}
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// review fills resp for a pod creation.
func (wh *Webhook) review(log *slog.Logger, req *admissionv1.AdmissionRequest, resp *admissionv1.AdmissionResponse) {
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusBadRequest, Message: "meshd injector: decoding the pod: " + err.Error()}
		return
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	log = log.With("namespace", req.Namespace, "pod", name, "uid", string(req.UID))
	if why := Skip(&pod.ObjectMeta, &pod.Spec); why != "" {
		log.Info("pod not injected", "reason", why)
		return
	}
	ops, err := wh.Config.PodPatch(&pod)
	if err != nil {
		log.Warn("pod refused", "err", err)
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusUnprocessableEntity, Message: "meshd injector: " + err.Error()}
		return
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusInternalServerError, Message: "meshd injector: " + err.Error()}
		return
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	log.Info("pod injected", "ops", len(ops))
}
