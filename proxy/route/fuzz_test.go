package route

import (
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"meshd.dev/meshd/proxy/http/stream"
)

// FuzzParseGRPCTimeout checks ParseGRPCTimeout against a straightforward
// reading of the spec. Seeds are in testdata/fuzz/FuzzParseGRPCTimeout.
func FuzzParseGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1H", "100m", "99999999H", "123456789S", "1x", "", "-1S"} {
		f.Add(s)
	}
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseGRPCTimeout(s)
		valid := len(s) >= 2 && len(s) <= 9
		var n uint64
		if valid {
			for i := 0; i < len(s)-1; i++ {
				if s[i] < '0' || s[i] > '9' {
					valid = false
				}
			}
			n, _ = strconv.ParseUint(s[:len(s)-1], 10, 64)
		}
		var unit time.Duration
		if len(s) > 0 {
			var ok bool
			unit, ok = units[s[len(s)-1]]
			valid = valid && ok
		}
		if valid != (err == nil) {
			t.Fatalf("ParseGRPCTimeout(%q) error = %v, want valid=%v", s, err, valid)
		}
		if !valid {
			return
		}
		want := time.Duration(math.MaxInt64)
		if n <= uint64(math.MaxInt64/int64(unit)) {
			want = time.Duration(n) * unit
		}
		if got != want {
			t.Fatalf("ParseGRPCTimeout(%q) = %v, want %v", s, got, want)
		}
	})
}

var fuzzRequests = []*stream.Request{
	req("foo.com", "/"),
	req("x.foo.com:8080", "/api/v1?debug=1&x=%20", "x-a", "1", "x-a", "2", "content-type", "application/grpc", "grpc-timeout", "3S"),
	req("API.example", "/svc/Method#frag", "x-n", "-5"),
	{Method: "CONNECT", Authority: "[::1]:443"},
}

// FuzzCompile feeds protojson-decoded RouteConfigurations to Compile: it
// must never panic, and a table it accepts must serve requests without
// panicking. Seeds are in testdata/fuzz/FuzzCompile.
func FuzzCompile(f *testing.F) {
	f.Add([]byte(`{"virtual_hosts":[{"name":"v","domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":"c"}}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rc := &routev3.RouteConfiguration{}
		if err := protojson.Unmarshal(data, rc); err != nil {
			return
		}
		tbl, err := Compile(rc)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		for i, proto := range fuzzRequests {
			r := *proto
			r.Header = proto.Header.Clone()
			rt, _ := tbl.Match(&r)
			if rt == nil {
				continue
			}
			cluster := rt.PickCluster(uint64(i) * 7919)
			rt.RequestHeaders(&r, cluster, nil)
			rt.Rewrite(&r, cluster)
			if b := rt.BodyBufferLimit.Bytes(uint32(i), 1); b < 1 {
				t.Fatalf("body buffer limit %+v resolves to %d", rt.BodyBufferLimit, b)
			}
			if d := EffectiveTimeout(rt, &r); d < 0 {
				t.Fatalf("negative effective timeout %v", d)
			}
			if loc := rt.RedirectLocation(&r); (loc != "") != (rt.Redirect != nil) {
				t.Fatalf("RedirectLocation %q for redirect %v", loc, rt.Redirect)
			}
			if rt.Direct == nil && rt.Redirect == nil && cluster == "" {
				t.Fatal("route action without a cluster")
			}
		}
	})
}

// benchTable has 100 routes in one virtual host among 20, the shape of a
// mid-size mesh: prefixes, exact paths, regexes and header matchers.
func benchTable(b *testing.B) *Table {
	rc := &routev3.RouteConfiguration{}
	for v := range 20 {
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
			Name:    fmt.Sprintf("v%d", v),
			Domains: []string{fmt.Sprintf("svc%d.mesh.local", v), fmt.Sprintf("svc%d.mesh.local:8080", v)},
		})
	}
	vh := &routev3.VirtualHost{Name: "big", Domains: []string{"big.mesh.local", "*.big.mesh.local"}}
	for i := range 100 {
		m := &routev3.RouteMatch{}
		switch i % 4 {
		case 0:
			m.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: fmt.Sprintf("/pkg.Service%d/", i)}
		case 1:
			m.PathSpecifier = &routev3.RouteMatch_Path{Path: fmt.Sprintf("/api/v%d/items", i)}
		case 2:
			m.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: fmt.Sprintf("/r%d", i)}
			m.Headers = []*routev3.HeaderMatcher{{Name: "x-version", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}}
		case 3:
			m.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: regexMatcher(fmt.Sprintf("/re%d/[a-z]+/[0-9]+", i))}
		}
		vh.Routes = append(vh.Routes, &routev3.Route{
			Match:  m,
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: fmt.Sprintf("c%d", i)}}},
		})
	}
	rc.VirtualHosts = append(rc.VirtualHosts, vh)
	tbl, err := Compile(rc)
	if err != nil {
		b.Fatal(err)
	}
	return tbl
}

func BenchmarkMatch100Routes(b *testing.B) {
	tbl := benchTable(b)
	cases := []struct {
		name string
		req  *stream.Request
		want string
	}{
		{"first", req("big.mesh.local", "/pkg.Service0/Call", "content-type", "application/grpc"), "c0"},
		{"middle-exact", req("big.mesh.local", "/api/v49/items?page=2"), "c49"},
		{"last-prefix-wildcard-host", req("a.big.mesh.local", "/pkg.Service96/Call"), "c96"},
		{"last-regex", req("big.mesh.local", "/re99/abc/123"), "c99"},
		{"no-match", req("big.mesh.local", "/nothing/here"), ""},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			rt, _ := tbl.Match(tc.req)
			if got := ""; rt != nil {
				got = rt.Cluster
				if got != tc.want {
					b.Fatalf("matched %q, want %q", got, tc.want)
				}
			} else if tc.want != "" {
				b.Fatalf("no match, want %q", tc.want)
			}
			b.ReportAllocs()
			for b.Loop() {
				tbl.Match(tc.req)
			}
		})
	}
}

func regexMatcher(re string) *matcherv3.RegexMatcher { return &matcherv3.RegexMatcher{Regex: re} }
