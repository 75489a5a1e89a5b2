package accesslog

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/url"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"meshd.dev/meshd/proxy/http/stream"
)

// connInfo is a tcp_proxy connection record: no request, no response.
func connInfo() *Info {
	peer := &x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/demo/sa/client"}}}
	return &Info{
		Start: t0,
		End:   t0.Add(1500 * time.Millisecond),
		Conn: &stream.ConnInfo{
			LocalAddr:  &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 15006},
			RemoteAddr: &net.TCPAddr{IP: net.ParseIP("10.0.0.7"), Port: 43210},
			Proto:      "TCP",
			TLS:        &tls.ConnectionState{ServerName: "db.demo", PeerCertificates: []*x509.Certificate{peer}},
		},
		BytesReceived:   11,
		BytesSent:       4096,
		UpstreamCluster: "db",
		UpstreamHost:    "127.0.0.1:5432",
	}
}

// TestConnectionRecord checks that every operator renders a connection
// record the way Envoy renders a tcp_proxy StreamInfo: HTTP-only operators
// give "-" (or 0 for %RESPONSE_CODE%).
func TestConnectionRecord(t *testing.T) {
	full := connInfo()
	failed := connInfo()
	failed.Flags, failed.UpstreamTransportFailureReason, failed.BytesSent = UpstreamConnectionFailure, "connection refused", 0
	idle := connInfo()
	idle.TerminationDetails = "idle_timeout"
	rejected := &Info{Start: t0, End: t0.Add(3 * time.Millisecond), Conn: &stream.ConnInfo{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 15006}, RemoteAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 5555},
	}, DownstreamTransportFailureReason: "tls: first record does not look like a TLS handshake"}
	for _, tc := range []struct {
		name, format string
		info         *Info
		want         string
	}{
		{"default format", DefaultFormat, full,
			`[2026-03-04T05:06:07.891Z] "- - -" 0 - 11 4096 1500 - "-" "-" "-" "-" "127.0.0.1:5432"` + "\n"},
		{"addresses", "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", full,
			"10.0.0.7:43210 127.0.0.1:15006 10.0.0.7"},
		{"upstream", "%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %UPSTREAM_TRANSPORT_FAILURE_REASON%", full, "db 127.0.0.1:5432 -"},
		{"peer SAN and SNI", "%DOWNSTREAM_PEER_URI_SAN% %REQUESTED_SERVER_NAME%", full, "spiffe://cluster.local/ns/demo/sa/client db.demo"},
		{"HTTP-only operators", "%REQ(:PATH)% %RESP(X)% %TRAILER(X)% %PROTOCOL% %GRPC_STATUS% %ROUTE_NAME% %RESPONSE_CODE_DETAILS% %REQUEST_DURATION% %RESPONSE_DURATION%", full,
			"- - - - - - - - -"},
		{"connect failure", "%RESPONSE_FLAGS% %BYTES_SENT% %UPSTREAM_TRANSPORT_FAILURE_REASON%", failed, "UF 0 connection refused"},
		{"termination details", "%CONNECTION_TERMINATION_DETAILS%", idle, "idle_timeout"},
		{"no termination details", "%CONNECTION_TERMINATION_DETAILS%", full, "-"},
		{"listener rejection", "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%|%UPSTREAM_HOST%|%DOWNSTREAM_PEER_URI_SAN%|%DURATION%", rejected,
			"tls: first record does not look like a TLS handshake|-|-|3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := CompileText(tc.format)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := f.Append(nil, nil, tc.info)
			if string(got) != tc.want {
				t.Errorf("%s\n got %q\nwant %q", tc.format, got, tc.want)
			}
		})
	}
}

func TestConnectionRecordJSON(t *testing.T) {
	s, err := structpb.NewStruct(map[string]any{
		"rx": "%BYTES_RECEIVED%", "tx": "%BYTES_SENT%", "upstream": "%UPSTREAM_HOST%",
		"method": "%REQ(:METHOD)%", "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := CompileJSON(s)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := f.Append(nil, nil, connInfo())
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	want := map[string]any{"rx": 11.0, "tx": 4096.0, "upstream": "127.0.0.1:5432", "method": nil, "code": 0.0, "flags": "-"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %v, want %v (line %s)", k, got[k], v, line)
		}
	}
}

// TestFilterOnConnectionRecord: filters written for HTTP streams apply to
// connection records (status code 0, the record's flags and duration).
func TestFilterOnConnectionRecord(t *testing.T) {
	failed := connInfo()
	failed.Flags = UpstreamConnectionFailure
	for _, tc := range []struct {
		name string
		f    Filter
		info *Info
		want bool
	}{
		{"flag filter matches UF", mustFilter(t, `{"response_flag_filter":{"flags":["UF"]}}`), failed, true},
		{"flag filter skips clean", mustFilter(t, `{"response_flag_filter":{"flags":["UF"]}}`), connInfo(), false},
		{"status code is 0", mustFilter(t, `{"status_code_filter":{"comparison":{"op":"EQ","value":{"default_value":0,"runtime_key":"k"}}}}`), connInfo(), true},
		{"duration >= 1s", mustFilter(t, `{"duration_filter":{"comparison":{"op":"GE","value":{"default_value":1000,"runtime_key":"k"}}}}`), connInfo(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.f.Match(tc.info); got != tc.want {
				t.Errorf("Match = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestConnectionFormatAllocs(t *testing.T) {
	f, err := CompileText(DefaultFormat + "%DOWNSTREAM_REMOTE_ADDRESS% %UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %DOWNSTREAM_PEER_URI_SAN% %CONNECTION_TERMINATION_DETAILS%")
	if err != nil {
		t.Fatal(err)
	}
	i := connInfo()
	i.Flags = UpstreamConnectionFailure
	buf, scratch := make([]byte, 0, 1024), make([]byte, 0, 256)
	if allocs := testing.AllocsPerRun(100, func() { buf, scratch = f.Append(buf[:0], scratch[:0], i) }); allocs != 0 {
		t.Errorf("%v allocs per connection line, want 0", allocs)
	}
}

func mustFilter(t *testing.T, src string) Filter {
	t.Helper()
	var f accesslogv3.AccessLogFilter
	if err := protojson.Unmarshal([]byte(src), &f); err != nil {
		t.Fatal(err)
	}
	c, err := compileFilter(&f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAppendURI: the allocation-free rendering equals url.URL.String.
func TestAppendURI(t *testing.T) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/demo/sa/client",
		"spiffe://example.org",
		"spiffe://cluster.local/a%20b",
		"https://user@host/p?q=1#f",
		"urn:opaque:thing",
	} {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(appendURI(nil, u)); got != u.String() {
			t.Errorf("appendURI(%q) = %q, want %q", s, got, u.String())
		}
	}
}
