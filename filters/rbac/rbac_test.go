package rbac

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"strings"
	"testing"

	rbacfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/stats"
)

// fakeCallbacks records the local reply of one request.
type fakeCallbacks struct {
	conn   stream.ConnInfo
	store  *stats.Store
	status int
}

func (f *fakeCallbacks) SendLocalReply(status int, _, _ string) { f.status = status }
func (f *fakeCallbacks) Conn() *stream.ConnInfo                 { return &f.conn }
func (f *fakeCallbacks) PeerPrincipal() (string, bool)          { return filters.PeerPrincipal(f.conn.TLS) }
func (f *fakeCallbacks) Route() *route.Route                    { return nil }
func (f *fakeCallbacks) ClearRouteCache()                       {}
func (f *fakeCallbacks) Stats() *stats.Scope                    { return f.store.Root().Scope("http").Scope("t") }
func (f *fakeCallbacks) Logger() *slog.Logger                   { return slog.New(slog.DiscardHandler) }
func (f *fakeCallbacks) Context() context.Context               { return context.Background() }

func TestRBAC(t *testing.T) {
	ca := mtlstest.NewCA(t, "example.org")
	idA := "spiffe://example.org/ns/prod/sa/a"
	leafA := ca.Issue(t, idA).Certificates[0]
	leafB := ca.Issue(t, "spiffe://example.org/ns/dev/sa/b").Certificates[0]
	peer := func(c *x509.Certificate) *tls.ConnectionState {
		return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}, VerifiedChains: [][]*x509.Certificate{{c}}}
	}
	const anyPerm = `"permissions":[{"any":true}]`
	tests := []struct {
		name   string
		rules  string // rules JSON
		tls    *tls.ConnectionState
		path   string
		hdr    [2]string
		port   int
		remote string
		allow  bool
	}{
		{name: "exact ID allowed", rules: `{"action":"ALLOW","policies":{"p":{` + anyPerm + `,"principals":[{"authenticated":{"principal_name":{"exact":"` + idA + `"}}}]}}}`, tls: peer(leafA), allow: true},
		{name: "exact ID other denied", rules: `{"action":"ALLOW","policies":{"p":{` + anyPerm + `,"principals":[{"authenticated":{"principal_name":{"exact":"` + idA + `"}}}]}}}`, tls: peer(leafB)},
		{name: "prefix namespace", rules: `{"policies":{"p":{` + anyPerm + `,"principals":[{"authenticated":{"principal_name":{"prefix":"spiffe://example.org/ns/dev/"}}}]}}}`, tls: peer(leafB), allow: true},
		{name: "safe_regex", rules: `{"policies":{"p":{` + anyPerm + `,"principals":[{"authenticated":{"principal_name":{"safe_regex":{"regex":"^spiffe://example\\.org/ns/[a-z]+/sa/a$"}}}}]}}}`, tls: peer(leafA), allow: true},
		{name: "authenticated without name needs a cert", rules: `{"policies":{"p":{` + anyPerm + `,"principals":[{"authenticated":{}}]}}}`},
		{name: "DENY matching ID", rules: `{"action":"DENY","policies":{"p":{` + anyPerm + `,"principals":[{"authenticated":{"principal_name":{"suffix":"/sa/b"}}}]}}}`, tls: peer(leafB)},
		{name: "DENY not matching", rules: `{"action":"DENY","policies":{"p":{` + anyPerm + `,"principals":[{"authenticated":{"principal_name":{"suffix":"/sa/b"}}}]}}}`, tls: peer(leafA), allow: true},
		{name: "not_id", rules: `{"policies":{"p":{` + anyPerm + `,"principals":[{"not_id":{"authenticated":{"principal_name":{"exact":"` + idA + `"}}}}]}}}`, tls: peer(leafB), allow: true},
		{name: "and_ids needs both", rules: `{"policies":{"p":{` + anyPerm + `,"principals":[{"and_ids":{"ids":[{"any":true},{"direct_remote_ip":{"address_prefix":"10.0.0.0","prefix_len":8}}]}}]}}}`, remote: "127.0.0.1:5"},
		{name: "or_ids", rules: `{"policies":{"p":{` + anyPerm + `,"principals":[{"or_ids":{"ids":[{"direct_remote_ip":{"address_prefix":"10.0.0.0","prefix_len":8}},{"direct_remote_ip":{"address_prefix":"127.0.0.1","prefix_len":32}}]}}]}}}`, remote: "127.0.0.1:5", allow: true},
		{name: "url_path ignores query", rules: `{"policies":{"p":{"permissions":[{"url_path":{"path":{"exact":"/svc/Get"}}}],"principals":[{"any":true}]}}}`, path: "/svc/Get?x=1", allow: true},
		{name: "url_path other", rules: `{"policies":{"p":{"permissions":[{"url_path":{"path":{"exact":"/svc/Get"}}}],"principals":[{"any":true}]}}}`, path: "/svc/Put"},
		{name: "header", rules: `{"policies":{"p":{"permissions":[{"header":{"name":"x-role","string_match":{"exact":"admin"}}}],"principals":[{"any":true}]}}}`, hdr: [2]string{"x-role", "admin"}, allow: true},
		{name: "destination_port and not_rule", rules: `{"policies":{"p":{"permissions":[{"and_rules":{"rules":[{"destination_port":8443},{"not_rule":{"url_path":{"path":{"prefix":"/admin"}}}}]}}],"principals":[{"any":true}]}}}`, port: 8443, path: "/x", allow: true},
		{name: "or_rules no match", rules: `{"policies":{"p":{"permissions":[{"or_rules":{"rules":[{"destination_port":1},{"destination_port":2}]}}],"principals":[{"any":true}]}}}`, port: 8443},
		{name: "no policies ALLOW denies", rules: `{"action":"ALLOW"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cfg rbacfv3.RBAC
			if err := protojson.Unmarshal([]byte(`{"rules":`+tc.rules+`}`), &cfg); err != nil {
				t.Fatal(err)
			}
			f, err := Compile(&cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tc.path == "" {
				tc.path = "/"
			}
			if tc.remote == "" {
				tc.remote = "192.0.2.1:1"
			}
			h := header.Make(1)
			if tc.hdr[0] != "" {
				h.Add(tc.hdr[0], tc.hdr[1])
			}
			raddr, _ := net.ResolveTCPAddr("tcp", tc.remote)
			cb := &fakeCallbacks{store: stats.NewStore(), conn: stream.ConnInfo{TLS: tc.tls, RemoteAddr: raddr,
				LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: tc.port}}}
			st := f.NewFilter().OnRequestHeaders(cb, &stream.Request{Method: "GET", Path: tc.path, Header: h}, true)
			if allowed := st == filters.Continue && cb.status == 0; allowed != tc.allow {
				t.Fatalf("allowed %v (status %v, reply %d), want %v", allowed, st, cb.status, tc.allow)
			}
			if !tc.allow && cb.status != 403 {
				t.Errorf("reply %d, want 403", cb.status)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct{ cfg, want string }{
		{`{"shadow_rules":{}}`, "shadow_rules: not supported"},
		{`{"rules":{"action":"LOG"}}`, "rules.action: LOG is not supported"},
		{`{"rules":{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"source_ip":{"address_prefix":"1.2.3.4"}}]}}}}`, `rules.policies["p"].principals[0].source_ip: not supported`},
		{`{"rules":{"policies":{"p":{"permissions":[{"requested_server_name":{"exact":"a"}}],"principals":[{"any":true}]}}}}`, `rules.policies["p"].permissions[0].requested_server_name: not supported`},
		{`{"rules":{"policies":{"p":{"permissions":[{"any":true}]}}}}`, `rules.policies["p"].principals: at least one is required`},
	}
	for _, tc := range tests {
		var cfg rbacfv3.RBAC
		if err := protojson.Unmarshal([]byte(tc.cfg), &cfg); err != nil {
			t.Fatal(err)
		}
		_, err := Compile(&cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
