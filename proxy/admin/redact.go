package admin

import (
	udpaannotations "github.com/cncf/xds/go/udpa/annotations"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// redacted replaces every sensitive string and bytes value.
const redacted = "[redacted]"

// typedStructs are the TypedStruct types whose "value" Struct is a message
// of the type named by "type_url", redacted as that message.
var typedStructs = map[protoreflect.FullName]bool{
	"xds.type.v3.TypedStruct":  true,
	"udpa.type.v1.TypedStruct": true,
}

// redact hides what Envoy's API marks sensitive (udpa.annotations.sensitive:
// private keys, HMAC secrets, passwords...) as Envoy's admin does before it
// serves a config dump: under a sensitive field, strings and bytes read
// "[redacted]" and other scalars are cleared; maps keep their keys. Any and
// TypedStruct values are unpacked to their concrete type, redacted and
// packed again; under a sensitive field, an Any that cannot be unpacked
// loses its value. It reports whether it changed m.
func redact(m protoreflect.Message, sensitive bool) bool {
	switch name := m.Descriptor().FullName(); {
	case name == anyType:
		if changed, ok := redactAny(m, sensitive); ok {
			return changed
		}
	case typedStructs[name]:
		if changed, ok := redactTypedStruct(m, sensitive); ok {
			return changed
		}
	}
	changed := false
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		s := sensitive || proto.GetExtension(fd.Options(), udpaannotations.E_Sensitive).(bool)
		switch {
		case fd.IsMap():
			if !m.Has(fd) {
				continue
			}
			mp := m.Mutable(fd).Map()
			vd := fd.MapValue()
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				switch {
				case vd.Message() != nil:
					changed = redact(v.Message(), s) || changed
				case s && (vd.Kind() == protoreflect.StringKind || vd.Kind() == protoreflect.BytesKind):
					mp.Set(k, redactedValue(vd))
					changed = true
				case s:
					mp.Set(k, vd.Default())
					changed = true
				}
				return true
			})
		case fd.Message() != nil:
			if !m.Has(fd) {
				continue
			}
			if fd.IsList() {
				l := m.Mutable(fd).List()
				for j := range l.Len() {
					changed = redact(l.Get(j).Message(), s) || changed
				}
				continue
			}
			changed = redact(m.Mutable(fd).Message(), s) || changed
		case !s || !m.Has(fd):
		case fd.Kind() == protoreflect.StringKind || fd.Kind() == protoreflect.BytesKind:
			if fd.IsList() {
				l := m.Mutable(fd).List()
				for j := range l.Len() {
					l.Set(j, redactedValue(fd))
				}
			} else {
				m.Set(fd, redactedValue(fd))
			}
			changed = true
		default:
			m.Clear(fd)
			changed = true
		}
	}
	return changed
}

// redactedValue is "[redacted]" as a value of fd's kind (string or bytes).
func redactedValue(fd protoreflect.FieldDescriptor) protoreflect.Value {
	if fd.Kind() == protoreflect.BytesKind {
		return protoreflect.ValueOfBytes([]byte(redacted))
	}
	return protoreflect.ValueOfString(redacted)
}

// redactAny redacts the message packed in the Any m, packing it again only
// if that changed it. ok is false only for an Any without a type_url.
func redactAny(m protoreflect.Message, sensitive bool) (changed, ok bool) {
	a, isAny := m.Interface().(*anypb.Any)
	if !isAny || a.GetTypeUrl() == "" {
		return false, false
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		// Not linked in, or not what its type_url says: nothing in it can
		// be told apart, so under a sensitive field none of it is shown.
		if sensitive && len(a.Value) > 0 {
			a.Value = nil
			return true, true
		}
		return false, true
	}
	if !redact(inner.ProtoReflect(), sensitive) {
		return false, true
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(inner)
	if err != nil {
		// The message parsed a moment ago; it marshals.
		return false, false
	}
	a.Value = b
	return true, true
}

// redactTypedStruct redacts a TypedStruct's value as the message its
// type_url names, writing it back only if that changed it. ok is false when
// the type is not linked in or the value does not convert to it.
func redactTypedStruct(m protoreflect.Message, sensitive bool) (changed, ok bool) {
	fields := m.Descriptor().Fields()
	urlFD, valueFD := fields.ByName("type_url"), fields.ByName("value")
	if urlFD == nil || valueFD == nil || !m.Has(valueFD) {
		return false, urlFD != nil && valueFD != nil
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(m.Get(urlFD).String())
	if err != nil {
		return false, false
	}
	st, isStruct := m.Get(valueFD).Message().Interface().(*structpb.Struct)
	if !isStruct {
		return false, false
	}
	js, err := protojson.Marshal(st)
	if err != nil {
		return false, false
	}
	inner := mt.New().Interface()
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(js, inner); err != nil {
		return false, false
	}
	if !redact(inner.ProtoReflect(), sensitive) {
		return false, true
	}
	js, err = protojson.MarshalOptions{UseProtoNames: true}.Marshal(inner)
	if err != nil {
		return false, false
	}
	out := &structpb.Struct{}
	if err := protojson.Unmarshal(js, out); err != nil {
		return false, false
	}
	m.Set(valueFD, protoreflect.ValueOfMessage(out.ProtoReflect()))
	return true, true
}
