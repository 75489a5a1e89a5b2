package hcm

import (
	"strconv"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// TestUpstreamResetAtGRPCDeadline: a gRPC upstream that resets the stream
// with CANCEL once the request's grpc-timeout has passed (what grpc-go
// servers do at their deadline) is answered DEADLINE_EXCEEDED, as the
// client would have concluded talking to the upstream directly; any other
// reset before response headers stays UNAVAILABLE (or 503 for non-gRPC).
func TestUpstreamResetAtGRPCDeadline(t *testing.T) {
	testutil.CheckGoroutines(t)
	const deadline = 50 * time.Millisecond
	for _, tc := range []struct {
		name       string
		hdr        header.Header
		wait       time.Duration // before the upstream resets
		code       stream.ErrCode
		wantStatus int
		wantGRPC   string
	}{
		{name: "CANCEL past the grpc-timeout", hdr: grpcHeaders("grpc-timeout", "50m"), wait: 2 * deadline,
			code: stream.ErrCodeCancel, wantStatus: 200, wantGRPC: "4"},
		{name: "CANCEL before the grpc-timeout", hdr: grpcHeaders("grpc-timeout", "100S"),
			code: stream.ErrCodeCancel, wantStatus: 200, wantGRPC: "14"},
		{name: "CANCEL without grpc-timeout", hdr: grpcHeaders(), wait: 2 * deadline,
			code: stream.ErrCodeCancel, wantStatus: 200, wantGRPC: "14"},
		{name: "INTERNAL_ERROR past the grpc-timeout", hdr: grpcHeaders("grpc-timeout", "50m"), wait: 2 * deadline,
			code: stream.ErrCodeInternal, wantStatus: 200, wantGRPC: "14"},
		{name: "not gRPC", hdr: header.Make(0), wait: 2 * deadline,
			code: stream.ErrCodeCancel, wantStatus: 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
				time.Sleep(tc.wait)
				s.Reset(tc.code)
			})
			e := newEnv(t, hcmJSON(`{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`, ""), clusterJSON([]string{up.addr}, ""))
			fs := newFakeStream("POST", "/svc/Method", tc.hdr, nil)
			e.serve(t, fs)
			r := fs.result()
			if r.status != tc.wantStatus {
				t.Fatalf("status = %d, want %d", r.status, tc.wantStatus)
			}
			if got := r.header.Get("grpc-status"); got != tc.wantGRPC {
				t.Errorf("grpc-status = %q, want %q", got, tc.wantGRPC)
			}
			wantUpstream := tc.wantStatus
			if tc.wantGRPC == "4" {
				wantUpstream = 504
			} else if tc.wantGRPC != "" {
				wantUpstream = 503
			}
			if got := e.counter("cluster.backend.upstream_rq_" + strconv.Itoa(wantUpstream)); got != 1 {
				t.Errorf("upstream_rq_%d = %d, want 1", wantUpstream, got)
			}
		})
	}
}
