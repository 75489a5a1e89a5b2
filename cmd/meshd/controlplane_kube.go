//go:build !meshd_sidecar

package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"meshd.dev/meshd/ca"
	kubesource "meshd.dev/meshd/kube/source"
	"meshd.dev/meshd/kube/tokenreview"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/autotune"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// kubeResync is the Kubernetes informers' resync period: a periodic full
// rebuild that heals any missed event.
const kubeResync = 10 * time.Minute

// kubeClients are the API clients of `control-plane --kube`.
type kubeClients struct {
	client  kubernetes.Interface
	dynamic dynamic.Interface
	// informers is shared by the source (which starts it) and the CA's
	// authenticator (its ServiceAccount informer).
	informers informers.SharedInformerFactory
}

// newKubeClients connects with kubeconfig, or with the pod's service
// account when kubeconfig is empty.
func newKubeClients(kubeconfig string) (*kubeClients, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		// clientcmd would log two warnings and end with advice about
		// KUBERNETES_MASTER; outside a pod the fix is --kubeconfig.
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig, and not in a pod: %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
	}
	cfg.UserAgent = "meshd-control-plane"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return &kubeClients{client: c, dynamic: d, informers: informers.NewSharedInformerFactory(c, kubeResync)}, nil
}

// authenticator reviews sidecars' service-account tokens and issues SVIDs
// only for ServiceAccounts that exist (the shared ServiceAccount informer,
// started with the source).
func (kc *kubeClients) authenticator(td spiffeid.TrustDomain) ca.Authenticator {
	return tokenreview.New(kc.client, td, tokenreview.Options{ServiceAccounts: kc.informers.Core().V1().ServiceAccounts()})
}

// source returns the Kubernetes source publishing through tuner, the
// closed-loop tuner standing before the xDS server as it does for the mesh
// file (so load reports re-tune the cluster's mesh too); a mesh whose Mesh
// resource names another trust domain than the CA's is rejected.
// Its rejected Pods and Services count in st and show on /status.
func (kc *kubeClients) source(tuner *autotune.Tuner, trustDomain string, topts translate.Options, logger *slog.Logger, st *stats.Store) (*kubesource.Source, error) {
	return kubesource.New(tuner, kubesource.Options{
		Stats:     st,
		Client:    kc.client,
		Dynamic:   kc.dynamic,
		Informers: kc.informers,
		Resync:    kubeResync,
		Logger:    logger,
		Translate: topts,
		Adjust: func(m *model.Mesh) error {
			if m.Spec.TrustDomain != trustDomain {
				return fmt.Errorf("mesh spec.trustDomain %q is not the CA's %q (--trust-domain)", m.Spec.TrustDomain, trustDomain)
			}
			return tuner.Adjust(m)
		},
	})
}
