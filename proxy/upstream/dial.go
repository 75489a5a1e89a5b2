package upstream

import (
	"context"
	"net"
)

// Dial opens a raw connection to addr, one of spec's hosts, for a network
// filter that proxies bytes rather than streams (tcp_proxy). It applies the
// cluster's connection settings as the pools do: spec.ConnectTimeout bounds
// the TCP connect and the TLS handshake (when spec.TLS is set), TCP_NODELAY
// is set, and upstream_connection_options.tcp_keepalive when configured.
// A failure is counted in st (upstream_cx_connect_fail and, on timeout,
// upstream_cx_connect_timeout) and returned wrapped with addr; the caller
// counts upstream_cx_total and upstream_cx_active for the connections it
// gets, since it alone knows when they close.
func Dial(ctx context.Context, addr string, spec *Spec, st *Stats) (net.Conn, error) {
	if spec.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, spec.ConnectTimeout)
		defer cancel()
	}
	return dialUpstream(ctx, addr, spec.TLS, spec.TCPKeepalive, st)
}
