package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
	"sigs.k8s.io/yaml"
)

//go:generate go run ./internal/gentypes -o envoytypes.go

// MaxBootstrapSize is the largest bootstrap file LoadBootstrap reads.
const MaxBootstrapSize = 16 << 20

// LoadBootstrap reads the bootstrap file at path and returns it strictly
// decoded and validated, as ParseBootstrap does. Errors name the file.
func LoadBootstrap(path string) (*bootstrapv3.Bootstrap, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxBootstrapSize+1))
	if err != nil {
		return nil, fmt.Errorf("bootstrap %s: read: %w", path, err)
	}
	if len(data) > MaxBootstrapSize {
		return nil, fmt.Errorf("bootstrap %s: larger than %d bytes", path, MaxBootstrapSize)
	}
	return ParseBootstrap(data, path)
}

// ParseBootstrap strictly decodes data, an Envoy v3 Bootstrap in JSON (if its
// first non-space byte is '{') or YAML, and validates it with
// ValidateBootstrap. name is used in error messages only.
//
// Decoding is strict: an unknown field, an Any whose type is not an Envoy (or
// xDS) type, or a value of the wrong kind is an error. Every problem found is
// reported, one per line, with the path of the field in proto field names,
// e.g. static_resources.listeners[0].filter_chains[0].filters[0]. Such errors
// are a *ValidationError. The returned Bootstrap is only non-nil without error.
func ParseBootstrap(data []byte, name string) (*bootstrapv3.Bootstrap, error) {
	src := "bootstrap " + name
	js, err := toJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	b := &bootstrapv3.Bootstrap{}
	if probs := decodeStrict(js, b); len(probs) > 0 {
		return nil, &ValidationError{Source: src, Problems: probs}
	}
	if err := ValidateBootstrap(b); err != nil {
		var ve *ValidationError
		if errors.As(err, &ve) {
			ve.Source = src
		}
		return nil, err
	}
	return b, nil
}

// toJSON returns data as JSON, converting it from YAML unless it is JSON
// already. Duplicate YAML keys are an error, as they are for Envoy.
func toJSON(data []byte) ([]byte, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("empty document")
	}
	if trimmed[0] == '{' {
		if !json.Valid(trimmed) {
			// Let the decoder say where: json.Valid only says whether.
			var v any
			if err := json.Unmarshal(trimmed, &v); err != nil {
				return nil, fmt.Errorf("invalid JSON: %w", err)
			}
			return nil, errors.New("invalid JSON")
		}
		if err := duplicateKeys(trimmed); err != nil {
			return nil, err
		}
		return trimmed, nil
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || t[0] != '{' {
		return nil, errors.New("the document is not a mapping of Bootstrap fields")
	}
	return js, nil
}

// duplicateKeys returns an error naming the first object key that appears
// twice in one JSON object, with its path as written in the document. (YAML
// input is checked by the YAML decoder; decoding JSON into maps would hide
// duplicates and protojson reports them without a path.)
func duplicateKeys(js []byte) error {
	type frame struct {
		path   string
		keys   map[string]bool // nil for an array
		index  int             // next element index, arrays only
		expect bool            // objects: the next string token is a key
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	var stack []*frame
	path := func() string {
		if len(stack) == 0 {
			return ""
		}
		return stack[len(stack)-1].path
	}
	// child returns the path of the value about to be read.
	var pendingKey string
	child := func() string {
		if len(stack) == 0 {
			return ""
		}
		top := stack[len(stack)-1]
		if top.keys == nil {
			p := fmt.Sprintf("%s[%d]", top.path, top.index)
			top.index++
			return p
		}
		return join(top.path, pendingKey)
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("invalid JSON: %w", err)
		}
		if len(stack) > 0 {
			top := stack[len(stack)-1]
			if top.keys != nil && top.expect {
				if d, ok := tok.(json.Delim); ok && d == '}' {
					stack = stack[:len(stack)-1]
					continue
				}
				key, _ := tok.(string)
				if top.keys[key] {
					where := path()
					if where == "" {
						where = "the top level"
					}
					return fmt.Errorf("invalid JSON: duplicate key %q in %s", key, where)
				}
				top.keys[key] = true
				pendingKey = key
				top.expect = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			p := child()
			f := &frame{path: p}
			if tok == json.Delim('{') {
				f.keys = map[string]bool{}
				f.expect = true
			}
			if len(stack) > 0 && stack[len(stack)-1].keys != nil {
				stack[len(stack)-1].expect = true
			}
			stack = append(stack, f)
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
		default:
			child()
			if len(stack) > 0 && stack[len(stack)-1].keys != nil {
				stack[len(stack)-1].expect = true
			}
		}
	}
}

// decodeStrict unmarshals js into m. Before doing so it walks the JSON tree
// against m's descriptor, because protojson stops at the first problem and
// reports it without a field path; the walk finds every problem and names
// where it is.
func decodeStrict(js []byte, m proto.Message) []*FieldError {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return []*FieldError{{Reason: fmt.Sprintf("invalid JSON: %v", err)}}
	}
	w := &jsonWalker{}
	w.message("", m.ProtoReflect().Descriptor(), tree)
	if len(w.probs) > 0 {
		return w.probs
	}
	opts := protojson.UnmarshalOptions{Resolver: protoregistry.GlobalTypes}
	if err := opts.Unmarshal(js, m); err != nil {
		// The walk accepted the document, so this is something it does
		// not model (a field given twice under its two JSON names, say).
		return []*FieldError{{Reason: cleanProtoErr(err)}}
	}
	return nil
}

// jsonWalker collects the problems found in a JSON tree.
type jsonWalker struct {
	probs []*FieldError
}

func (w *jsonWalker) addf(path, format string, args ...any) {
	w.probs = append(w.probs, &FieldError{Path: path, Reason: fmt.Sprintf(format, args...)})
}

// customJSON lists the well-known types that protojson encodes as something
// other than an object of their fields. Their values are checked by
// protojson itself, at their own path.
var customJSON = map[protoreflect.FullName]bool{
	"google.protobuf.Duration":    true,
	"google.protobuf.Timestamp":   true,
	"google.protobuf.FieldMask":   true,
	"google.protobuf.Struct":      true,
	"google.protobuf.Value":       true,
	"google.protobuf.ListValue":   true,
	"google.protobuf.Empty":       true,
	"google.protobuf.BoolValue":   true,
	"google.protobuf.Int32Value":  true,
	"google.protobuf.Int64Value":  true,
	"google.protobuf.UInt32Value": true,
	"google.protobuf.UInt64Value": true,
	"google.protobuf.FloatValue":  true,
	"google.protobuf.DoubleValue": true,
	"google.protobuf.StringValue": true,
	"google.protobuf.BytesValue":  true,
}

const anyName protoreflect.FullName = "google.protobuf.Any"

// message checks v, the JSON for a message of type md at path.
func (w *jsonWalker) message(path string, md protoreflect.MessageDescriptor, v any) {
	switch {
	case md.FullName() == anyName:
		w.anyValue(path, v)
		return
	case customJSON[md.FullName()]:
		w.leaf(path, md, v)
		return
	}
	obj, ok := v.(map[string]any)
	if !ok {
		w.addf(path, "expected an object (%s), got %s", md.FullName(), jsonKind(v))
		return
	}
	w.fields(path, md, obj)
}

// fields checks the members of obj as fields of md.
func (w *jsonWalker) fields(path string, md protoreflect.MessageDescriptor, obj map[string]any) {
	oneofs := map[protoreflect.Name]protoreflect.Name{}
	for _, key := range sortedKeys(obj) {
		val := obj[key]
		fd := md.Fields().ByJSONName(key)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(key))
		}
		if fd == nil {
			w.addf(path, "unknown field %q in %s%s", key, md.FullName(), suggest(key, md))
			continue
		}
		fpath := join(path, string(fd.Name()))
		if val == nil && !isSingularValue(fd) {
			continue // JSON null leaves the field unset, as protojson does.
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if prev, dup := oneofs[od.Name()]; dup {
				w.addf(fpath, "only one of the oneof %q may be set, %q is set too", od.Name(), prev)
				continue
			}
			oneofs[od.Name()] = fd.Name()
		}
		w.field(fpath, md, fd, key, val)
	}
}

// field checks val, the JSON for field fd (spelt key) of a message of type md.
func (w *jsonWalker) field(path string, md protoreflect.MessageDescriptor, fd protoreflect.FieldDescriptor, key string, val any) {
	switch {
	case fd.IsMap():
		obj, ok := val.(map[string]any)
		if !ok {
			w.addf(path, "expected an object (map), got %s", jsonKind(val))
			return
		}
		if fd.MapValue().Message() == nil {
			w.single(path, md, key, val)
			return
		}
		for _, k := range sortedKeys(obj) {
			if err := checkMapKey(fd.MapKey().Kind(), k); err != nil {
				w.addf(path, "map key %q: %v", k, err)
				continue
			}
			w.message(fmt.Sprintf("%s[%q]", path, k), fd.MapValue().Message(), obj[k])
		}
	case fd.IsList():
		list, ok := val.([]any)
		if !ok {
			w.addf(path, "expected a list, got %s", jsonKind(val))
			return
		}
		if fd.Message() == nil {
			w.single(path, md, key, val)
			return
		}
		for i, el := range list {
			w.message(path+"["+strconv.Itoa(i)+"]", fd.Message(), el)
		}
	case fd.Message() != nil:
		w.message(path, fd.Message(), val)
	default:
		w.single(path, md, key, val)
	}
}

// isSingularValue reports whether fd is a singular google.protobuf.Value, the
// one field for which JSON null is a value rather than "unset".
func isSingularValue(fd protoreflect.FieldDescriptor) bool {
	return !fd.IsList() && !fd.IsMap() && fd.Message() != nil && fd.Message().FullName() == "google.protobuf.Value"
}

// checkMapKey checks a JSON object key as a map key of kind k.
func checkMapKey(k protoreflect.Kind, key string) error {
	var err error
	switch k {
	case protoreflect.BoolKind:
		_, err = strconv.ParseBool(key)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		_, err = strconv.ParseInt(key, 10, 32)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		_, err = strconv.ParseInt(key, 10, 64)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		_, err = strconv.ParseUint(key, 10, 32)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		_, err = strconv.ParseUint(key, 10, 64)
	}
	if err != nil {
		return fmt.Errorf("not a valid %s", k)
	}
	return nil
}

// single has protojson decode {key: val} into a fresh message of type md and
// reports its complaint, if any, at path.
func (w *jsonWalker) single(path string, md protoreflect.MessageDescriptor, key string, val any) {
	js, err := json.Marshal(map[string]any{key: val})
	if err != nil {
		w.addf(path, "%v", err)
		return
	}
	if err := protojson.Unmarshal(js, newMessage(md)); err != nil {
		w.addf(path, "%s", cleanProtoErr(err))
	}
}

// leaf checks v as the JSON of the well-known type md.
func (w *jsonWalker) leaf(path string, md protoreflect.MessageDescriptor, v any) {
	js, err := json.Marshal(v)
	if err != nil {
		w.addf(path, "%v", err)
		return
	}
	if err := protojson.Unmarshal(js, newMessage(md)); err != nil {
		w.addf(path, "%s", cleanProtoErr(err))
	}
}

// anyValue checks the JSON of a google.protobuf.Any: its "@type" must name a
// linked Envoy type (one meshd implements) and its other members must be
// that type's fields.
func (w *jsonWalker) anyValue(path string, v any) {
	obj, ok := v.(map[string]any)
	if !ok {
		w.addf(path, "expected an object (google.protobuf.Any), got %s", jsonKind(v))
		return
	}
	url, ok := obj["@type"].(string)
	if !ok {
		w.addf(path, `missing "@type" (the type URL of the typed config)`)
		return
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if err != nil {
		// Only the Envoy types meshd implements are linked; the others
		// are known by name (isEnvoyMessage).
		if isEnvoyMessage(url) {
			w.addf(path, "unsupported typed_config type %q: meshd does not implement this Envoy type (docs/bootstrap.md lists the ones it does)", url)
		} else {
			w.addf(path, "unknown type %q: not an Envoy API type", url)
		}
		return
	}
	md := mt.Descriptor()
	rest := make(map[string]any, len(obj)-1)
	for k, val := range obj {
		if k != "@type" {
			rest[k] = val
		}
	}
	if customJSON[md.FullName()] || md.FullName() == anyName {
		for _, k := range sortedKeys(rest) {
			if k != "value" {
				w.addf(path, "unknown field %q in an Any of %s (only \"value\" is allowed)", k, md.FullName())
			}
		}
		if val, ok := rest["value"]; ok {
			w.message(join(path, "value"), md, val)
		}
		return
	}
	w.fields(path, md, rest)
}

// newMessage returns an empty message of type md: the generated type when it
// is linked (always, for the types reachable from a Bootstrap and the
// extensions meshd implements), a dynamic one otherwise.
func newMessage(md protoreflect.MessageDescriptor) proto.Message {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName()); err == nil {
		return mt.New().Interface()
	}
	return dynamicpb.NewMessage(md)
}

// protoErrPrefix matches protojson's "proto: (line 1:9): " prefix, whose
// position refers to the converted JSON, not the user's file.
var protoErrPrefix = regexp.MustCompile(`^proto:\s*(\(line \d+:\d+\):\s*)?`)

func cleanProtoErr(err error) string {
	// protojson separates its parts with non-breaking spaces in some versions.
	s := strings.ReplaceAll(err.Error(), "\u00a0", " ")
	return protoErrPrefix.ReplaceAllString(s, "")
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}

// suggest returns ` (did you mean "x"?)` when one field of md is within edit
// distance 2 of key, and "" otherwise.
func suggest(key string, md protoreflect.MessageDescriptor) string {
	best, bestDist := "", 3
	fields := md.Fields()
	for i := range fields.Len() {
		name := string(fields.Get(i).Name())
		if d := editDistance(strings.ToLower(key), name); d < bestDist {
			best, bestDist = name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b, computed over
// bytes; keys longer than 64 bytes are not compared.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
