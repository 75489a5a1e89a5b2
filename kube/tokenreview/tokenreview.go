// Package tokenreview authenticates sidecars to the built-in CA on
// Kubernetes: the bearer credential is the pod's projected service-account
// token (audience inject.TokenAudience), and the API server's TokenReview
// says whose it is. The SPIFFE ID issued is
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
package tokenreview

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/kube/inject"
)

// serviceAccountPrefix starts the user name of a service-account token.
const serviceAccountPrefix = "system:serviceaccount:"

// Authenticator is a ca.Authenticator asking the API server to review each
// token. It keeps no state, so every control-plane replica accepts every
// sidecar. Safe for concurrent use.
type Authenticator struct {
	client   kubernetes.Interface
	td       spiffeid.TrustDomain
	audience string
}

// New returns an authenticator issuing IDs in td for tokens the API server
// authenticates for the audience (inject.TokenAudience when empty).
func New(client kubernetes.Interface, td spiffeid.TrustDomain, audience string) *Authenticator {
	if audience == "" {
		audience = inject.TokenAudience
	}
	return &Authenticator{client: client, td: td, audience: audience}
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
	return id, nil
}

var _ ca.Authenticator = (*Authenticator)(nil)
