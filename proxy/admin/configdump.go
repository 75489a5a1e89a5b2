package admin

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// endpointsDumpType is the config the dump carries only with ?include_eds,
// as Envoy's does.
const endpointsDumpType protoreflect.FullName = "envoy.admin.v3.EndpointsConfigDump"

// anyType is google.protobuf.Any's full name.
const anyType protoreflect.FullName = "google.protobuf.Any"

// configDumpQuery is a /config_dump query string as Envoy reads it.
type configDumpQuery struct {
	// resource names one repeated field of the dump's configs
	// ("dynamic_active_clusters"); each of its elements becomes a config
	// of its own. Empty: the configs are served whole.
	resource string
	// mask is the FieldMask's paths (proto field names, dot-separated),
	// applied to each resource (with resource) or to each config. Nil: no
	// mask.
	mask []string
	// name keeps only the resources whose name it matches in full; nil
	// keeps every resource.
	name *regexp.Regexp
	// includeEDS adds the EndpointsConfigDump.
	includeEDS bool
}

// parseConfigDumpQuery reads ?resource=, ?mask=, ?name_regex= and
// ?include_eds as Envoy does: the first value of each counts; an empty
// name_regex matches every name; mask is a comma-separated FieldMask whose
// empty paths are dropped (an empty mask masks nothing). A name_regex that
// does not compile as RE2 is an error naming it.
func parseConfigDumpQuery(q url.Values) (configDumpQuery, error) {
	cq := configDumpQuery{resource: q.Get("resource"), includeEDS: q.Has("include_eds")}
	for p := range strings.SplitSeq(q.Get("mask"), ",") {
		if p = strings.TrimSpace(p); p != "" {
			cq.mask = append(cq.mask, p)
		}
	}
	if re := q.Get("name_regex"); re != "" {
		// Envoy matches names with RE2's FullMatch.
		c, err := regexp.Compile(`^(?:` + re + `)$`)
		if err != nil {
			return cq, fmt.Errorf("invalid name_regex=%q: %w", re, err)
		}
		cq.name = c
	}
	return cq, nil
}

// dumpError is a /config_dump request that cannot be answered: Code is the
// HTTP status (400 for a bad parameter, 404 for an unknown resource, 500 for
// a dump that cannot be read).
type dumpError struct {
	Code int
	Msg  string
}

func (e *dumpError) Error() string { return e.Msg }

func badDump(code int, format string, args ...any) *dumpError {
	return &dumpError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// filterConfigDump applies q to cd as Envoy's config dump handler does, and
// redacts every field Envoy's API marks sensitive (udpa.annotations.sensitive)
// in what is left, so no filter can bring a secret to light. cd is not
// modified: its configs are unpacked into new messages.
//
//   - Without include_eds the EndpointsConfigDump is left out.
//   - name_regex keeps, in every repeated field of every config, the
//     resources whose name (the element's own name, or the name or
//     cluster_name of the resource packed in it) matches in full. The
//     bootstrap is not filtered.
//   - resource picks the first config with a field of that name: a
//     repeated field's elements each become a config of their own (mask
//     applied to each, through the resource's Any: "cluster.name"); a
//     singular field is 400; no config with that field is 404.
//   - mask without resource trims each config; configs the mask does not
//     fit are left out, and if none fits the answer is 400.
func filterConfigDump(cd *adminv3.ConfigDump, q configDumpQuery) (*adminv3.ConfigDump, error) {
	var configs []proto.Message
	for i, a := range cd.GetConfigs() {
		m, err := a.UnmarshalNew()
		if err != nil {
			return nil, badDump(http.StatusInternalServerError, "config %d (%s): %v", i, a.GetTypeUrl(), err)
		}
		if m.ProtoReflect().Descriptor().FullName() == endpointsDumpType && !q.includeEDS {
			continue
		}
		if q.name != nil {
			if err := keepNamed(m.ProtoReflect(), q.name); err != nil {
				return nil, badDump(http.StatusInternalServerError, "config %d (%s): %v", i, a.GetTypeUrl(), err)
			}
		}
		configs = append(configs, m)
	}
	var out []proto.Message
	switch {
	case q.resource != "":
		var found bool
		for _, m := range configs {
			fd := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(q.resource))
			if fd == nil {
				continue
			}
			if !fd.IsList() || fd.Kind() != protoreflect.MessageKind {
				return nil, badDump(http.StatusBadRequest, "resource=%s: %s is not a repeated field. Use ?mask=%s to get only this field", q.resource, fd.Name(), fd.Name())
			}
			found = true
			l := m.ProtoReflect().Get(fd).List()
			for i := range l.Len() {
				r := l.Get(i).Message()
				if q.mask != nil {
					if err := trimResource(r, q.mask); err != nil {
						return nil, badDump(http.StatusBadRequest, "mask=%s: %v", strings.Join(q.mask, ","), err)
					}
				}
				out = append(out, r.Interface())
			}
			break
		}
		if !found {
			return nil, badDump(http.StatusNotFound, "resource=%s: %s not found in config dump", q.resource, q.resource)
		}
	case q.mask != nil:
		for _, m := range configs {
			// Each config type has its own fields: a mask that does not
			// fit one leaves that config out, as Envoy does.
			if trim(m.ProtoReflect(), q.mask) == nil {
				out = append(out, m)
			}
		}
		if len(out) == 0 {
			return nil, badDump(http.StatusBadRequest, "mask=%s: FieldMask could not be successfully applied to any configs", strings.Join(q.mask, ","))
		}
	default:
		out = configs
	}
	res := &adminv3.ConfigDump{}
	for _, m := range out {
		redact(m.ProtoReflect(), false)
		a, err := anypb.New(m)
		if err != nil {
			return nil, badDump(http.StatusInternalServerError, "%s: %v", m.ProtoReflect().Descriptor().FullName(), err)
		}
		res.Configs = append(res.Configs, a)
	}
	return res, nil
}

// keepNamed drops from every repeated message field of m the elements whose
// resource name re does not match. An element without a name is kept.
func keepNamed(m protoreflect.Message, re *regexp.Regexp) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if !fd.IsList() || fd.Kind() != protoreflect.MessageKind {
			return true
		}
		l := v.List()
		n := 0
		for i := range l.Len() {
			e := l.Get(i)
			name, ok, nerr := resourceName(e.Message())
			if nerr != nil {
				err = fmt.Errorf("%s[%d]: %w", fd.Name(), i, nerr)
				return false
			}
			if !ok || re.MatchString(name) {
				l.Set(n, e)
				n++
			}
		}
		l.Truncate(n)
		return true
	})
	return err
}

// resourceName is the name Envoy's name_regex is matched against: the
// element's own string "name" field (dynamic listeners, secrets), else the
// "name" or "cluster_name" (ClusterLoadAssignment) of the resource packed in
// its Any field. ok is false for an element with neither.
func resourceName(m protoreflect.Message) (name string, ok bool, err error) {
	if s, ok := stringField(m, "name"); ok {
		return s, true, nil
	}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.IsList() || fd.Message() == nil || fd.Message().FullName() != anyType || !m.Has(fd) {
			continue
		}
		a := m.Get(fd).Message().Interface().(*anypb.Any)
		inner, err := a.UnmarshalNew()
		if err != nil {
			return "", false, fmt.Errorf("%s: %w", fd.Name(), err)
		}
		for _, f := range []protoreflect.Name{"name", "cluster_name"} {
			if s, ok := stringField(inner.ProtoReflect(), f); ok {
				return s, true, nil
			}
		}
	}
	return "", false, nil
}

// stringField is m's singular string field called name, if m has one.
func stringField(m protoreflect.Message, name protoreflect.Name) (string, bool) {
	fd := m.Descriptor().Fields().ByName(name)
	if fd == nil || fd.IsList() || fd.Kind() != protoreflect.StringKind {
		return "", false
	}
	return m.Get(fd).String(), true
}

// trimResource applies the FieldMask paths to one resource of the dump (a
// StaticCluster, a DynamicListener...). As in Envoy, a path whose first
// field is the resource's Any ("cluster.name") reaches into the packed
// resource: the Any is unpacked, trimmed to the rest of the path ("name")
// and packed again, while the resource keeps the Any field itself. Only one
// Any field per mask is supported, and the masks go no deeper through Any.
func trimResource(r protoreflect.Message, paths []string) error {
	var outer, inner []string
	var anyField protoreflect.FieldDescriptor
	for _, p := range paths {
		first, rest, _ := strings.Cut(p, ".")
		fd := r.Descriptor().Fields().ByName(protoreflect.Name(first))
		if fd == nil || fd.IsList() || fd.Message() == nil || fd.Message().FullName() != anyType {
			outer = append(outer, p)
			continue
		}
		if anyField != nil && anyField != fd {
			return fmt.Errorf("paths reach into two Any fields (%s and %s); only one is supported", anyField.Name(), fd.Name())
		}
		anyField = fd
		outer = append(outer, first)
		inner = append(inner, rest)
		// A path naming the Any itself ("cluster") leaves rest empty,
		// which keeps the packed resource whole (see trim).
	}
	if anyField != nil && r.Has(anyField) {
		a := r.Get(anyField).Message().Interface().(*anypb.Any)
		m, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("%s: %w", anyField.Name(), err)
		}
		if err := trim(m.ProtoReflect(), inner); err != nil {
			return fmt.Errorf("in %s (%s): %w", anyField.Name(), m.ProtoReflect().Descriptor().FullName(), err)
		}
		packed, err := anypb.New(m)
		if err != nil {
			return fmt.Errorf("%s: %w", anyField.Name(), err)
		}
		r.Set(anyField, protoreflect.ValueOfMessage(packed.ProtoReflect()))
	}
	return trim(r, outer)
}

// maskNode is one field of a FieldMask tree: whole keeps the field as it
// is; otherwise only its children are kept.
type maskNode struct {
	whole    bool
	children map[protoreflect.Name]*maskNode
}

// trim keeps only the fields of m that the FieldMask paths name, as
// protobuf's FieldMaskUtil::TrimMessage does; a path ending in a message
// field keeps that message whole, and an empty path list or an empty path
// keeps everything. Each path must name fields of m's type,
// each but the last a singular message field; otherwise m is left as it
// was and the error names the path.
func trim(m protoreflect.Message, paths []string) error {
	root := &maskNode{}
	for _, p := range paths {
		parts := splitPath(p)
		if err := checkPath(m.Descriptor(), parts); err != nil {
			return fmt.Errorf("path %q: %w", p, err)
		}
		if len(parts) == 0 {
			root.whole = true // an empty path keeps everything
			continue
		}
		n := root
		for i, part := range parts {
			if n.whole {
				break // a shorter path keeps this field whole already
			}
			c := n.children[protoreflect.Name(part)]
			if c == nil {
				if n.children == nil {
					n.children = map[protoreflect.Name]*maskNode{}
				}
				c = &maskNode{}
				n.children[protoreflect.Name(part)] = c
			}
			if i == len(parts)-1 {
				c.whole, c.children = true, nil
			}
			n = c
		}
	}
	if !root.whole && len(root.children) > 0 {
		trimNode(m, root)
	}
	return nil
}

// splitPath is a FieldMask path's field names; empty ones are dropped, as
// protobuf's FieldMaskUtil drops them.
func splitPath(p string) []string {
	var parts []string
	for s := range strings.SplitSeq(p, ".") {
		if s != "" {
			parts = append(parts, s)
		}
	}
	return parts
}

// checkPath reports whether parts name a field path of d, as protobuf's
// FieldMaskUtil::GetFieldDescriptors does: only singular message fields are
// followed into.
func checkPath(d protoreflect.MessageDescriptor, parts []string) error {
	for i, part := range parts {
		if d == nil {
			return fmt.Errorf("%s is not a singular message field, so it has no field %q", parts[i-1], part)
		}
		fd := d.Fields().ByName(protoreflect.Name(part))
		if fd == nil {
			return fmt.Errorf("%s has no field %q", d.FullName(), part)
		}
		d = nil
		if !fd.IsList() && !fd.IsMap() && fd.Message() != nil {
			d = fd.Message()
		}
	}
	return nil
}

// trimNode clears the fields of m that n does not name and trims the
// message fields it names partly (checkPath made sure those are singular
// message fields).
func trimNode(m protoreflect.Message, n *maskNode) {
	var clear, partial []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		switch c, ok := n.children[fd.Name()]; {
		case !ok:
			clear = append(clear, fd)
		case !c.whole:
			partial = append(partial, fd)
		}
		return true
	})
	for _, fd := range clear {
		m.Clear(fd)
	}
	for _, fd := range partial {
		trimNode(m.Mutable(fd).Message(), n.children[fd.Name()])
	}
}
