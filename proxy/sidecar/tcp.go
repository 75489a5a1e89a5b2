package sidecar

import (
	"context"

	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/listener"
	"meshd.dev/meshd/proxy/tcpproxy"
)

// bindTCP binds a listener whose network filter is tcp_proxy: connections
// (after TLS, when configured) go straight to the filter, without HTTP
// detection.
func (s *Sidecar) bindTCP(lc *config.Listener) (*liveListener, error) {
	p := tcpproxy.New(lc.TCP, s.clusters, s.store, s.logger)
	p.SetAccessLogs(s.accessLogs)
	ll := &liveListener{cfg: lc, tcp: p, served: make(chan struct{})}
	ll.logs.Store(&lc.AccessLogs)
	ln, err := listener.Listen(listener.Config{
		Name:    lc.Name,
		Address: lc.Address,
		TLS:     lc.TLS,
		// PERMISSIVE: plaintext connections are served too.
		TLSOptional: lc.TLSOptional,
		Codec:       listener.TCP,
		OriginalDst: lc.OriginalDst,
		Redirect:    s.redirect(lc),
		NoBind:      lc.NoBind,
		TCP:         p.NewConn,
		Logger:      s.logger,
		Stats:       listener.StatsScope(s.store.Root(), lc.Address),
		Rejected:    s.rejected(ll),
	})
	if err != nil {
		return nil, err
	}
	ll.ln = ln
	s.logger.Info("listener bound", "name", lc.Name, "address", ln.Addr().String(), "filter", "tcp_proxy")
	return ll, nil
}

// swap gives a listener that keeps its socket its new filter config;
// SameSocket guarantees lc has the same kind of filter as before.
func (ll *liveListener) swap(lc *config.Listener) {
	if ll.tcp != nil {
		ll.tcp.Swap(lc.TCP)
		return
	}
	ll.handler.Swap(lc.HCM)
}

// shutdownHTTP1 drains the listener's HTTP/1.1 server; tcp_proxy listeners
// have none.
func (ll *liveListener) shutdownHTTP1(ctx context.Context) {
	if ll.h1 != nil {
		_ = ll.h1.Shutdown(ctx)
	}
}
