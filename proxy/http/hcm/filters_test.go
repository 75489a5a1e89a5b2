package hcm

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/filters"
	_ "meshd.dev/meshd/filters/rbac"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// recorder is a test filter configured by a google.protobuf.StringValue
// "label[:action]", where action "deny" answers 403 from the request hook
// and "replace" answers 418 from the response hook. It logs its hooks and
// OnDestroy.
type recorder struct {
	filters.PassThrough
	label, action string
	log           *callLog
}

type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(s string) { l.mu.Lock(); l.calls = append(l.calls, s); l.mu.Unlock() }
func (l *callLog) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.Join(l.calls, " ")
	l.calls = nil
	return s
}

var testLog = &callLog{}

func init() {
	filters.Register("type.googleapis.com/google.protobuf.StringValue", func(m proto.Message, _ filters.FactoryContext) (filters.Factory, error) {
		label, action, _ := strings.Cut(m.(*wrapperspb.StringValue).GetValue(), ":")
		if label == "" {
			return nil, fmt.Errorf("value: a label is required")
		}
		return &recorder{label: label, action: action, log: testLog}, nil
	})
}

func (r *recorder) NewFilter() filters.Filter { return r }

func (r *recorder) OnRequestHeaders(cb filters.Callbacks, req *stream.Request, _ bool) filters.Status {
	r.log.add("req:" + r.label)
	req.Header.Add("x-seen", r.label)
	if r.action == "deny" {
		cb.SendLocalReply(403, "denied by "+r.label, "test")
		return filters.Stop
	}
	return filters.Continue
}

func (r *recorder) OnResponseHeaders(cb filters.Callbacks, resp *stream.Response, _ bool) filters.Status {
	r.log.add("resp:" + r.label)
	if r.action == "replace" {
		cb.SendLocalReply(418, "replaced by "+r.label, "test")
		return filters.Stop
	}
	return filters.Continue
}

var _ filters.Destroyer = (*recorder)(nil)

func (r *recorder) OnDestroy() { r.log.add("destroy:" + r.label) }

func recorderFilter(v string) string {
	return fmt.Sprintf(`{"name":"rec","typed_config":{"@type":"type.googleapis.com/google.protobuf.StringValue","value":%q}}`, v)
}

const routerFilter = `{"name":"envoy.filters.http.router","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}`

func TestFilterChainOrder(t *testing.T) {
	testutil.CheckGoroutines(t)
	var seen sync.Map
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		seen.Store(s.Request().Path, strings.Join(s.Request().Header.Values("x-seen"), ","))
		respond(s, 200, "ok", header.Header{})
	})
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`
	tests := []struct {
		name       string
		chain      []string
		wantStatus int
		wantBody   string
		wantCalls  string
		wantSeen   string // x-seen values the upstream got; "" = not reached
	}{
		{name: "request in order, response reversed", chain: []string{"a", "b", "c"}, wantStatus: 200, wantBody: "ok",
			wantCalls: "req:a req:b req:c resp:c resp:b resp:a destroy:a destroy:b destroy:c", wantSeen: "a,b,c"},
		// c was never created, so it is not destroyed either.
		{name: "stop with local reply skips later filters and routing", chain: []string{"a", "b:deny", "c"}, wantStatus: 403,
			wantBody: "denied by b", wantCalls: "req:a req:b resp:b resp:a destroy:a destroy:b"},
		{name: "response hook replaces the upstream response", chain: []string{"a", "b:replace"}, wantStatus: 418,
			wantBody: "replaced by b", wantCalls: "req:a req:b resp:b destroy:a destroy:b", wantSeen: "a,b"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var fs []string
			for _, c := range tc.chain {
				fs = append(fs, recorderFilter(c))
			}
			fs = append(fs, routerFilter)
			e := newEnv(t, hcmJSON(routes, `"http_filters":[`+strings.Join(fs, ",")+`]`), clusterJSON([]string{up.addr}, ""))
			path := fmt.Sprintf("/t%d", i)
			s := newFakeStream("GET", path, header.Make(0), nil)
			e.serve(t, s)
			r := s.result()
			if r.status != tc.wantStatus || r.body != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", r.status, r.body, tc.wantStatus, tc.wantBody)
			}
			if got := testLog.take(); got != tc.wantCalls {
				t.Errorf("calls %q, want %q", got, tc.wantCalls)
			}
			got, _ := seen.Load(path)
			if g, _ := got.(string); g != tc.wantSeen {
				t.Errorf("upstream saw x-seen %q, want %q", g, tc.wantSeen)
			}
		})
	}
}

func TestCompileFiltersErrors(t *testing.T) {
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`
	tests := []struct {
		name, filters, want string
	}{
		{"router not last", routerFilter + "," + recorderFilter("a"), "http_filters[0]: the router must be the last"},
		{"no router", recorderFilter("a"), "http_filters[0]: the last http filter must be the router"},
		{"unknown type", `{"name":"x","typed_config":{"@type":"type.googleapis.com/google.protobuf.Int32Value","value":1}},` + routerFilter,
			`http_filters[0].typed_config: http filter type "type.googleapis.com/google.protobuf.Int32Value" is not supported`},
		{"builder error", recorderFilter("") + "," + routerFilter, "http_filters[0].typed_config.value: a label is required"},
		{"rbac shadow rules", `{"name":"rbac","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC","shadow_rules":{}}},` + routerFilter,
			"http_filters[0].typed_config.shadow_rules: not supported"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := mustHCM(t, hcmJSON(routes, `"http_filters":[`+tc.filters+`]`))
			_, err := Compile(m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Compile error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// rbacHCM is an HCM allowing only allowedID, and counting under "test".
func rbacHCM(allowedID string) string {
	rbac := fmt.Sprintf(`{"name":"envoy.filters.http.rbac","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
		"rules":{"action":"ALLOW","policies":{"callers":{"permissions":[{"any":true}],
		"principals":[{"authenticated":{"principal_name":{"exact":%q}}}]}}}}}`, allowedID)
	return hcmJSON(`{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`, `"http_filters":[`+rbac+`,`+routerFilter+`]`)
}

func TestRBACInFrontOfUpstream(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca := mtlstest.NewCA(t, "example.org")
	allowed := ca.Issue(t, "spiffe://example.org/ns/default/sa/a")
	other := ca.Issue(t, "spiffe://example.org/ns/default/sa/b")
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		respond(s, 200, "ok", header.Header{})
	})
	e := newEnv(t, rbacHCM("spiffe://example.org/ns/default/sa/a"), clusterJSON([]string{up.addr}, ""))
	tests := []struct {
		name       string
		peer       *tls.ConnectionState
		grpc       bool
		wantStatus int
		wantGRPC   string
	}{
		{name: "allowed ID passes", peer: peerState(allowed.Certificates[0]), wantStatus: 200},
		{name: "other ID gets 403", peer: peerState(other.Certificates[0]), wantStatus: 403},
		{name: "plaintext gets 403", wantStatus: 403},
		{name: "gRPC other ID gets PERMISSION_DENIED trailers-only", peer: peerState(other.Certificates[0]), grpc: true,
			wantStatus: 200, wantGRPC: "7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hdr := header.Make(0)
			if tc.grpc {
				hdr = grpcHeaders()
			}
			s := newFakeStream("POST", "/svc/Method", hdr, nil)
			s.info.TLS = tc.peer
			e.serve(t, s)
			r := s.result()
			if r.status != tc.wantStatus {
				t.Fatalf("status %d, want %d", r.status, tc.wantStatus)
			}
			if tc.wantStatus == 403 && r.body != "RBAC: access denied" {
				t.Errorf("body %q", r.body)
			}
			if tc.grpc {
				if got := r.header.Get("grpc-status"); got != tc.wantGRPC || !r.end {
					t.Errorf("grpc-status %q (trailers-only %v), want %q trailers-only", got, r.end, tc.wantGRPC)
				}
			}
		})
	}
	if a, d := e.counter("http.test.rbac.allowed"), e.counter("http.test.rbac.denied"); a != 1 || d != 3 {
		t.Errorf("rbac.allowed %d rbac.denied %d, want 1 and 3", a, d)
	}
}

// peerState is the state of a TLS connection whose client presented leaf.
func peerState(leaf *x509.Certificate) *tls.ConnectionState {
	return &tls.ConnectionState{
		HandshakeComplete: true,
		PeerCertificates:  []*x509.Certificate{leaf},
		VerifiedChains:    [][]*x509.Certificate{{leaf}},
	}
}

func mustHCM(t *testing.T, src string) *hcmv3.HttpConnectionManager {
	t.Helper()
	var m hcmv3.HttpConnectionManager
	if err := protojson.Unmarshal([]byte(src), &m); err != nil {
		t.Fatalf("HCM JSON: %v\n%s", err, src)
	}
	return &m
}

func TestXFCC(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca := mtlstest.NewCA(t, "example.org")
	client := ca.Issue(t, "spiffe://example.org/ns/default/sa/a")
	sum := sha256.Sum256(client.Certificates[0].Raw)
	el := "By=spiffe://example.org/ns/default/sa/server;Hash=" + hex.EncodeToString(sum[:]) + ";URI=spiffe://example.org/ns/default/sa/a"
	var got sync.Map
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		got.Store(s.Request().Path, strings.Join(s.Request().Header.Values("x-forwarded-client-cert"), "|"))
		respond(s, 200, "", header.Header{})
	})
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`
	tests := []struct {
		mode     string
		mtls     bool
		incoming string
		want     string
	}{
		{"SANITIZE", true, "By=x", ""},
		{"FORWARD_ONLY", true, "By=x", "By=x"},
		{"FORWARD_ONLY", false, "By=x", ""},
		{"APPEND_FORWARD", true, "By=x", "By=x," + el},
		{"APPEND_FORWARD", true, "", el},
		{"APPEND_FORWARD", false, "By=x", ""},
		{"SANITIZE_SET", true, "By=x", el},
		{"SANITIZE_SET", false, "By=x", ""},
		{"ALWAYS_FORWARD_ONLY", false, "By=x", "By=x"},
	}
	for i, tc := range tests {
		t.Run(fmt.Sprintf("%s/mtls=%v/in=%q", tc.mode, tc.mtls, tc.incoming), func(t *testing.T) {
			extra := fmt.Sprintf(`"forward_client_cert_details":%q,"set_current_client_cert_details":{"uri":true}`, tc.mode)
			cfg, err := Compile(mustHCM(t, hcmJSON(routes, extra)))
			if err != nil {
				t.Fatal(err)
			}
			cfg.LocalPrincipal = "spiffe://example.org/ns/default/sa/server"
			e := newEnv(t, hcmJSON(routes, extra), clusterJSON([]string{up.addr}, ""))
			e.h.Swap(cfg)
			hdr := header.Make(1)
			if tc.incoming != "" {
				hdr.Add("x-forwarded-client-cert", tc.incoming)
			}
			path := fmt.Sprintf("/x%d", i)
			s := newFakeStream("GET", path, hdr, nil)
			if tc.mtls {
				s.info.TLS = peerState(client.Certificates[0])
			}
			e.serve(t, s)
			if r := s.result(); r.status != 200 {
				t.Fatalf("status %d", r.status)
			}
			v, _ := got.Load(path)
			if v != tc.want {
				t.Errorf("upstream XFCC %q, want %q", v, tc.want)
			}
		})
	}
}
