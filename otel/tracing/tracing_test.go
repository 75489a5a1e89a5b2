package tracing

import (
	"encoding/base64"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	_ "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
)

type mapHeaders map[string]string

func (m mapHeaders) Get(k string) string { return m[k] }

func TestExtract(t *testing.T) {
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for _, tc := range []struct {
		name    string
		h       mapHeaders
		ok      bool
		sampled bool
		tid     string
		b3      bool
	}{
		{"w3c sampled", mapHeaders{"traceparent": "00-" + tid + "-" + sid + "-01", "tracestate": "a=b"}, true, true, tid, false},
		{"w3c unsampled", mapHeaders{"traceparent": "00-" + tid + "-" + sid + "-00"}, true, false, tid, false},
		{"w3c future version with extra field", mapHeaders{"traceparent": "01-" + tid + "-" + sid + "-01-xyz"}, true, true, tid, false},
		{"w3c version 00 too long", mapHeaders{"traceparent": "00-" + tid + "-" + sid + "-01-"}, false, false, "", false},
		{"w3c version ff", mapHeaders{"traceparent": "ff-" + tid + "-" + sid + "-01"}, false, false, "", false},
		{"w3c upper case", mapHeaders{"traceparent": "00-" + strings.ToUpper(tid) + "-" + sid + "-01"}, false, false, "", false},
		{"w3c zero trace id", mapHeaders{"traceparent": "00-" + strings.Repeat("0", 32) + "-" + sid + "-01"}, false, false, "", false},
		{"w3c zero span id", mapHeaders{"traceparent": "00-" + tid + "-" + strings.Repeat("0", 16) + "-01"}, false, false, "", false},
		{"w3c wins over b3", mapHeaders{"traceparent": "00-" + tid + "-" + sid + "-01", "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}, true, true, tid, false},
		{"bad w3c falls back to b3", mapHeaders{"traceparent": "garbage", "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"}, true, false, "80f198ee56343ba864fe8b2a57d3eff7", true},
		{"b3 single debug", mapHeaders{"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d"}, true, true, "80f198ee56343ba864fe8b2a57d3eff7", true},
		{"b3 single no sampling state", mapHeaders{"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1"}, true, true, "80f198ee56343ba864fe8b2a57d3eff7", true},
		{"b3 single with parent", mapHeaders{"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"}, true, true, "80f198ee56343ba864fe8b2a57d3eff7", true},
		{"b3 sampling only", mapHeaders{"b3": "0"}, false, false, "", false},
		{"b3 multi 64-bit", mapHeaders{"x-b3-traceid": "a3ce929d0e0e4736", "x-b3-spanid": sid, "x-b3-sampled": "1"}, true, true, "0000000000000000a3ce929d0e0e4736", true},
		{"b3 multi unsampled", mapHeaders{"x-b3-traceid": tid, "x-b3-spanid": sid, "x-b3-sampled": "0"}, true, false, tid, true},
		{"b3 multi bad span id", mapHeaders{"x-b3-traceid": tid, "x-b3-spanid": "xyz"}, false, false, "", false},
		{"none", mapHeaders{}, false, false, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc, ok := Extract(tc.h)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if sc.Sampled != tc.sampled || sc.TraceID.String() != tc.tid || sc.B3 != tc.b3 {
				t.Errorf("got %+v (trace %s), want sampled %v trace %s b3 %v", sc, sc.TraceID, tc.sampled, tc.tid, tc.b3)
			}
			if tc.h["tracestate"] != "" && sc.TraceState != tc.h["tracestate"] {
				t.Errorf("tracestate %q", sc.TraceState)
			}
		})
	}
}

func TestFormatRoundTrip(t *testing.T) {
	for range 100 {
		tid, sid := NewTraceID(), NewSpanID()
		for _, sampled := range []bool{true, false} {
			sc, ok := ParseTraceparent(FormatTraceparent(tid, sid, sampled))
			if !ok || sc.TraceID != tid || sc.SpanID != sid || sc.Sampled != sampled {
				t.Fatalf("traceparent round trip of %s %s %v: %+v %v", tid, sid, sampled, sc, ok)
			}
			sc, ok = parseB3Single(FormatB3(tid, sid, sampled))
			if !ok || sc.TraceID != tid || sc.SpanID != sid || sc.Sampled != sampled {
				t.Fatalf("b3 round trip of %s %s %v: %+v %v", tid, sid, sampled, sc, ok)
			}
		}
	}
}

func TestAppendTraceparent(t *testing.T) {
	tid, sid := NewTraceID(), NewSpanID()
	for _, tc := range []struct {
		name    string
		dst     []byte
		sampled bool
	}{
		{"empty sampled", nil, true},
		{"empty unsampled", nil, false},
		{"after prefix", []byte("p="), true},
		{"in spare capacity", make([]byte, 0, TraceparentLen), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := string(tc.dst)
			got := AppendTraceparent(tc.dst, tid, sid, tc.sampled)
			if want := prefix + FormatTraceparent(tid, sid, tc.sampled); string(got) != want {
				t.Fatalf("AppendTraceparent = %q, want %q", got, want)
			}
			if cap(tc.dst) >= TraceparentLen && &got[0] != &tc.dst[:1][0] {
				t.Error("AppendTraceparent reallocated although dst had room")
			}
		})
	}
	buf := make([]byte, 0, TraceparentLen)
	if n := testing.AllocsPerRun(100, func() { AppendTraceparent(buf, tid, sid, true) }); n != 0 {
		t.Errorf("AppendTraceparent into spare capacity: %v allocations, want 0", n)
	}
}

// TestEncodeMatchesOTLP decodes the hand-encoded request with the OTLP
// protobuf types and compares every field.
func TestEncodeMatchesOTLP(t *testing.T) {
	start := time.Unix(1700000000, 123456789)
	s1 := NewSpan()
	s1.TraceID, s1.SpanID, s1.ParentSpanID = NewTraceID(), NewSpanID(), NewSpanID()
	s1.TraceState, s1.Kind, s1.Name = "k=v", KindServer, "grpc.testing.TestService/UnaryCall"
	s1.Start, s1.End = start, start.Add(1500*time.Microsecond)
	s1.SetStr("http.request.method", "POST")
	s1.SetInt("http.response.status_code", 200)
	s1.SetInt("negative", -3)
	s1.SetStr("long", strings.Repeat("x", 300))
	s1.SetAddr("peer4", netip.MustParseAddr("::ffff:127.0.0.1"))
	s1.SetAddr("peer6", netip.MustParseAddr("2001:db8::1"))
	s1.SetAddr("invalid", netip.Addr{})
	s1.AddEvent("upstream retry", start.Add(time.Millisecond), Attr{Key: "meshd.attempt", Int: 2, IsInt: true})
	s1.Error, s1.StatusMessage = true, "reset"
	s2 := NewSpan()
	s2.TraceID, s2.SpanID, s2.Kind, s2.Name = s1.TraceID, NewSpanID(), KindClient, "GET"
	s2.Start, s2.End = start, start
	s2.SetStr("http.request.method", "GET")
	s2.AddAttrs(EncodeAttrs(Attr{Key: "upstream_cluster", Str: "backend"}, Attr{Key: "skipped", Str: ""},
		Attr{Key: "server.port", Int: 8080, IsInt: true}))
	s2.AddAttrs(Attrs{})
	s2.SetInt("meshd.attempt", 1)
	r := newResource([]Attr{{Key: "service.name", Str: "svc"}}, "meshd", "v1")
	b := appendRequest(nil, &r, []*Span{s1, s2})
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	want := `{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
"scopeSpans":[{"scope":{"name":"meshd","version":"v1"},"spans":[
{"traceId":"` + hexB64(s1.TraceID[:]) + `","spanId":"` + hexB64(s1.SpanID[:]) + `","traceState":"k=v","parentSpanId":"` + hexB64(s1.ParentSpanID[:]) + `",
"name":"grpc.testing.TestService/UnaryCall","kind":"SPAN_KIND_SERVER","startTimeUnixNano":"1700000000123456789","endTimeUnixNano":"1700000000124956789",
"attributes":[{"key":"http.request.method","value":{"stringValue":"POST"}},{"key":"http.response.status_code","value":{"intValue":"200"}},
{"key":"negative","value":{"intValue":"-3"}},{"key":"long","value":{"stringValue":"` + strings.Repeat("x", 300) + `"}},
{"key":"peer4","value":{"stringValue":"127.0.0.1"}},{"key":"peer6","value":{"stringValue":"2001:db8::1"}}],
"events":[{"timeUnixNano":"1700000000124456789","name":"upstream retry","attributes":[{"key":"meshd.attempt","value":{"intValue":"2"}}]}],
"status":{"message":"reset","code":"STATUS_CODE_ERROR"},"flags":1},
{"traceId":"` + hexB64(s2.TraceID[:]) + `","spanId":"` + hexB64(s2.SpanID[:]) + `","name":"GET","kind":"SPAN_KIND_CLIENT",
"startTimeUnixNano":"1700000000123456789","endTimeUnixNano":"1700000000123456789",
"attributes":[{"key":"http.request.method","value":{"stringValue":"GET"}},{"key":"upstream_cluster","value":{"stringValue":"backend"}},
{"key":"server.port","value":{"intValue":"8080"}},{"key":"meshd.attempt","value":{"intValue":"1"}}],"flags":1}]}]}]}`
	var wantReq coltracepb.ExportTraceServiceRequest
	if err := protojson.Unmarshal([]byte(want), &wantReq); err != nil {
		t.Fatalf("want JSON: %v", err)
	}
	if !proto.Equal(&req, &wantReq) {
		t.Errorf("decoded\n%v\nwant\n%v", protojson.Format(&req), protojson.Format(&wantReq))
	}
}

// hexB64 renders bytes the way protojson renders bytes fields (base64).
func hexB64(b []byte) string { return b64(b) }

func TestCompile(t *testing.T) {
	const provider = `"provider":{"name":"envoy.tracers.opentelemetry","typed_config":{"@type":"type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig","grpc_service":{"envoy_grpc":{"cluster_name":"otel"}}}}`
	t.Setenv("MESHD_TEST_ZONE", "z1")
	for _, tc := range []struct {
		name, src, err string
		check          func(t *testing.T, c *Config)
	}{
		{"defaults", `{` + provider + `}`, "", func(t *testing.T, c *Config) {
			if c.RandomSampling != 100 || c.ClientSampling != 100 || c.OverallSampling != 100 || !c.SpawnUpstreamSpan ||
				c.Provider != (Provider{Cluster: "otel", ServiceName: "meshd"}) || c.MaxPathTagLength != 256 {
				t.Errorf("%+v", c)
			}
		}},
		{"fields", `{"random_sampling":{"value":10},"overall_sampling":{"value":50},"client_sampling":{"value":0},"spawn_upstream_span":false,"max_path_tag_length":8,
			"custom_tags":[{"tag":"zone","environment":{"name":"MESHD_TEST_ZONE"}},{"tag":"missing","environment":{"name":"MESHD_TEST_UNSET","default_value":"d"}}],` + provider + `}`, "",
			func(t *testing.T, c *Config) {
				if c.RandomSampling != 10 || c.OverallSampling != 50 || c.ClientSampling != 0 || c.SpawnUpstreamSpan || c.MaxPathTagLength != 8 {
					t.Errorf("%+v", c)
				}
				if len(c.CustomTags) != 2 || c.CustomTags[0].Value != "z1" || c.CustomTags[1].Value != "d" {
					t.Errorf("custom tags %+v", c.CustomTags)
				}
			}},
		{"no provider", `{}`, "provider: required", nil},
		{"bad percent", `{"random_sampling":{"value":150},` + provider + `}`, "random_sampling.value: 150 is outside [0, 100]", nil},
		{"no cluster", `{"provider":{"name":"x","typed_config":{"@type":"type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig","service_name":"s"}}}`, "provider.typed_config.grpc_service.envoy_grpc.cluster_name: required", nil},
		{"http service", `{"provider":{"name":"x","typed_config":{"@type":"type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig","http_service":{}}}}`, "provider.typed_config.http_service: OTLP over HTTP is not supported", nil},
		{"metadata tag", `{"custom_tags":[{"tag":"m","metadata":{}}],` + provider + `}`, "custom_tags[0]: a literal, environment or request_header tag is required", nil},
		{"untagged", `{"custom_tags":[{"literal":{"value":"v"}}],` + provider + `}`, "custom_tags[0].tag: required", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m hcmv3.HttpConnectionManager_Tracing
			if err := protojson.Unmarshal([]byte(tc.src), &m); err != nil {
				t.Fatalf("JSON: %v", err)
			}
			c, err := Compile(&m)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

// TestSample checks the decision order: a parent decides; otherwise
// client or random sampling, then overall sampling.
func TestSample(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		random, client, all   float64
		parent, has, clientID bool
		want                  bool
		reason                Reason
	}{
		{"parent sampled beats 0%", 0, 0, 0, true, true, false, true, ReasonParent},
		{"parent unsampled beats 100%", 100, 100, 100, false, true, false, false, ReasonParent},
		{"random 100", 100, 0, 100, false, false, false, true, ReasonRandom},
		{"random 0", 0, 100, 100, false, false, false, false, ReasonRandom},
		{"client id uses client_sampling", 0, 100, 100, false, false, true, true, ReasonClient},
		{"overall 0 vetoes", 100, 100, 0, false, false, true, false, ReasonClient},
	} {
		c := &Config{RandomSampling: tc.random, ClientSampling: tc.client, OverallSampling: tc.all}
		got, r := c.Sample(SpanContext{Sampled: tc.parent}, tc.has, tc.clientID)
		if got != tc.want || r != tc.reason {
			t.Errorf("%s: got %v %v, want %v %v", tc.name, got, r, tc.want, tc.reason)
		}
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// BenchmarkEncode is the span work of a batch of 512 spans shaped like
// a proxied gRPC request's (a server span with 15 attributes, a client
// span with 10): taking them from the pool, setting their attributes
// (encoded as they are set), encoding the export request and releasing
// them, as the request path and the exporter do.
func BenchmarkEncode(b *testing.B) {
	r := newResource([]Attr{{Key: "service.name", Str: "greeter-client.demo"}}, "meshd", "")
	spans := make([]*Span, 512)
	var buf []byte
	now := time.Now()
	for b.Loop() {
		for i := range spans {
			s := NewSpan()
			s.TraceID, s.SpanID, s.ParentSpanID, s.Kind, s.Name = NewTraceID(), NewSpanID(), NewSpanID(), KindServer, "grpc.testing.TestService/UnaryCall"
			s.Start, s.End = now, now
			n := 15
			if i%2 == 1 {
				n, s.Kind = 10, KindClient
			}
			for j := range n {
				if j%4 == 3 {
					s.SetInt("http.response.status_code", 200)
				} else {
					s.SetStr("upstream_address", "127.0.0.1:50051")
				}
			}
			spans[i] = s
		}
		buf = appendRequest(buf[:0], &r, spans)
		for _, s := range spans {
			release(s)
		}
	}
	b.ReportMetric(float64(len(buf))/256, "bytes/request")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/256, "ns/request")
}

// TestKVEncodingBoundaries decodes attributes of lengths around the
// one-byte varint limits (the encoder's fast path ends there) with the
// OTLP protobuf types.
func TestKVEncodingBoundaries(t *testing.T) {
	keys := []int{0, 1, 60, 111, 112, 113, 121, 122, 127, 128, 200}
	vals := []int{0, 1, 60, 115, 116, 119, 120, 121, 125, 126, 127, 128, 300}
	ints := []int64{0, 1, 127, 128, -1, math.MaxInt64, math.MinInt64}
	for _, kl := range keys {
		key := strings.Repeat("k", kl)
		var want commonpb.KeyValueList
		var b []byte
		for _, vl := range vals {
			v := strings.Repeat("v", vl)
			b = appendStrKV(b, 1, key, v)
			b = appendStrKV(b, 1, key, []byte(v))
			sv := &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}
			want.Values = append(want.Values, &commonpb.KeyValue{Key: key, Value: sv}, &commonpb.KeyValue{Key: key, Value: sv})
		}
		for _, v := range ints {
			b = appendIntKV(b, 1, key, v)
			want.Values = append(want.Values, &commonpb.KeyValue{Key: key, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}})
		}
		var got commonpb.KeyValueList
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatalf("key length %d: unmarshal: %v", kl, err)
		}
		if !proto.Equal(&got, &want) {
			t.Errorf("key length %d: decoded\n%v\nwant\n%v", kl, &got, &want)
		}
	}
}
