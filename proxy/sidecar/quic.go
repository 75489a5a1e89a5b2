package sidecar

import (
	"context"
	"fmt"
	"time"

	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/http/h3"
	"meshd.dev/meshd/proxy/http/hcm"
	"meshd.dev/meshd/proxy/listener"
)

// bindQUIC binds a UDP listener serving HTTP/3 through the connection
// manager. Certificates come from the listener's TLS context per
// handshake, so SDS rotation reaches new QUIC connections as it does TCP
// ones.
func (s *Sidecar) bindQUIC(lc *config.Listener) (*liveListener, error) {
	hc := lc.HCM
	hst := hcm.NewStats(s.store, hc.StatPrefix)
	handler := hcm.NewHandler(hc, s.clusters, hst, s.logger)
	q := lc.QUIC
	qc := listener.QUICConfig{
		Name:           lc.Name,
		Address:        lc.Address,
		TLS:            lc.TLS,
		QUIC:           q.Options,
		Retry:          q.Retry,
		RetryThreshold: q.RetryThreshold,
		HTTP3: h3.ServerConfig{
			MaxHeaderBytes: hc.MaxRequestHeadersBytes,
			IdleTimeout:    hc.IdleTimeout,
			Stats:          h3.NewStats(s.store.Root().Scope("http3")),
		},
		Handler: handler,
		OnConn: func(ctx context.Context) {
			hst.CxTotal.Inc()
			hst.CxActive.Inc()
			hst.CxHTTP3Total.Inc()
			hst.CxHTTP3Active.Inc()
			start := time.Now()
			context.AfterFunc(ctx, func() {
				hst.CxActive.Dec()
				hst.CxHTTP3Active.Dec()
				hst.CxDestroy.Inc()
				hst.CxLengthMs.Record(float64(time.Since(start).Microseconds()) / 1000)
			})
		},
		Logger: s.logger,
		Stats:  listener.StatsScope(s.store.Root(), lc.Address),
	}
	if q.StatelessResetSecretFile != "" {
		key, err := h3.StatelessResetKeyFromFile(q.StatelessResetSecretFile)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
		}
		qc.StatelessResetKey = key
	}
	ln, err := listener.ListenQUIC(qc)
	if err != nil {
		return nil, err
	}
	s.logger.Info("listener bound", "name", lc.Name, "address", ln.Addr().String(), "transport", "quic")
	return &liveListener{cfg: lc, ln: ln, handler: handler, served: make(chan struct{})}, nil
}
