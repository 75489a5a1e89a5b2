// Package inject adds the meshd sidecar to Kubernetes pod specs: the
// mutation `meshd inject` applies to manifests and `meshd injector` applies
// to pods at admission.
//
// An injected pod gets, in this order:
//
//   - the init container "meshd-init" running `meshd capture`, which
//     installs the traffic-capture rules of the pod's network namespace
//     (inbound TCP to the sidecar's inbound port, outbound TCP to its
//     outbound port, the sidecar's own UID and excluded ports untouched);
//   - the sidecar "meshd-sidecar" running `meshd sidecar` with the bootstrap
//     inline (--config-yaml), its node ID from the downward API
//     (<pod>.<namespace>) and the projected service-account token the
//     control plane reviews (TokenReview) before issuing the pod's SVID. By
//     default it is a native sidecar (an init container with
//     restartPolicy Always, Kubernetes >= 1.29), so it starts before and
//     stops after the application; Config.RegularContainer makes it the
//     first regular container instead;
//   - the volume "meshd-token" (the projected token, audience
//     TokenAudience);
//   - the annotation AnnotationStatus, which makes injection idempotent.
//
// kubelet has no mesh identity to present, so its probes cannot go
// through the sidecar's mTLS inbound listener. Every httpGet, tcpSocket and
// grpc liveness, readiness and startup probe of an application container
// is rewritten to an httpGet on the sidecar's status port (Config.
// StatusPort, excluded from capture) at
// /app-health/<container>/<livez|readyz|startupz>; the original probes
// travel to the sidecar as JSON in its environment (probe.EnvAppProbes),
// and the sidecar performs them against the application on 127.0.0.1
// (package probe). Timing fields (period, thresholds, timeout) stay on the
// rewritten probe; exec probes are left alone. A pod annotated
// AnnotationRewriteProbes "false" keeps its probes, and their ports are
// excluded from inbound capture instead.
//
// A pod is left alone when it opts out (annotation AnnotationInject
// "false"), when it runs on the host network, or when it already carries
// AnnotationStatus.
package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"meshd.dev/meshd/kube/capture"
	"meshd.dev/meshd/kube/probe"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// Annotations and labels the injector reads and writes.
const (
	// AnnotationInject on a pod (or a workload's pod template): "false"
	// opts the pod out of injection. The same key as a namespace label
	// with value "enabled" selects the namespace for the webhook.
	AnnotationInject = "meshd.dev/inject"
	// AnnotationStatus marks an injected pod with the injection format
	// version (StatusVersion); a pod carrying it is never injected again.
	AnnotationStatus = "meshd.dev/injected"
	// AnnotationExcludeInboundPorts and AnnotationExcludeOutboundPorts
	// list ports ("8080,9090") that traffic capture leaves alone, added to
	// Config's own lists.
	AnnotationExcludeInboundPorts  = "meshd.dev/exclude-inbound-ports"
	AnnotationExcludeOutboundPorts = "meshd.dev/exclude-outbound-ports"
	// AnnotationRewriteProbes "false" keeps the application's kubelet
	// probes as they are and excludes their ports from inbound capture,
	// instead of sending them through the sidecar's status port.
	AnnotationRewriteProbes = "meshd.dev/rewrite-probes"
)

// StatusVersion is the value of AnnotationStatus this package writes.
const StatusVersion = "v1"

// Names of what the injector adds.
const (
	SidecarName     = "meshd-sidecar"
	InitName        = "meshd-init"
	TokenVolumeName = "meshd-token"
	// TokenPath is where the sidecar reads its projected service-account
	// token.
	TokenPath = "/var/run/secrets/meshd/token"
	// TokenAudience is the audience of the projected token; the control
	// plane's TokenReview asks for it, so a token minted for another
	// audience (the API server's default one) is refused.
	TokenAudience = "meshd"
)

// Defaults of Config.
const (
	DefaultInboundPort  = capture.DefaultInboundPort
	DefaultOutboundPort = capture.DefaultOutboundPort
	DefaultAdminPort    = 15000
	DefaultStatusPort   = probe.DefaultStatusPort
	// DefaultProxyUID is the sidecar's UID; capture exempts its traffic
	// so the sidecar's own connections are not captured again.
	DefaultProxyUID = capture.DefaultProxyUID
	// DefaultTokenExpiration is the projected token's lifetime in seconds.
	DefaultTokenExpiration = 86400
)

// Config is what the injector adds. The zero value of every field but
// Image and XDSAddress means its default; call Validate (or use a
// constructor that does) before Pod.
type Config struct {
	// Image is the meshd image of the sidecar and the init container.
	// They run only `meshd sidecar` and `meshd capture`, which the
	// sidecar-only build (go build -tags meshd_sidecar ./cmd/meshd) has;
	// an image carrying it keeps every sidecar's memory down, and one
	// carrying the full build (manifests/' meshd:latest, which also runs
	// the control plane and the injector) works as well.
	Image string
	// XDSAddress is the control plane's host:port as the pod sees it
	// (e.g. meshd-control-plane.meshd-system.svc:15010).
	XDSAddress string
	// RegularContainer adds the sidecar as the first regular container
	// instead of a native sidecar (for clusters before 1.29).
	RegularContainer bool
	// InboundPort, OutboundPort and AdminPort are the sidecar's capture
	// listeners and admin port (defaults 15006, 15001, 15000).
	InboundPort, OutboundPort, AdminPort int32
	// StatusPort is the sidecar's status port serving the rewritten
	// probes and its own readiness (default 15021); capture leaves it
	// alone.
	StatusPort int32
	// ProxyUID is the UID the sidecar runs as (default 1337).
	ProxyUID int64
	// ExcludeInboundPorts and ExcludeOutboundPorts are never captured,
	// in every pod.
	ExcludeInboundPorts, ExcludeOutboundPorts []int32
	// TokenExpirationSeconds is the projected token's lifetime (default
	// 86400, at least 600 as kubelet requires).
	TokenExpirationSeconds int64
}

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.InboundPort == 0 {
		c.InboundPort = DefaultInboundPort
	}
	if c.OutboundPort == 0 {
		c.OutboundPort = DefaultOutboundPort
	}
	if c.AdminPort == 0 {
		c.AdminPort = DefaultAdminPort
	}
	if c.StatusPort == 0 {
		c.StatusPort = DefaultStatusPort
	}
	if c.ProxyUID == 0 {
		c.ProxyUID = DefaultProxyUID
	}
	if c.TokenExpirationSeconds == 0 {
		c.TokenExpirationSeconds = DefaultTokenExpiration
	}
	return c
}

// Validate reports the first invalid field of c (after defaults), naming it.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Image == "" {
		errs = append(errs, errors.New("image: required"))
	}
	if _, _, err := splitHostPort(c.XDSAddress); err != nil {
		errs = append(errs, fmt.Errorf("xds address: %w", err))
	}
	ports := map[string]int32{"inbound port": c.InboundPort, "outbound port": c.OutboundPort, "admin port": c.AdminPort, "status port": c.StatusPort}
	names := []string{"inbound port", "outbound port", "admin port", "status port"}
	for _, name := range names {
		if p := ports[name]; p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("%s: %d is not in 1..65535", name, p))
		}
	}
	for i, a := range names {
		for _, b := range names[i+1:] {
			if ports[a] == ports[b] {
				errs = append(errs, fmt.Errorf("%s and %s must differ (both %d)", a, b, ports[a]))
			}
		}
	}
	if c.ProxyUID < 1 {
		errs = append(errs, fmt.Errorf("proxy uid: %d must be positive (root's traffic cannot be told from the app's)", c.ProxyUID))
	}
	if c.TokenExpirationSeconds < 600 {
		errs = append(errs, fmt.Errorf("token expiration: %ds is below kubelet's minimum of 600s", c.TokenExpirationSeconds))
	}
	for _, p := range slices.Concat(c.ExcludeInboundPorts, c.ExcludeOutboundPorts) {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("excluded port %d is not in 1..65535", p))
		}
	}
	return errors.Join(errs...)
}

// Skip reports why a pod with meta and spec is not injected, or "" when it
// should be.
func Skip(meta *metav1.ObjectMeta, spec *corev1.PodSpec) string {
	switch {
	case meta.Annotations[AnnotationStatus] != "":
		return "already injected (" + AnnotationStatus + ")"
	case strings.EqualFold(meta.Annotations[AnnotationInject], "false"):
		return "opted out (" + AnnotationInject + ": \"false\")"
	case spec.HostNetwork:
		return "hostNetwork pods share the node's network namespace"
	}
	return ""
}

// Pod injects the sidecar into the pod (or pod template) with meta and
// spec, in place. It returns false, changing nothing, when Skip says so; an
// error (nothing changed) when c is invalid or an annotation of the pod
// does not parse.
func (c Config) Pod(meta *metav1.ObjectMeta, spec *corev1.PodSpec) (bool, error) {
	if err := c.Validate(); err != nil {
		return false, fmt.Errorf("inject: %w", err)
	}
	if Skip(meta, spec) != "" {
		return false, nil
	}
	c = c.withDefaults()
	exIn, err := parsePorts(meta.Annotations[AnnotationExcludeInboundPorts])
	if err != nil {
		return false, fmt.Errorf("inject: annotation %s: %w", AnnotationExcludeInboundPorts, err)
	}
	exOut, err := parsePorts(meta.Annotations[AnnotationExcludeOutboundPorts])
	if err != nil {
		return false, fmt.Errorf("inject: annotation %s: %w", AnnotationExcludeOutboundPorts, err)
	}
	for _, name := range []string{SidecarName, InitName} {
		if hasContainer(spec, name) {
			return false, fmt.Errorf("inject: the pod already has a container named %q but no %s annotation", name, AnnotationStatus)
		}
	}
	bootstrap, err := c.bootstrap()
	if err != nil {
		return false, err
	}
	// kubelet reaches the status port directly.
	exIn = slices.Concat(c.ExcludeInboundPorts, exIn, []int32{c.StatusPort})
	exOut = slices.Concat(c.ExcludeOutboundPorts, exOut)
	var probes map[string]*probe.Prober
	containers := spec.Containers
	if strings.EqualFold(meta.Annotations[AnnotationRewriteProbes], "false") {
		exIn = append(exIn, probePorts(spec)...)
	} else if containers, probes, err = c.rewriteProbes(spec.Containers); err != nil {
		return false, fmt.Errorf("inject: %w", err)
	}

	sidecar, err := c.sidecar(bootstrap, probes)
	if err != nil {
		return false, err
	}
	spec.Containers = containers
	init := c.captureInit(exIn, exOut)
	if c.RegularContainer {
		spec.InitContainers = append([]corev1.Container{init}, spec.InitContainers...)
		spec.Containers = append([]corev1.Container{sidecar}, spec.Containers...)
	} else {
		always := corev1.ContainerRestartPolicyAlways
		sidecar.RestartPolicy = &always
		spec.InitContainers = append([]corev1.Container{init, sidecar}, spec.InitContainers...)
	}
	expiration := c.TokenExpirationSeconds
	spec.Volumes = append(spec.Volumes, corev1.Volume{
		Name: TokenVolumeName,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience:          TokenAudience,
				ExpirationSeconds: &expiration,
				Path:              "token",
			}}},
		}},
	})
	if meta.Annotations == nil {
		meta.Annotations = map[string]string{}
	}
	meta.Annotations[AnnotationStatus] = StatusVersion
	return true, nil
}

// bootstrap is the sidecar's Envoy bootstrap as YAML: ADS to the control
// plane and admin on 127.0.0.1:AdminPort. The node ID is a placeholder the
// sidecar's --service-node replaces.
func (c Config) bootstrap() (string, error) {
	const placeholder = "pod.namespace"
	m, err := model.Parse(fmt.Appendf(nil, `apiVersion: %s
kind: Workload
metadata: {name: pod, namespace: namespace}
spec: {serviceAccount: default, admin: "127.0.0.1:%d"}
`, model.APIVersion, c.AdminPort), "inject")
	if err != nil {
		return "", fmt.Errorf("inject: bootstrap: %w", err)
	}
	b, err := translate.Bootstrap(m, placeholder, c.XDSAddress)
	if err != nil {
		return "", fmt.Errorf("inject: bootstrap: %w", err)
	}
	return bootstrapYAML(b)
}

func bootstrapYAML(b *bootstrapv3.Bootstrap) (string, error) {
	js, err := protojson.Marshal(b)
	if err != nil {
		return "", fmt.Errorf("inject: bootstrap: %w", err)
	}
	y, err := yaml.JSONToYAML(js)
	if err != nil {
		return "", fmt.Errorf("inject: bootstrap: %w", err)
	}
	return string(y), nil
}

// sidecar is the sidecar container; probes (nil: none) are the
// application's original probes it performs on the status port.
func (c Config) sidecar(bootstrap string, probes map[string]*probe.Prober) (corev1.Container, error) {
	uid := c.ProxyUID
	no, yes := false, true
	env := []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
	}
	if len(probes) > 0 {
		js, err := json.Marshal(probes) // map keys sorted: deterministic
		if err != nil {
			return corev1.Container{}, fmt.Errorf("inject: probes: %w", err)
		}
		env = append(env, corev1.EnvVar{Name: probe.EnvAppProbes, Value: string(js)})
	}
	return corev1.Container{
		Name:  SidecarName,
		Image: c.Image,
		Args: []string{
			"sidecar",
			"--config-yaml", bootstrap,
			"--service-node", "$(POD_NAME).$(POD_NAMESPACE)",
			"--token-file", TokenPath,
			"--status-address", ":" + strconv.Itoa(int(c.StatusPort)),
		},
		Env:   env,
		Ports: []corev1.ContainerPort{{Name: "meshd-status", ContainerPort: c.StatusPort, Protocol: corev1.ProtocolTCP}},
		// The admin API binds 127.0.0.1 only, since it can drain and
		// stop the sidecar; kubelet probes come from the node to the
		// pod IP, so readiness is asked of the status port.
		ReadinessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: probe.ReadyPath, Port: intstr.FromInt32(c.StatusPort), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds:    2,
			FailureThreshold: 30,
		},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("50m"),
			corev1.ResourceMemory: resource.MustParse("64Mi"),
		}},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			RunAsNonRoot:             &yes,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: []corev1.VolumeMount{{Name: TokenVolumeName, MountPath: "/var/run/secrets/meshd", ReadOnly: true}},
	}, nil
}

// captureInit is the init container installing the capture rules: root
// with NET_ADMIN and NET_RAW only, for the pod's network namespace.
func (c Config) captureInit(exIn, exOut []int32) corev1.Container {
	root := int64(0)
	no := false
	args := []string{
		"capture",
		"--inbound-port", strconv.Itoa(int(c.InboundPort)),
		"--outbound-port", strconv.Itoa(int(c.OutboundPort)),
		"--proxy-uid", strconv.FormatInt(c.ProxyUID, 10),
	}
	if s := joinPorts(exIn); s != "" {
		args = append(args, "--exclude-inbound-ports", s)
	}
	if s := joinPorts(exOut); s != "" {
		args = append(args, "--exclude-outbound-ports", s)
	}
	return corev1.Container{
		Name:  InitName,
		Image: c.Image,
		Args:  args,
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("10m"),
			corev1.ResourceMemory: resource.MustParse("16Mi"),
		}},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &root,
			RunAsNonRoot:             &no,
			AllowPrivilegeEscalation: &no,
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
		},
	}
}

// rewriteProbes returns copies of containers whose httpGet, tcpSocket and
// grpc probes point at the status port, and the original probes by status
// path (nil when there are none). A probe already on the status port at its
// own path stays as it is, so rewriting is idempotent. Named ports are
// resolved against the container's ports; one that names none is an error.
func (c Config) rewriteProbes(containers []corev1.Container) ([]corev1.Container, map[string]*probe.Prober, error) {
	out := make([]corev1.Container, len(containers))
	var probes map[string]*probe.Prober
	for i := range containers {
		ct := containers[i].DeepCopy()
		for _, slot := range []struct {
			p    **corev1.Probe
			kind string
			name string
		}{
			{&ct.LivenessProbe, probe.Liveness, "livenessProbe"},
			{&ct.ReadinessProbe, probe.Readiness, "readinessProbe"},
			{&ct.StartupProbe, probe.Startup, "startupProbe"},
		} {
			p := *slot.p
			if p == nil {
				continue
			}
			path := probe.Path(ct.Name, slot.kind)
			if h := p.HTTPGet; h != nil && h.Port.Type == intstr.Int && h.Port.IntVal == c.StatusPort && h.Path == path {
				continue // already rewritten
			}
			port, ok := probeTarget(p)
			if !ok {
				continue // exec: runs in the container, no network
			}
			n := port.IntVal
			if port.Type == intstr.String {
				if n, ok = containerPort(ct, port.StrVal); !ok {
					return nil, nil, fmt.Errorf("container %q %s: port %q names none of the container's ports", ct.Name, slot.name, port.StrVal)
				}
			}
			orig := prober(p, n)
			if err := orig.Validate(); err != nil {
				return nil, nil, fmt.Errorf("container %q %s: %w", ct.Name, slot.name, err)
			}
			if probes == nil {
				probes = map[string]*probe.Prober{}
			}
			probes[path] = orig
			p.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(c.StatusPort), Scheme: corev1.URISchemeHTTP,
			}}
		}
		out[i] = *ct
	}
	return out, probes, nil
}

// prober is p's action as the sidecar runs it, on the numeric port.
func prober(p *corev1.Probe, port int32) *probe.Prober {
	out := &probe.Prober{TimeoutSeconds: p.TimeoutSeconds}
	switch {
	case p.HTTPGet != nil:
		h := &probe.HTTPGetAction{Path: p.HTTPGet.Path, Port: port, Host: p.HTTPGet.Host, Scheme: string(p.HTTPGet.Scheme)}
		for _, hd := range p.HTTPGet.HTTPHeaders {
			h.HTTPHeaders = append(h.HTTPHeaders, probe.HTTPHeader{Name: hd.Name, Value: hd.Value})
		}
		out.HTTPGet = h
	case p.TCPSocket != nil:
		out.TCPSocket = &probe.TCPSocketAction{Port: port, Host: p.TCPSocket.Host}
	case p.GRPC != nil:
		g := &probe.GRPCAction{Port: port}
		if p.GRPC.Service != nil {
			svc := *p.GRPC.Service
			g.Service = &svc
		}
		out.GRPC = g
	}
	return out
}

// containerPort resolves the named port of ct.
func containerPort(ct *corev1.Container, name string) (int32, bool) {
	for _, cp := range ct.Ports {
		if cp.Name == name {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// probeTarget returns the port a network probe (httpGet, tcpSocket or
// grpc) targets, a number or a container port's name; ok is false for an
// exec probe, which runs in the container.
func probeTarget(p *corev1.Probe) (port intstr.IntOrString, ok bool) {
	switch {
	case p.HTTPGet != nil:
		return p.HTTPGet.Port, true
	case p.TCPSocket != nil:
		return p.TCPSocket.Port, true
	case p.GRPC != nil:
		return intstr.FromInt32(p.GRPC.Port), true
	}
	return intstr.IntOrString{}, false
}

// probePorts returns the numeric ports of the application's kubelet
// probes, so that capture leaves them alone. Named ports are resolved
// against the containers' ports.
func probePorts(spec *corev1.PodSpec) []int32 {
	var out []int32
	for i := range spec.Containers {
		c := &spec.Containers[i]
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if p == nil {
				continue
			}
			port, ok := probeTarget(p)
			if !ok {
				continue // exec: runs in the container, no network
			}
			n := port.IntVal
			if port.Type == intstr.String {
				if n, ok = containerPort(c, port.StrVal); !ok {
					continue
				}
			}
			out = append(out, n)
		}
	}
	return out
}

func hasContainer(spec *corev1.PodSpec, name string) bool {
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			if c.Name == name {
				return true
			}
		}
	}
	return false
}

// parsePorts parses "80,8080" (spaces allowed, empty is none).
func parsePorts(s string) ([]int32, error) {
	var out []int32
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.ParseUint(f, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("%q is not a port in 1..65535", f)
		}
		out = append(out, int32(p))
	}
	return out, nil
}

// joinPorts returns the sorted, deduplicated ports as "a,b,c".
func joinPorts(ports []int32) string {
	ports = slices.Clone(ports)
	slices.Sort(ports)
	ports = slices.Compact(ports)
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

func splitHostPort(addr string) (string, int, error) {
	i := strings.LastIndexByte(addr, ':')
	if i <= 0 {
		return "", 0, fmt.Errorf("%q is not host:port", addr)
	}
	p, err := strconv.ParseUint(addr[i+1:], 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("%q: the port is not in 1..65535", addr)
	}
	return addr[:i], int(p), nil
}
