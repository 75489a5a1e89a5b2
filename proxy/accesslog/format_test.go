package accesslog

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.UTC)

func testInfo() *Info {
	req := &stream.Request{Method: "POST", Scheme: "https", Authority: "greeter.demo", Path: "/helloworld.Greeter/SayHello",
		Header: header.Make(4)}
	req.Header.Add("content-type", "application/grpc")
	req.Header.Add("user-agent", "grpc-go/1.85.0")
	req.Header.Add("x-request-id", "abc")
	resp := &stream.Response{Status: 200, Header: header.Make(2)}
	resp.Header.Add("x-envoy-upstream-service-time", "3")
	tr := header.Make(1)
	tr.Add("grpc-status", "14")
	peer := &x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/demo/sa/client"}},
		Subject: pkix.Name{Organization: []string{"demo"}, CommonName: "client"}}
	upstreamPeer := &x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/demo/sa/greeter"}},
		Subject: pkix.Name{Organization: []string{"demo"}, CommonName: "greeter"}}
	return &Info{
		Start:             t0,
		RequestDone:       t0.Add(2 * time.Millisecond),
		UpstreamFirstByte: t0.Add(5 * time.Millisecond),
		End:               t0.Add(12 * time.Millisecond),
		Request:           req,
		Response:          resp,
		Trailers:          tr,
		Conn: &stream.ConnInfo{
			LocalAddr:  &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 15001},
			RemoteAddr: &net.TCPAddr{IP: net.ParseIP("10.0.0.7"), Port: 43210},
			Proto:      "HTTP/2",
			TLS:        &tls.ConnectionState{ServerName: "greeter.demo.svc", PeerCertificates: []*x509.Certificate{peer}},
		},
		Flags:            UpstreamRemoteReset | UpstreamConnectionFailure,
		CodeDetails:      "via_upstream",
		BytesReceived:    17,
		BytesSent:        42,
		RouteName:        "default",
		UpstreamCluster:  "greeter",
		UpstreamHost:     "127.0.0.1:50051",
		UpstreamPeerCert: upstreamPeer,
		Attempts:         2,
		LocalURISAN:      "spiffe://cluster.local/ns/demo/sa/server",
		TraceID:          "4bf92f3577b34da6a3ce929d0e0e4736",
	}
}

func TestTextOperators(t *testing.T) {
	full := testInfo()
	bare := &Info{Start: t0, Request: &stream.Request{Method: "GET", Path: "/", Header: header.Make(0)}}
	for _, tc := range []struct {
		format string
		info   *Info
		want   string
	}{
		{"%START_TIME%", full, "2026-03-04T05:06:07.891Z"},
		{"%START_TIME(%Y/%m/%dT%H:%M:%S%z)%", full, "2026/03/04T05:06:07+0000"},
		{"%START_TIME(%s.%3f|%6f|%f)%", full, "1772600767.891|891234|891234567"},
		{"%REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %REQ(USER-AGENT)%", full, "POST /helloworld.Greeter/SayHello greeter.demo grpc-go/1.85.0"},
		{"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", full, "/helloworld.Greeter/SayHello"},
		{"%REQ(USER-AGENT):4%", full, "grpc"},
		{"%REQ(X-MISSING)%", full, "-"},
		{"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %TRAILER(GRPC-STATUS)%", full, "3 14"},
		{"%RESP(X)% %TRAILER(X)%", bare, "- -"},
		{"%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%", full, "200 UR,UF via_upstream"},
		{"%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%", bare, "0 - -"},
		{"%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION%", full, "12 2 5"},
		{"%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION%", bare, "- - -"},
		{"%BYTES_RECEIVED% %BYTES_SENT% %PROTOCOL%", full, "17 42 HTTP/2"},
		{"%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %UPSTREAM_TRANSPORT_FAILURE_REASON%", full, "127.0.0.1:50051 greeter -"},
		{"%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%", full, "10.0.0.7:43210 127.0.0.1:15001"},
		{"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", full, "10.0.0.7 127.0.0.1"},
		{"%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN%", full, "spiffe://cluster.local/ns/demo/sa/client spiffe://cluster.local/ns/demo/sa/server"},
		{"%DOWNSTREAM_PEER_URI_SAN% %REQUESTED_SERVER_NAME% %UPSTREAM_PEER_URI_SAN%", bare, "- - -"},
		{"%UPSTREAM_PEER_URI_SAN%|%UPSTREAM_PEER_SUBJECT%", full, "spiffe://cluster.local/ns/demo/sa/greeter|CN=greeter,O=demo"},
		{"%DOWNSTREAM_PEER_SUBJECT%", full, "CN=client,O=demo"},
		{"%UPSTREAM_PEER_SUBJECT% %DOWNSTREAM_PEER_SUBJECT%", bare, "- -"},
		{"%REQUESTED_SERVER_NAME% %ROUTE_NAME%", full, "greeter.demo.svc default"},
		{"%GRPC_STATUS% %GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS(NUMBER)% %GRPC_STATUS_NUMBER%", full, "Unavailable UNAVAILABLE 14 14"},
		{"%GRPC_STATUS%", bare, "-"},
		{"%UPSTREAM_REQUEST_ATTEMPT_COUNT% %TRACE_ID%", full, "2 4bf92f3577b34da6a3ce929d0e0e4736"},
		{"%TRACE_ID%", bare, "-"},
		{"literal only", full, "literal only"},
	} {
		f, err := CompileText(tc.format)
		if err != nil {
			t.Fatalf("%q: %v", tc.format, err)
		}
		got, _ := f.Append(nil, nil, tc.info)
		if string(got) != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.format, got, tc.want)
		}
	}
}

func TestGRPCStatusFromHTTP(t *testing.T) {
	i := testInfo()
	i.Trailers = header.Header{}
	i.Response.Status = 503
	f, _ := CompileText("%GRPC_STATUS%")
	if got, _ := f.Append(nil, nil, i); string(got) != "Unavailable" {
		t.Errorf("got %q, want Unavailable (503 of a gRPC request)", got)
	}
}

func TestDefaultFormat(t *testing.T) {
	f, err := CompileText(DefaultFormat)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := f.Append(nil, nil, testInfo())
	want := `[2026-03-04T05:06:07.891Z] "POST /helloworld.Greeter/SayHello HTTP/2" 200 UR,UF 17 42 12 3 "-" "grpc-go/1.85.0" "abc" "greeter.demo" "127.0.0.1:50051"` + "\n"
	if string(got) != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ format, want string }{
		{"%FOO%", "position 0: unknown command operator %FOO%"},
		{"a %REQ(x) b", "position 2: command REQ: missing closing '%'"},
		{"%REQ%", "%REQ%: requires a header name"},
		{"%DURATION(x)%", "%DURATION%: takes no argument"},
		{"%START_TIME(%Q)%", "unsupported specifier %Q"},
		{"100%", "position 3"},
		{"%REQ(a:b", "missing ')'"},
		{"%BYTES_SENT:0%", "bad length"},
		{"%GRPC_STATUS(HEX)%", "want CAMEL_STRING"},
	} {
		_, err := CompileText(tc.format)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want it to contain %q", tc.format, err, tc.want)
		}
	}
}

func TestJSONFormat(t *testing.T) {
	s, err := structpb.NewStruct(map[string]any{
		"code":     "%RESPONSE_CODE%",
		"duration": "%DURATION%",
		"flags":    "%RESPONSE_FLAGS%",
		"peer":     "%DOWNSTREAM_PEER_URI_SAN%",
		"missing":  "%REQ(X-NONE)%",
		"mixed":    "%REQ(:METHOD)% \"%REQ(:PATH)%\"",
		"nested":   map[string]any{"host": "%UPSTREAM_HOST%", "n": 1.5, "b": true},
		"lit":      "plain",
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := CompileJSON(s)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := f.Append(nil, nil, testInfo())
	if !strings.HasSuffix(string(line), "}\n") {
		t.Fatalf("line %q does not end with a newline", line)
	}
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	want := map[string]any{
		"code": 200.0, "duration": 12.0, "flags": "UR,UF", "peer": "spiffe://cluster.local/ns/demo/sa/client",
		"missing": nil, "mixed": `POST "/helloworld.Greeter/SayHello"`, "lit": "plain",
		"nested": map[string]any{"host": "127.0.0.1:50051", "n": 1.5, "b": true},
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Errorf("got  %s\nwant %s", gb, wb)
	}
	if !strings.HasPrefix(string(line), `{"code":200,"duration":12,`) {
		t.Errorf("keys not sorted or numbers quoted: %s", line)
	}

	f.omitEmpty = true
	line, _ = f.Append(nil, nil, testInfo())
	if strings.Contains(string(line), "missing") {
		t.Errorf("omit_empty_values kept a missing value: %s", line)
	}

	bad, _ := structpb.NewStruct(map[string]any{"a": map[string]any{"b": "%NOPE%"}})
	if _, err := CompileJSON(bad); err == nil || !strings.Contains(err.Error(), "a.b: position 0: unknown command operator %NOPE%") {
		t.Errorf("err %v", err)
	}
}

func TestJSONEscaping(t *testing.T) {
	i := testInfo()
	i.Request.Header.Set("user-agent", "a\"b\\c\nd\x01\xff")
	s, _ := structpb.NewStruct(map[string]any{"ua": "%REQ(USER-AGENT)%"})
	f, _ := CompileJSON(s)
	line, _ := f.Append(nil, nil, i)
	var got map[string]string
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	if got["ua"] != "a\"b\\c\nd\x01\ufffd" {
		t.Errorf("got %q", got["ua"])
	}
}

func TestFormatAllocs(t *testing.T) {
	f, err := CompileText(DefaultFormat + "%DOWNSTREAM_REMOTE_ADDRESS% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER% %GRPC_STATUS%")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := structpb.NewStruct(map[string]any{"code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "start": "%START_TIME%", "remote": "%DOWNSTREAM_REMOTE_ADDRESS%"})
	fj, _ := CompileJSON(s)
	i := testInfo()
	buf, scratch := make([]byte, 0, 1024), make([]byte, 0, 256)
	for _, tc := range []struct {
		name string
		f    *Formatter
	}{{"text", f}, {"json", fj}} {
		allocs := testing.AllocsPerRun(100, func() { buf, scratch = tc.f.Append(buf[:0], scratch[:0], i) })
		if allocs != 0 {
			t.Errorf("%s: %v allocs per line, want 0", tc.name, allocs)
		}
	}
}

func BenchmarkFormatDefault(b *testing.B) {
	f, _ := CompileText(DefaultFormat)
	i := testInfo()
	buf, scratch := make([]byte, 0, 1024), make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf, scratch = f.Append(buf[:0], scratch[:0], i)
	}
}
