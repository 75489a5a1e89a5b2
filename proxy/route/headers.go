package route

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// AppendAction is Envoy's HeaderValueOption.HeaderAppendAction.
type AppendAction uint8

// The append actions, with Envoy's meaning.
const (
	// AppendIfExistsOrAdd adds a field, keeping existing ones (the default).
	AppendIfExistsOrAdd AppendAction = iota
	// AddIfAbsent adds the field only when no field of that name exists.
	AddIfAbsent
	// OverwriteIfExistsOrAdd replaces all fields of that name with one.
	OverwriteIfExistsOrAdd
	// OverwriteIfExists replaces the fields of that name only if one exists.
	OverwriteIfExists
)

// headerAdd is one compiled request/response_headers_to_add entry.
type headerAdd struct {
	name      string
	value     valueFormat
	action    AppendAction
	keepEmpty bool
}

// headerOps is the mutation one level (route configuration, virtual host,
// route, weighted cluster) applies: removals first, then additions, as
// Envoy's HeaderParser evaluates them.
type headerOps struct {
	remove []string
	add    []headerAdd
}

func (o *headerOps) empty() bool { return o == nil || (len(o.remove) == 0 && len(o.add) == 0) }

func (o *headerOps) apply(h *header.Header, cluster string, info *stream.ConnInfo) {
	for _, name := range o.remove {
		h.Del(name)
	}
	for i := range o.add {
		a := &o.add[i]
		v := a.value.format(cluster, info)
		if v == "" && !a.keepEmpty {
			continue
		}
		switch a.action {
		case AppendIfExistsOrAdd:
			h.Add(a.name, v)
		case AddIfAbsent:
			if !h.Has(a.name) {
				h.Add(a.name, v)
			}
		case OverwriteIfExistsOrAdd:
			h.Set(a.name, v)
		case OverwriteIfExists:
			if h.Has(a.name) {
				h.Set(a.name, v)
			}
		}
	}
}

// compileHeaderOps compiles one level's to_add/to_remove lists. path names
// the level (e.g. "virtual_hosts[0]") and kind is "request" or "response".
func compileHeaderOps(path, kind string, add []*corev3.HeaderValueOption, remove []string) (*headerOps, error) {
	if len(add) == 0 && len(remove) == 0 {
		return nil, nil
	}
	ops := &headerOps{}
	for i, name := range remove {
		p := joinPath(path, fmt.Sprintf("%s_headers_to_remove[%d]", kind, i))
		n := strings.ToLower(name)
		if err := checkModifiable(n); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		ops.remove = append(ops.remove, n)
	}
	for i, o := range add {
		p := joinPath(path, fmt.Sprintf("%s_headers_to_add[%d]", kind, i))
		a, err := compileHeaderAdd(p, o)
		if err != nil {
			return nil, err
		}
		ops.add = append(ops.add, a)
	}
	return ops, nil
}

func compileHeaderAdd(p string, o *corev3.HeaderValueOption) (headerAdd, error) {
	hv := o.GetHeader()
	if hv == nil {
		return headerAdd{}, fmt.Errorf("%s.header: required", p)
	}
	name := strings.ToLower(hv.GetKey())
	if err := checkModifiable(name); err != nil {
		return headerAdd{}, fmt.Errorf("%s.header.key: %w", p, err)
	}
	raw := hv.GetValue()
	if len(hv.GetRawValue()) > 0 {
		if raw != "" {
			return headerAdd{}, fmt.Errorf("%s.header: value and raw_value are both set", p)
		}
		raw = string(hv.GetRawValue())
	}
	vf, err := parseFormat(raw)
	if err != nil {
		return headerAdd{}, fmt.Errorf("%s.header.value: %w", p, err)
	}
	if vf.segs == nil && !header.ValidValue(vf.literal) {
		return headerAdd{}, fmt.Errorf("%s.header.value: %q is not a valid field value", p, vf.literal)
	}
	action := AppendAction(o.GetAppendAction())
	if action > OverwriteIfExists {
		return headerAdd{}, fmt.Errorf("%s.append_action: unknown value %d", p, o.GetAppendAction())
	}
	//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
	if oldAppend := o.GetAppend(); oldAppend != nil {
		if o.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			return headerAdd{}, fmt.Errorf("%s: append and append_action are both set; use append_action only", p)
		}
		if !oldAppend.GetValue() {
			action = OverwriteIfExistsOrAdd
		}
	}
	return headerAdd{name: name, value: vf, action: action, keepEmpty: o.GetKeepEmptyValue()}, nil
}

// checkModifiable rejects what Envoy rejects in header mutations:
// pseudo-header fields and "host" (the authority is not a header here).
func checkModifiable(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty header name")
	case name[0] == ':':
		return fmt.Errorf("pseudo-header %q cannot be added or removed", name)
	case name == "host":
		return fmt.Errorf(`"host" cannot be added or removed; use host_rewrite_literal`)
	case !header.ValidName(name):
		return fmt.Errorf("%q is not a valid header name", name)
	}
	return nil
}

// RequestHeaders applies the request header mutations of every level to
// req.Header, for a request sent to clusterName (the cluster PickCluster
// chose; its weighted-cluster level applies only when it is one of the
// route's weighted clusters). info is the downstream connection, used by
// command operators such as %DOWNSTREAM_REMOTE_ADDRESS%; it may be nil.
//
// Order is Envoy's: by default the most specific level first (weighted
// cluster, route, virtual host, route configuration), so on conflicting
// overwrites the least specific level wins; with
// most_specific_header_mutations_wins the order is reversed. Within a level,
// removals happen before additions.
func (r *Route) RequestHeaders(req *stream.Request, clusterName string, info *stream.ConnInfo) {
	r.applyHeaders(&req.Header, clusterName, info, true)
}

// ResponseHeaders applies the response header mutations of every level to
// h, in the same order as RequestHeaders.
func (r *Route) ResponseHeaders(h *header.Header, clusterName string, info *stream.ConnInfo) {
	r.applyHeaders(h, clusterName, info, false)
}

func (r *Route) applyHeaders(h *header.Header, cluster string, info *stream.ConnInfo, request bool) {
	var wc *headerOps
	if len(r.Weighted) > 0 {
		for i := range r.Weighted {
			if r.Weighted[i].Name == cluster {
				if request {
					wc = r.Weighted[i].requestOps
				} else {
					wc = r.Weighted[i].responseOps
				}
				break
			}
		}
	}
	levels := &r.responseLevels
	if request {
		levels = &r.requestLevels
	}
	if r.mostSpecificWins {
		for _, o := range levels {
			if !o.empty() {
				o.apply(h, cluster, info)
			}
		}
		if !wc.empty() {
			wc.apply(h, cluster, info)
		}
		return
	}
	if !wc.empty() {
		wc.apply(h, cluster, info)
	}
	for i := len(levels) - 1; i >= 0; i-- {
		if o := levels[i]; !o.empty() {
			o.apply(h, cluster, info)
		}
	}
}
