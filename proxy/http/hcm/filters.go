package hcm

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/upstream"
)

// FilterEntry is one compiled http_filters entry before the router.
type FilterEntry struct {
	// Name is the entry's name.
	Name string
	// Factory creates the entry's per-stream filter.
	Factory filters.Factory
}

// compileFilters compiles http_filters: every entry's typed_config through
// the filters registry, the router last and only last.
func compileFilters(hf []*hcmv3.HttpFilter, statPrefix string) ([]FilterEntry, error) {
	if len(hf) == 0 {
		// Envoy uses the router alone when http_filters is empty; the
		// bootstrap validator still asks for it explicitly.
		return nil, nil
	}
	var out []FilterEntry
	for i, f := range hf {
		path := fmt.Sprintf("http_filters[%d]", i)
		if f.GetIsOptional() {
			return nil, fmt.Errorf("%s.is_optional: not supported", path)
		}
		if f.GetDisabled() {
			return nil, fmt.Errorf("%s.disabled: not supported (filters are disabled per route, which meshd does not support)", path)
		}
		if f.GetConfigDiscovery() != nil {
			return nil, fmt.Errorf("%s.config_discovery: not supported", path)
		}
		fac, err := filters.Build(f.GetTypedConfig(), filters.FactoryContext{Name: f.GetName(), StatPrefix: statPrefix})
		if err != nil {
			return nil, fmt.Errorf("%s.%w", path, err)
		}
		last := i == len(hf)-1
		switch {
		case fac == filters.Router && !last:
			return nil, fmt.Errorf("%s: the router must be the last http filter", path)
		case fac != filters.Router && last:
			return nil, fmt.Errorf("%s: the last http filter must be the router (%s)", path, filters.RouterName)
		case fac != filters.Router:
			out = append(out, FilterEntry{Name: f.GetName(), Factory: fac})
		}
	}
	return out, nil
}

// ForwardClientCert is forward_client_cert_details: what the connection
// manager does with x-forwarded-client-cert (XFCC) on requests it proxies.
type ForwardClientCert int

// The forward_client_cert_details modes, Envoy's. "mTLS" means the
// downstream connection presented a verified client certificate.
const (
	// XFCCSanitize removes XFCC (the default).
	XFCCSanitize ForwardClientCert = iota
	// XFCCForwardOnly forwards XFCC unchanged over mTLS, removes it otherwise.
	XFCCForwardOnly
	// XFCCAppendForward appends the client's element over mTLS, removes
	// XFCC otherwise.
	XFCCAppendForward
	// XFCCSanitizeSet replaces XFCC with the client's element over mTLS,
	// removes it otherwise.
	XFCCSanitizeSet
	// XFCCAlwaysForwardOnly forwards XFCC unchanged whatever the connection.
	XFCCAlwaysForwardOnly
)

// XFCCDetails is set_current_client_cert_details: which fields of the
// client certificate the connection manager adds besides By and Hash.
type XFCCDetails struct {
	Subject bool
	URI     bool
	DNS     bool
}

const xfccHeader = "x-forwarded-client-cert"

func compileXFCC(m *hcmv3.HttpConnectionManager, c *Config) error {
	switch v := m.GetForwardClientCertDetails(); v {
	case hcmv3.HttpConnectionManager_SANITIZE:
		c.ForwardClientCert = XFCCSanitize
	case hcmv3.HttpConnectionManager_FORWARD_ONLY:
		c.ForwardClientCert = XFCCForwardOnly
	case hcmv3.HttpConnectionManager_APPEND_FORWARD:
		c.ForwardClientCert = XFCCAppendForward
	case hcmv3.HttpConnectionManager_SANITIZE_SET:
		c.ForwardClientCert = XFCCSanitizeSet
	case hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY:
		c.ForwardClientCert = XFCCAlwaysForwardOnly
	default:
		return fmt.Errorf("forward_client_cert_details: %s is not supported", v)
	}
	d := m.GetSetCurrentClientCertDetails()
	if d == nil {
		return nil
	}
	switch {
	case d.GetCert():
		return fmt.Errorf("set_current_client_cert_details.cert: not supported (subject, uri, dns)")
	case d.GetChain():
		return fmt.Errorf("set_current_client_cert_details.chain: not supported (subject, uri, dns)")
	}
	c.XFCCDetails = XFCCDetails{Subject: d.GetSubject().GetValue(), URI: d.GetUri(), DNS: d.GetDns()}
	return nil
}

// applyXFCC sets x-forwarded-client-cert on out, the upstream request,
// from the downstream connection and the config (Envoy's
// ConnectionManagerUtility::mutateXfccRequestHeader).
func (ex *exchange) applyXFCC(out *stream.Request) {
	cfg := ex.cfg
	mode := cfg.ForwardClientCert
	if mode == XFCCAlwaysForwardOnly {
		return
	}
	var leaf *x509.Certificate
	if cs := ex.ds.Conn().TLS; cs != nil && len(cs.PeerCertificates) > 0 {
		leaf = cs.PeerCertificates[0]
	}
	if leaf == nil || mode == XFCCSanitize {
		out.Header.Del(xfccHeader)
		return
	}
	switch mode {
	case XFCCForwardOnly:
		return
	case XFCCSanitizeSet:
		out.Header.Set(xfccHeader, xfccElement(cfg.LocalPrincipal, leaf, cfg.XFCCDetails))
	case XFCCAppendForward:
		el := xfccElement(cfg.LocalPrincipal, leaf, cfg.XFCCDetails)
		if prev := strings.Join(out.Header.Values(xfccHeader), ","); prev != "" {
			el = prev + "," + el
		}
		out.Header.Set(xfccHeader, el)
	}
}

// xfccElement formats one XFCC element in Envoy's key order: By, Hash,
// Subject, URI, DNS.
func xfccElement(by string, leaf *x509.Certificate, d XFCCDetails) string {
	var b strings.Builder
	if by != "" {
		b.WriteString("By=")
		b.WriteString(by)
		b.WriteByte(';')
	}
	sum := sha256.Sum256(leaf.Raw)
	b.WriteString("Hash=")
	b.WriteString(hex.EncodeToString(sum[:]))
	if d.Subject {
		b.WriteString(`;Subject="`)
		b.WriteString(strings.ReplaceAll(leaf.Subject.String(), `"`, `\"`))
		b.WriteByte('"')
	}
	if d.URI {
		b.WriteString(";URI=")
		if len(leaf.URIs) > 0 {
			b.WriteString(leaf.URIs[0].String())
		}
	}
	if d.DNS {
		for _, n := range leaf.DNSNames {
			b.WriteString(";DNS=")
			b.WriteString(n)
		}
	}
	return b.String()
}

// LocalPrincipal returns the SPIFFE ID of a serving certificate (the URI
// SAN of leaf), "" when it has none. The snapshot compiler uses it for XFCC's
// By field.
func LocalPrincipal(leaf *x509.Certificate) string {
	if leaf == nil {
		return ""
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return ""
	}
	return id.String()
}

// The exchange is the filters' Callbacks.
var _ filters.Callbacks = (*exchange)(nil)

// destroyFilters calls OnDestroy on the stream's filters that implement
// filters.Destroyer, once the exchange has ended.
func (ex *exchange) destroyFilters() {
	for _, f := range ex.filters {
		if d, ok := f.(filters.Destroyer); ok {
			d.OnDestroy()
		}
	}
}

// runRequestFilters creates the stream's filters and runs their request
// header hooks in order. It returns false when a filter answered locally.
func (ex *exchange) runRequestFilters() bool {
	entries := ex.cfg.Filters
	ex.filters = make([]filters.Filter, 0, len(entries))
	for _, e := range entries {
		f := e.Factory.NewFilter()
		if f == nil {
			continue
		}
		ex.filters = append(ex.filters, f)
		st := f.OnRequestHeaders(ex, ex.req, ex.req.EndStream)
		if ex.replied {
			return false
		}
		if st != filters.Continue {
			// Stop without a reply: Envoy would wait for the filter to
			// resume, which this API does not offer; answer rather than hang.
			ex.h.logger.Error("http filter stopped the request without a local reply", "filter", e.Name)
			ex.localReply(500, "filter stopped without reply")
			return false
		}
	}
	ex.buildBodyChains()
	return true
}

// runResponseFilters runs the response header hooks in reverse order. It
// returns false when a hook replaced the response with a local reply (which
// has been sent).
func (ex *exchange) runResponseFilters(resp *stream.Response, endStream bool) bool {
	if len(ex.filters) == 0 || ex.inResponseFilters {
		return true
	}
	if ex.hooksShared() {
		ex.hooks.mu.Lock()
		defer ex.hooks.mu.Unlock()
	}
	ex.inResponseFilters = true
	defer func() { ex.inResponseFilters = false }()
	wasReplied := ex.replied
	for i := len(ex.filters) - 1; i >= 0; i-- {
		st := ex.filters[i].OnResponseHeaders(ex, resp, endStream)
		if ex.replied != wasReplied {
			return false
		}
		if st != filters.Continue {
			break
		}
	}
	return true
}

// SendLocalReply implements filters.Callbacks.
func (ex *exchange) SendLocalReply(status int, body string, details string) {
	if hs := ex.hooks; hs != nil && hs.inBodyReader {
		// A request body hook: the stream's goroutine answers once the
		// upstream attempt is torn down (exchangeEnded).
		if hs.pending == nil && !ex.headersSent.Load() {
			ex.h.logger.Debug("local reply from http filter body hook", "status", status, "details", details)
			hs.pending = &pendingReply{status: status, body: body}
			hs.cancel(errFilterReply)
		}
		return
	}
	if ex.replied || ex.headersSent.Load() {
		return
	}
	ex.replied = true
	ex.h.logger.Debug("local reply from http filter", "status", status, "details", details)
	ex.noteFilterReply(details)
	ex.localReply(status, body)
}

// Conn implements filters.Callbacks.
func (ex *exchange) Conn() *stream.ConnInfo { return ex.ds.Conn() }

// PeerPrincipal implements filters.Callbacks.
func (ex *exchange) PeerPrincipal() (string, bool) { return filters.PeerPrincipal(ex.ds.Conn().TLS) }

// Route implements filters.Callbacks.
func (ex *exchange) Route() *route.Route {
	if !ex.routed {
		ex.route, _ = ex.cfg.Routes.Match(ex.req)
		ex.routed = true
	}
	return ex.route
}

// ClearRouteCache implements filters.Callbacks.
func (ex *exchange) ClearRouteCache() { ex.routed, ex.route = false, nil }

// Stats implements filters.Callbacks.
func (ex *exchange) Stats() *stats.Scope { return ex.h.stats.Scope }

// Logger implements filters.Callbacks.
func (ex *exchange) Logger() *slog.Logger { return ex.h.logger }

// Context implements filters.Callbacks.
func (ex *exchange) Context() context.Context { return ex.ds.Context() }

// Clusters returns the sidecar's cluster manager, for filters that call
// clusters themselves (proxy-wasm http_call in filters/wasm).
func (ex *exchange) Clusters() *upstream.Manager { return ex.h.clusters }
