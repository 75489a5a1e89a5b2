package mtls

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// WorkloadAPISource is a [Source] fed by the SPIFFE Workload API (a SPIRE
// agent) through go-spiffe's workloadapi.X509Source, which reconnects and
// follows rotations by itself. See the package documentation for how a
// bootstrap selects it.
type WorkloadAPISource struct {
	x      *workloadapi.X509Source
	notify publisher // carries no material, only versions for Watch
	log    *slog.Logger
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

var _ Source = (*WorkloadAPISource)(nil)

// NewWorkloadAPISource connects to the Workload API at addr (for example
// "unix:///run/spire/agent.sock") and waits, bounded by ctx, for the first
// SVID and bundles; the agent may answer PermissionDenied until it has
// synced, which go-spiffe retries. log nil means slog.Default().
func NewWorkloadAPISource(ctx context.Context, addr string, log *slog.Logger) (*WorkloadAPISource, error) {
	if log == nil {
		log = slog.Default()
	}
	x, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		return nil, fmt.Errorf("mtls: workload API at %s: %w", addr, err)
	}
	s := &WorkloadAPISource{x: x, log: log, stop: make(chan struct{}), done: make(chan struct{})}
	s.notify.init()
	s.notify.publish(func(*material) (*x509svid.SVID, *x509bundle.Set) { return nil, x509bundle.NewSet() })
	go s.follow()
	return s, nil
}

// follow turns X509Source's update signals into Watch notifications.
func (s *WorkloadAPISource) follow() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case <-s.x.Updated():
			s.notify.publish(func(*material) (*x509svid.SVID, *x509bundle.Set) { return nil, x509bundle.NewSet() })
			if svid, err := s.x.GetX509SVID(); err == nil {
				s.log.Info("mtls: SVID updated from the Workload API", "spiffe_id", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter)
			}
		}
	}
}

// Close stops following updates and closes the Workload API connection.
func (s *WorkloadAPISource) Close() error {
	var err error
	s.once.Do(func() {
		close(s.stop)
		<-s.done
		err = s.x.Close()
	})
	return err
}

// GetX509SVID returns the Workload API's current default SVID.
func (s *WorkloadAPISource) GetX509SVID() (*x509svid.SVID, error) { return s.x.GetX509SVID() }

// GetX509BundleForTrustDomain returns the Workload API's current bundle of
// td, including federated ones.
func (s *WorkloadAPISource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.x.GetX509BundleForTrustDomain(td)
}

// Watch implements [Source]: version counts the updates received,
// starting at 1 for the initial one.
func (s *WorkloadAPISource) Watch() (uint64, <-chan struct{}) { return s.notify.Watch() }
