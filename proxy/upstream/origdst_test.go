package upstream

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

// origDstProto returns an ORIGINAL_DST cluster proto with cfg applied.
func origDstProto(cfg func(*clusterv3.Cluster)) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 "passthrough",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
	}
	if cfg != nil {
		cfg(c)
	}
	return c
}

// tcpAddr parses an "ip:port" test address.
func tcpAddr(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func TestCompileOriginalDst(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(*clusterv3.Cluster)
		want    OriginalDstSpec
		wantErr string // substring; "" = valid
	}{
		{name: "defaults", want: OriginalDstSpec{CleanupInterval: 5 * time.Second}},
		{
			name: "header, default name, port override, cleanup",
			cfg: func(c *clusterv3.Cluster) {
				c.CleanupInterval = durationpb.New(time.Second)
				c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{
					UseHttpHeader: true, UpstreamPortOverride: wrapperspb.UInt32(8080),
				}}
			},
			want: OriginalDstSpec{HTTPHeader: DefaultOriginalDstHeader, PortOverride: 8080, CleanupInterval: time.Second},
		},
		{
			name: "custom header lower-cased",
			cfg: func(c *clusterv3.Cluster) {
				c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{
					UseHttpHeader: true, HttpHeaderName: "X-Dst",
				}}
			},
			want: OriginalDstSpec{HTTPHeader: "x-dst", CleanupInterval: 5 * time.Second},
		},
		{name: "round robin", cfg: func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN }, wantErr: "lb_policy: an ORIGINAL_DST cluster needs CLUSTER_PROVIDED"},
		{
			name: "cluster provided on static",
			cfg: func(c *clusterv3.Cluster) {
				c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
			},
			wantErr: "lb_policy: CLUSTER_PROVIDED needs type ORIGINAL_DST",
		},
		{
			name: "load assignment",
			cfg: func(c *clusterv3.Cluster) {
				c.LoadAssignment = testClusterProto(t, "127.0.0.1:1").LoadAssignment
			},
			wantErr: "load_assignment: an ORIGINAL_DST cluster",
		},
		{
			name: "lb config on static",
			cfg: func(c *clusterv3.Cluster) {
				c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
				c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
				c.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: "passthrough"}
				c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{UseHttpHeader: true}}
			},
			wantErr: "original_dst_lb_config: applies to ORIGINAL_DST clusters only",
		},
		{name: "zero cleanup", cfg: func(c *clusterv3.Cluster) { c.CleanupInterval = durationpb.New(0) }, wantErr: "cleanup_interval: must be positive"},
		{
			name: "header name without use",
			cfg: func(c *clusterv3.Cluster) {
				c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{HttpHeaderName: "x-dst"}}
			},
			wantErr: "original_dst_lb_config.http_header_name: set without use_http_header",
		},
		{
			name: "port override out of range",
			cfg: func(c *clusterv3.Cluster) {
				c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{UpstreamPortOverride: wrapperspb.UInt32(70000)}}
			},
			wantErr: "original_dst_lb_config.upstream_port_override: 70000",
		},
		{
			name: "metadata key",
			cfg: func(c *clusterv3.Cluster) {
				c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{MetadataKey: &typev3.MetadataKey{Key: "k"}}}
			},
			wantErr: "original_dst_lb_config.metadata_key: not supported",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := CompileCluster(origDstProto(tt.cfg))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("CompileCluster error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("CompileCluster: %v", err)
			}
			if s.Discovery != OriginalDst || s.OriginalDst == nil || *s.OriginalDst != tt.want {
				t.Fatalf("compiled discovery %v, spec %+v; want OriginalDst %+v", s.Discovery, s.OriginalDst, tt.want)
			}
		})
	}
}

func TestOriginalDstPick(t *testing.T) {
	header := func(kv ...string) func(string) string {
		return func(name string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == name {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	withHeader := func(name string, port uint32) func(*clusterv3.Cluster) {
		return func(c *clusterv3.Cluster) {
			cfg := &clusterv3.Cluster_OriginalDstLbConfig{UseHttpHeader: true, HttpHeaderName: name}
			if port != 0 {
				cfg.UpstreamPortOverride = wrapperspb.UInt32(port)
			}
			c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: cfg}
		}
	}
	tests := []struct {
		name   string
		cfg    func(*clusterv3.Cluster)
		target Target
		want   string // host address; "" = no host
	}{
		{name: "connection destination", target: Target{LocalAddr: tcpAddr("10.1.2.3:8080")}, want: "10.1.2.3:8080"},
		{name: "v4-mapped v6 unmapped", target: Target{LocalAddr: tcpAddr("[::ffff:10.1.2.3]:80")}, want: "10.1.2.3:80"},
		{name: "ipv6", target: Target{LocalAddr: tcpAddr("[fd00::1]:443")}, want: "[fd00::1]:443"},
		{name: "no local address", target: Target{}, want: ""},
		{name: "unix address", target: Target{LocalAddr: &net.UnixAddr{Name: "/x", Net: "unix"}}, want: ""},
		{name: "unspecified", target: Target{LocalAddr: tcpAddr("0.0.0.0:80")}, want: ""},
		{
			name:   "header ignored without use_http_header",
			target: Target{LocalAddr: tcpAddr("10.1.2.3:80"), Header: header(DefaultOriginalDstHeader, "10.9.9.9:90")},
			want:   "10.1.2.3:80",
		},
		{
			name: "default header overrides", cfg: withHeader("", 0),
			target: Target{LocalAddr: tcpAddr("10.1.2.3:80"), Header: header(DefaultOriginalDstHeader, "10.9.9.9:90")},
			want:   "10.9.9.9:90",
		},
		{
			name: "custom header overrides", cfg: withHeader("X-Dst", 0),
			target: Target{LocalAddr: tcpAddr("10.1.2.3:80"), Header: header("x-dst", "[fd00::2]:90")},
			want:   "[fd00::2]:90",
		},
		{
			name: "absent header falls back to connection", cfg: withHeader("", 0),
			target: Target{LocalAddr: tcpAddr("10.1.2.3:80"), Header: header()},
			want:   "10.1.2.3:80",
		},
		{
			name: "invalid header selects nothing", cfg: withHeader("", 0),
			target: Target{LocalAddr: tcpAddr("10.1.2.3:80"), Header: header(DefaultOriginalDstHeader, "backend.svc:80")},
			want:   "",
		},
		{
			name: "port override beats header port", cfg: withHeader("", 9000),
			target: Target{LocalAddr: tcpAddr("10.1.2.3:80"), Header: header(DefaultOriginalDstHeader, "10.9.9.9:90")},
			want:   "10.9.9.9:9000",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := startTestCluster(t, origDstProto(tt.cfg))
			if h := c.Pick(); h != nil {
				t.Fatalf("Pick() = %s, want nil (ORIGINAL_DST has no balancer)", h.Addr)
			}
			h := c.PickFor(tt.target)
			switch {
			case tt.want == "" && h != nil:
				t.Fatalf("PickFor = %s, want no host", h.Addr)
			case tt.want == "" && len(c.Hosts()) != 0:
				t.Fatalf("hosts %d after a failed pick, want 0", len(c.Hosts()))
			case tt.want == "":
			case h == nil:
				t.Fatalf("PickFor = nil, want %s", tt.want)
			case h.Addr != tt.want:
				t.Fatalf("PickFor = %s, want %s", h.Addr, tt.want)
			default:
				if again := c.PickFor(tt.target); again != h {
					t.Fatalf("second PickFor for the same destination returned a new host %p, want %p", again, h)
				}
				if hs := c.Hosts(); len(hs) != 1 || hs[0] != h {
					t.Fatalf("Hosts() = %v, want the one picked host", hs)
				}
			}
		})
	}
}

func TestOriginalDstCleanup(t *testing.T) {
	c, _ := startTestCluster(t, origDstProto(func(c *clusterv3.Cluster) {
		c.CleanupInterval = durationpb.New(time.Hour) // sweeps are called by hand
	}))
	a := Target{LocalAddr: tcpAddr("10.0.0.1:80")}
	b := Target{LocalAddr: tcpAddr("10.0.0.2:80")}
	ha, hb := c.PickFor(a), c.PickFor(b)
	if ha == nil || hb == nil || ha == hb || len(c.Hosts()) != 2 {
		t.Fatalf("two destinations gave hosts %v, %v (%d in the cluster); want two distinct", ha, hb, len(c.Hosts()))
	}
	hb.LB.Acquire() // b carries a connection
	if n := c.cleanupOriginalDst(); n != 0 {
		t.Fatalf("first sweep removed %d hosts; both were used in the interval", n)
	}
	if n := c.cleanupOriginalDst(); n != 1 {
		t.Fatalf("second sweep removed %d hosts, want 1 (a unused, b busy)", n)
	}
	if hs := c.Hosts(); len(hs) != 1 || hs[0] != hb {
		t.Fatalf("after cleanup Hosts() = %v, want only the busy host", hs)
	}
	if got := c.PickFor(b); got != hb {
		t.Fatal("busy host was not reused")
	}
	hb.LB.Release()
	if got := c.PickFor(a); got == ha || got == nil {
		t.Fatalf("picking a removed destination returned %v; want a new host", got)
	}
	c.cleanupOriginalDst() // clears the marks of both
	if n := c.cleanupOriginalDst(); n != 2 || len(c.Hosts()) != 0 {
		t.Fatalf("idle hosts: removed %d, %d left; want 2 removed, none left", n, len(c.Hosts()))
	}
}

// TestOriginalDstCleanupLoop checks the cleanup goroutine removes an unused
// host on its own (short real interval) and exits when the cluster drains.
func TestOriginalDstCleanupLoop(t *testing.T) {
	testutil.CheckGoroutines(t)
	spec, err := CompileCluster(origDstProto(func(c *clusterv3.Cluster) {
		c.CleanupInterval = durationpb.New(10 * time.Millisecond)
	}))
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(stats.NewStore(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer m.Close()
	m.Apply([]*Spec{spec})
	c := m.Get("passthrough")
	if c.PickFor(Target{LocalAddr: tcpAddr("10.0.0.1:80")}) == nil {
		t.Fatal("no host for a valid destination")
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(c.Hosts()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("host not removed within 10s by a 10ms cleanup_interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
	m.Close()
	if h := c.PickFor(Target{LocalAddr: tcpAddr("10.0.0.1:80")}); h != nil {
		t.Fatal("a drained cluster added a host")
	}
}
