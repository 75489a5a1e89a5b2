package config

import (
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

func tcpListener(t *testing.T, tp *tcpproxyv3.TcpProxy) *listenerv3.Listener {
	t.Helper()
	return &listenerv3.Listener{
		Name: "tcp",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15432},
		}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, tp)},
		}}}},
	}
}

// stdoutLog is an access_log list of one stdout logger with format.
func stdoutLog(t *testing.T, format string) []*accesslogv3.AccessLog {
	t.Helper()
	return []*accesslogv3.AccessLog{{Name: "envoy.access_loggers.stdout", ConfigType: &accesslogv3.AccessLog_TypedConfig{
		TypedConfig: mustAny(t, &streamv3.StdoutAccessLog{AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{
			LogFormat: &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormatSource{
				TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: format}},
			}},
		}}),
	}}}
}

func TestCompileTCPListener(t *testing.T) {
	base := func() *tcpproxyv3.TcpProxy {
		return &tcpproxyv3.TcpProxy{StatPrefix: "db", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "backend"}}
	}
	tests := []struct {
		name     string
		mutate   func(l *listenerv3.Listener, tp *tcpproxyv3.TcpProxy)
		wantErr  string // of CompileListener, or of ValidateListener when validate
		validate bool
	}{
		{name: "cluster", mutate: func(*listenerv3.Listener, *tcpproxyv3.TcpProxy) {}},
		{name: "idle_timeout", mutate: func(_ *listenerv3.Listener, tp *tcpproxyv3.TcpProxy) {
			tp.IdleTimeout = durationpb.New(time.Minute)
		}},
		{name: "access_log and options validate", validate: true,
			mutate: func(_ *listenerv3.Listener, tp *tcpproxyv3.TcpProxy) {
				tp.AccessLog = stdoutLog(t, "%UPSTREAM_HOST% %BYTES_SENT%\n")
				tp.AccessLogOptions = &tcpproxyv3.TcpProxy_TcpAccessLogOptions{FlushAccessLogOnConnected: true,
					AccessLogFlushInterval: durationpb.New(time.Second)}
			}},
		{name: "access_log compiles",
			mutate: func(l *listenerv3.Listener, tp *tcpproxyv3.TcpProxy) {
				tp.AccessLog = stdoutLog(t, "%UPSTREAM_HOST% %BYTES_SENT%\n")
				l.AccessLog = stdoutLog(t, "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%\n")
			}},
		{name: "listener access_log validates", validate: true,
			mutate: func(l *listenerv3.Listener, _ *tcpproxyv3.TcpProxy) {
				l.AccessLog = stdoutLog(t, "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%\n")
			}},
		{name: "bad tcp_proxy access_log format",
			mutate: func(_ *listenerv3.Listener, tp *tcpproxyv3.TcpProxy) {
				tp.AccessLog = stdoutLog(t, "%NOPE%")
			},
			wantErr: "filter_chains[0].filters[0].typed_config.access_log[0].typed_config.log_format.text_format_source: position 0: unknown command operator %NOPE%"},
		{name: "bad listener access_log format",
			mutate: func(l *listenerv3.Listener, _ *tcpproxyv3.TcpProxy) {
				l.AccessLog = stdoutLog(t, "%NOPE%")
			},
			wantErr: "access_log[0].typed_config.log_format.text_format_source: position 0: unknown command operator %NOPE%"},
		{name: "meshd.http2 metadata rejected",
			mutate: func(l *listenerv3.Listener, _ *tcpproxyv3.TcpProxy) {
				l.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MeshdHTTP2MetadataKey: {}}}
			},
			wantErr: `metadata.filter_metadata["meshd.http2"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp := base()
			l := tcpListener(t, tp)
			tt.mutate(l, tp)
			l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, tp)}
			var err error
			if tt.validate {
				err = ValidateListener(l, ResourceOptions{Clusters: map[string]bool{"backend": true}})
			} else {
				var cl *Listener
				cl, err = CompileListener(l)
				if err == nil && (cl.TCP == nil || cl.HCM != nil || cl.TCP.ClusterNames()[0] != "backend") {
					t.Fatalf("compiled %+v, want a tcp_proxy listener to backend", cl)
				}
				if err == nil && (len(cl.AccessLogs) != len(l.AccessLog) || len(cl.TCP.AccessLogs) != len(tp.AccessLog)) {
					t.Fatalf("compiled %d listener and %d tcp_proxy access logs, want %d and %d",
						len(cl.AccessLogs), len(cl.TCP.AccessLogs), len(l.AccessLog), len(tp.AccessLog))
				}
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error = %v, want it to name %q", err, tt.wantErr)
			}
		})
	}
}

// A listener that changes between tcp_proxy and HTTP on the same address
// needs a new socket (its connections are served differently); an edit of
// the tcp_proxy alone does not.
func TestSameSocketTCP(t *testing.T) {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: "db", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "backend"}}
	a, err := CompileListener(tcpListener(t, tp))
	if err != nil {
		t.Fatal(err)
	}
	tp2 := proto.Clone(tp).(*tcpproxyv3.TcpProxy)
	tp2.IdleTimeout = durationpb.New(time.Minute)
	b, err := CompileListener(tcpListener(t, tp2))
	if err != nil {
		t.Fatal(err)
	}
	hl := tcpListener(t, tp)
	hl.FilterChains[0].Filters[0] = &listenerv3.Filter{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &hcmv3.HttpConnectionManager{
		StatPrefix:     "in",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: nil},
	})}}
	h, err := CompileListener(hl)
	if err != nil {
		t.Fatalf("HTTP listener: %v", err)
	}
	if !a.SameSocket(b) {
		t.Error("tcp_proxy edit should keep the socket")
	}
	if a.SameSocket(h) || h.SameSocket(a) {
		t.Error("tcp_proxy ↔ HTTP should not keep the socket")
	}
}
