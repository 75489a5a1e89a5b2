package tokenreview

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"meshd.dev/meshd/ca"
)

// reviewer answers TokenReviews like the API server would for the tokens
// it knows.
func reviewer(tokens map[string]authnv1.TokenReviewStatus, calls *[]authnv1.TokenReviewSpec) k8stesting.ReactionFunc {
	return func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		*calls = append(*calls, tr.Spec)
		if tr.Spec.Token == "broken" {
			return true, nil, errors.New("connection refused")
		}
		tr.Status = tokens[tr.Spec.Token]
		return true, tr, nil
	}
}

func TestAuthenticate(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	client := fake.NewClientset()
	var calls []authnv1.TokenReviewSpec
	client.PrependReactor("create", "tokenreviews", reviewer(map[string]authnv1.TokenReviewStatus{
		"good":        {Authenticated: true, Audiences: []string{"meshd"}, User: authnv1.UserInfo{Username: "system:serviceaccount:demo:greeter"}},
		"other-aud":   {Authenticated: true, Audiences: []string{"https://kubernetes.default.svc"}, User: authnv1.UserInfo{Username: "system:serviceaccount:demo:greeter"}},
		"user":        {Authenticated: true, Audiences: []string{"meshd"}, User: authnv1.UserInfo{Username: "alice"}},
		"expired":     {Authenticated: false, Error: "token has expired"},
		"bad-segment": {Authenticated: true, Audiences: []string{"meshd"}, User: authnv1.UserInfo{Username: "system:serviceaccount:demo:Greeter!"}},
	}, &calls))
	a := New(client, td, "")
	tests := []struct {
		token, want, err string
		unauth           bool
	}{
		{"good", "spiffe://cluster.local/ns/demo/sa/greeter", "", false},
		{"", "", "no service-account token", true},
		{"other-aud", "", "not for audience \"meshd\"", true},
		{"user", "", "\"alice\" is not a service account", true},
		{"expired", "", "token has expired", true},
		{"unknown", "", "not authenticated", true},
		{"bad-segment", "", "demo/Greeter!", true},
		{"broken", "", "connection refused", false},
	}
	for _, tt := range tests {
		t.Run(tt.token, func(t *testing.T) {
			id, err := a.Authenticate(context.Background(), tt.token)
			if tt.err == "" {
				if err != nil || id.String() != tt.want {
					t.Fatalf("= %v, %v; want %s", id, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) || errors.Is(err, ca.ErrUnauthenticated) != tt.unauth {
				t.Fatalf("err = %v; want %q (unauthenticated %v)", err, tt.err, tt.unauth)
			}
		})
	}
	for _, c := range calls {
		if len(c.Audiences) != 1 || c.Audiences[0] != "meshd" {
			t.Fatalf("TokenReview asked for audiences %v, want [meshd]", c.Audiences)
		}
	}
}
