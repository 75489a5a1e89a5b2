package admin

import (
	"strings"
	"testing"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestRedact: sensitive fields read "[redacted]" wherever they sit (plain,
// in an Any, in a TypedStruct, under a sensitive message), the rest is
// untouched, and redact reports whether it changed anything.
func TestRedact(t *testing.T) {
	secret := func(key string) *tlsv3.Secret {
		return &tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "CHAIN"}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: key}},
		}}}
	}
	inAny, err := anypb.New(secret("/etc/KEY-IN-ANY"))
	if err != nil {
		t.Fatal(err)
	}
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(secret("/etc/KEY-IN-STRUCT"))
	if err != nil {
		t.Fatal(err)
	}
	st := &structpb.Struct{}
	if err := protojson.Unmarshal(js, st); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		msg     proto.Message
		changed bool
		hidden  string
	}{
		{"plain", secret("/etc/KEY"), true, "/etc/KEY"},
		{"any", inAny, true, "KEY-IN-ANY"},
		{"typed struct", &xdstypev3.TypedStruct{TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", Value: st}, true, "KEY-IN-STRUCT"},
		{"nothing sensitive", &tlsv3.Secret{Name: "ROOTCA"}, false, ""},
		{"unknown typed struct", &xdstypev3.TypedStruct{TypeUrl: "type.googleapis.com/meshd.test.Nope", Value: st}, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := redact(tc.msg.ProtoReflect(), false); got != tc.changed {
				t.Errorf("redact reported changed %v, want %v", got, tc.changed)
			}
			out, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			s := strings.ReplaceAll(string(out), " ", "")
			if tc.hidden != "" && (strings.Contains(s, tc.hidden) || !strings.Contains(s, `"private_key":{"filename":"[redacted]"}`)) {
				t.Errorf("key not redacted: %s", s)
			}
			if tc.changed && !strings.Contains(s, `"CHAIN"`) {
				t.Errorf("non-sensitive certificate_chain lost: %s", s)
			}
		})
	}
}
