package model

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
)

// splitDocuments splits a multi-document YAML stream at lines that are
// exactly "---" (optionally followed by a comment). A document that is empty
// or only comments keeps its position (so numbering follows the file) and is
// returned as nil.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	hasContent := false
	flush := func() {
		if hasContent {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		} else {
			docs = append(docs, nil)
		}
		cur.Reset()
		hasContent = false
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	for i, line := range lines {
		trimmed := bytes.TrimRight(line, " \t\r\n")
		if isSeparator(trimmed) {
			// A leading separator does not open an empty first document.
			if i > 0 || hasContent {
				flush()
			}
			continue
		}
		t := bytes.TrimSpace(line)
		if len(t) > 0 && t[0] != '#' {
			hasContent = true
		}
		cur.Write(line)
	}
	if hasContent || len(docs) == 0 {
		flush()
	}
	return docs
}

func isSeparator(line []byte) bool {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false
	}
	rest := bytes.TrimLeft(line[3:], " \t")
	return len(rest) == 0 || (len(rest) < len(line[3:]) && rest[0] == '#')
}

var (
	durationType  = reflect.TypeFor[Duration]()
	rawJSONType   = reflect.TypeFor[json.RawMessage]()
	unmarshalerTy = reflect.TypeFor[json.Unmarshaler]()
)

// checkValue walks a generic JSON value (decoded with UseNumber) against the
// Go type it will be decoded into and reports, with the field path, every
// unknown field and every value of the wrong type or out of the type's range.
// encoding/json stops at the first such problem and names unknown fields
// without their path; this walk finds them all.
func checkValue(ps *problems, o origin, path string, v any, t reflect.Type) {
	if v == nil {
		if t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			return
		}
		ps.add(o, path, "must not be null")
		return
	}
	if t == durationType {
		s, ok := v.(string)
		if !ok {
			ps.add(o, path, "expected a duration string such as \"1s\", got %s", jsonKind(v))
			return
		}
		if _, err := parseDuration(s); err != nil {
			ps.add(o, path, "%v", err)
		}
		return
	}
	if t == rawJSONType || (t.Kind() != reflect.Pointer && reflect.PointerTo(t).Implements(unmarshalerTy)) {
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		checkValue(ps, o, path, v, t.Elem())
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			ps.add(o, path, "expected an object, got %s", jsonKind(v))
			return
		}
		fields := jsonFields(t)
		for _, k := range sortedKeys(m) {
			ft, ok := fields[k]
			if !ok {
				ps.add(o, join(path, k), "unknown field (known: %s)", strings.Join(sortedKeys(fields), ", "))
				continue
			}
			checkValue(ps, o, join(path, k), m[k], ft)
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			ps.add(o, path, "expected a list, got %s", jsonKind(v))
			return
		}
		for i, e := range l {
			checkValue(ps, o, fmt.Sprintf("%s[%d]", path, i), e, t.Elem())
		}
	case reflect.Map:
		// String-keyed maps (Mesh.spec.accessLog.json): any key, each
		// value checked as the element type.
		m, ok := v.(map[string]any)
		if !ok || t.Key().Kind() != reflect.String {
			ps.add(o, path, "expected an object, got %s", jsonKind(v))
			return
		}
		for _, k := range sortedKeys(m) {
			checkValue(ps, o, join(path, k), m[k], t.Elem())
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			ps.add(o, path, "expected a string, got %s", jsonKind(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			ps.add(o, path, "expected true or false, got %s", jsonKind(v))
		}
	case reflect.Uint32:
		n, ok := v.(json.Number)
		if !ok {
			ps.add(o, path, "expected an integer, got %s", jsonKind(v))
			return
		}
		i, err := strconv.ParseInt(n.String(), 10, 64)
		switch {
		case err != nil:
			ps.add(o, path, "expected an integer, got %s", n)
		case i < 0 || i > math.MaxUint32:
			ps.add(o, path, "%d is out of range 0..%d", i, uint64(math.MaxUint32))
		}
	case reflect.Float64:
		n, ok := v.(json.Number)
		if !ok {
			ps.add(o, path, "expected a number, got %s", jsonKind(v))
			return
		}
		if _, err := n.Float64(); err != nil {
			ps.add(o, path, "expected a number, got %s", n)
		}
	default:
		// Only the kinds above occur in the mesh file types; a new field of
		// another kind must be added here (TestCheckValueCoversTypes).
		ps.add(o, path, "internal error: no checker for Go type %s", t)
	}
}

// jsonFields maps the JSON names of t's fields, with embedded structs
// flattened as encoding/json does, to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type)
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct && f.Tag.Get("json") == "" {
			for k, v := range jsonFields(f.Type) {
				fields[k] = v
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

func jsonKind(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("string %q", v)
	case json.Number:
		return "number " + v.String()
	case bool:
		return "boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	default:
		return fmt.Sprintf("%T", v)
	}
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}
