// Package tokenreview authenticates sidecars to the built-in CA on
// Kubernetes: the bearer credential is the pod's projected service-account
// token (audience inject.TokenAudience), and the API server's TokenReview
// says whose it is. The SPIFFE ID issued is
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>, and only
// while that ServiceAccount exists (Options.ServiceAccounts).
package tokenreview

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/kube/inject"
)

// serviceAccountPrefix starts the user name of a service-account token.
const serviceAccountPrefix = "system:serviceaccount:"

// Authenticator is a ca.Authenticator asking the API server to review each
// token. It keeps no state of its own (the ServiceAccount cache is the
// cluster's), so every control-plane replica accepts every sidecar. Safe
// for concurrent use.
type Authenticator struct {
	client   kubernetes.Interface
	td       spiffeid.TrustDomain
	audience string
	sas      coreinformers.ServiceAccountInformer // nil: no ServiceAccount check
}

// Options configure an Authenticator.
type Options struct {
	// Audience is the audience tokens must be for (inject.TokenAudience
	// when empty).
	Audience string
	// ServiceAccounts, when set, is the ServiceAccount informer (its
	// factory started by the caller, the control plane's Kubernetes
	// source): an SVID is issued only while the token's ServiceAccount
	// exists in its cache with the UID the token was minted for, so
	// deleting (or recreating) a ServiceAccount withdraws new issuance at
	// once. Until the cache has synced, requests fail with an internal
	// error and are retried by the sidecar.
	ServiceAccounts coreinformers.ServiceAccountInformer
}

// New returns an authenticator issuing IDs in td for tokens the API server
// authenticates. With opts.ServiceAccounts it registers its informer with
// the informer's factory, so the caller must start that factory after New.
func New(client kubernetes.Interface, td spiffeid.TrustDomain, opts Options) *Authenticator {
	if opts.Audience == "" {
		opts.Audience = inject.TokenAudience
	}
	if opts.ServiceAccounts != nil {
		opts.ServiceAccounts.Informer() // registered with the factory before it starts
	}
	return &Authenticator{client: client, td: td, audience: opts.Audience, sas: opts.ServiceAccounts}
}

// Authenticate implements ca.Authenticator. A token the API server does
// not authenticate for the audience, or one that is not a service
// account's, is an error wrapping ca.ErrUnauthenticated; a failed
// TokenReview call is an internal error.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (spiffeid.ID, error) {
	if token == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: no service-account token", ca.ErrUnauthenticated)
	}
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{a.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("tokenreview: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return spiffeid.ID{}, fmt.Errorf("%w: TokenReview: %s", ca.ErrUnauthenticated, reason)
	}
	if !slices.Contains(st.Audiences, a.audience) {
		return spiffeid.ID{}, fmt.Errorf("%w: TokenReview: the token is not for audience %q (got %q)", ca.ErrUnauthenticated, a.audience, st.Audiences)
	}
	rest, ok := strings.CutPrefix(st.User.Username, serviceAccountPrefix)
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: TokenReview: user %q is not a service account", ca.ErrUnauthenticated, st.User.Username)
	}
	id, err := spiffeid.FromSegments(a.td, "ns", ns, "sa", sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: service account %s/%s: %v", ca.ErrUnauthenticated, ns, sa, err)
	}
	if err := a.checkServiceAccount(ns, sa, string(st.User.UID)); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// checkServiceAccount refuses a token whose ServiceAccount is not in the
// informer's cache, or is there with another UID than the token's (deleted
// and recreated under the same name).
func (a *Authenticator) checkServiceAccount(ns, name, uid string) error {
	if a.sas == nil {
		return nil
	}
	if !a.sas.Informer().HasSynced() {
		return fmt.Errorf("ServiceAccount %s/%s: the ServiceAccount cache has not synced yet", ns, name)
	}
	obj, err := a.sas.Lister().ServiceAccounts(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%w: ServiceAccount %s/%s does not exist (deleted?): no SVID is issued for it", ca.ErrUnauthenticated, ns, name)
	case err != nil:
		return fmt.Errorf("ServiceAccount %s/%s: %w", ns, name, err)
	case uid != "" && string(obj.UID) != uid:
		return fmt.Errorf("%w: ServiceAccount %s/%s was recreated (uid %s; the token is for uid %s): no SVID is issued for the old one", ca.ErrUnauthenticated, ns, name, obj.UID, uid)
	}
	return nil
}

var _ ca.Authenticator = (*Authenticator)(nil)
