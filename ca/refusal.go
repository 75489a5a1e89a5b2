package ca

import (
	"context"
	"crypto/x509"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/peer"
)

// Bounds of the refusal log.
const (
	// refusalLogEvery is how often one refusal (the same reason for the
	// same caller) is logged at Warn: a sidecar the mesh does not know
	// retries its CSR with backoff for as long as it runs, and one line
	// per retry says nothing new. The repeats go to Debug and are counted
	// in control_plane.ca.unauthenticated.
	refusalLogEvery = 10 * time.Minute
	// maxRefusalKeys bounds the refusals remembered; past it, a new one is
	// logged at Warn without being remembered.
	maxRefusalKeys = 1024
)

// refusalLog says whether a refusal is the first of its kind within
// refusalLogEvery. Safe for concurrent use.
type refusalLog struct {
	now func() time.Time // immutable

	mu   sync.Mutex
	last map[refusalKey]time.Time // guarded by mu
}

// refusalKey names a refusal: why, for which caller (its IP) and which
// identity its CSR claims.
type refusalKey struct {
	reason, peer, claimed string
}

func newRefusalLog(now func() time.Time) *refusalLog {
	return &refusalLog{now: now, last: map[refusalKey]time.Time{}}
}

// first reports whether k was not logged within refusalLogEvery, and
// records it as logged now when so.
func (r *refusalLog) first(k refusalKey) bool {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if at, ok := r.last[k]; ok && now.Sub(at) < refusalLogEvery {
		return false
	}
	if len(r.last) >= maxRefusalKeys {
		for old, at := range r.last {
			if now.Sub(at) >= refusalLogEvery {
				delete(r.last, old)
			}
		}
	}
	if len(r.last) < maxRefusalKeys {
		r.last[k] = now
	}
	return true
}

// callerIP returns the IP of ctx's gRPC peer, "" when unknown.
func callerIP(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return host
	}
	return p.Addr.String()
}

// claimedID returns the URI SAN a CSR asks for (a sidecar's SPIFFE ID),
// "" when the CSR does not parse or names none. It is read only to name
// a refused caller in the log; it is never trusted.
func claimedID(csrDER []byte) string {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil || len(csr.URIs) == 0 {
		return ""
	}
	return csr.URIs[0].String()
}
