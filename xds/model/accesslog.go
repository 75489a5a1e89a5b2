package model

import (
	"path"
	"strings"
)

// AccessLogSpec is Mesh.spec.accessLog: one access log every sidecar's
// HTTP connection managers write (Envoy's envoy.access_loggers.file).
type AccessLogSpec struct {
	// Path is the file each sidecar appends to; "/dev/stdout" (the
	// default) or "/dev/stderr" write to the sidecar's own streams.
	Path string `json:"path,omitempty"`
	// Format is an Envoy text format string (a newline is added when it
	// has none); empty: Envoy's default format. Exclusive with JSON.
	Format string `json:"format,omitempty"`
	// JSON, when set, writes one JSON object per line: each key's value is
	// an Envoy format string ("%RESPONSE_CODE%"). Exclusive with Format.
	JSON map[string]string `json:"json,omitempty"`
}

// validateAccessLog defaults spec.accessLog.path and checks its fields;
// the operators themselves are checked by every sidecar, which rejects
// (NACKs) an unknown one naming it.
func validateAccessLog(ps *problems, m *Mesh) {
	al := m.Spec.AccessLog
	if al == nil {
		return
	}
	if al.Path == "" {
		al.Path = "/dev/stdout"
	} else if !path.IsAbs(al.Path) {
		ps.add(m.meshOrigin, "spec.accessLog.path", "%q is not an absolute path", al.Path)
	}
	if al.Format != "" && len(al.JSON) > 0 {
		ps.add(m.meshOrigin, "spec.accessLog", "format and json are exclusive")
	}
	if al.Format != "" && strings.Count(al.Format, "%")%2 != 0 {
		ps.add(m.meshOrigin, "spec.accessLog.format", "unbalanced '%%' in %q (operators are written %%NAME%%)", al.Format)
	}
	if al.Format != "" && !strings.HasSuffix(al.Format, "\n") {
		al.Format += "\n"
	}
	for k, v := range al.JSON {
		if strings.Count(v, "%")%2 != 0 {
			ps.add(m.meshOrigin, "spec.accessLog.json."+k, "unbalanced '%%' in %q (operators are written %%NAME%%)", v)
		}
	}
}
