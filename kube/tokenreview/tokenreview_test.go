package tokenreview

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/internal/testutil"
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
	a := New(client, td, Options{})
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

// TestServiceAccountInformer: with the ServiceAccount informer, an SVID
// is issued only while the token's ServiceAccount exists with the token's
// UID; deleting it withdraws issuance with an error naming it, and a
// ServiceAccount recreated under the same name does not revive old tokens.
func TestServiceAccountInformer(t *testing.T) {
	testutil.CheckGoroutines(t)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	client := fake.NewClientset(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "greeter", Namespace: "demo", UID: "uid-1"}})
	var calls []authnv1.TokenReviewSpec
	sa := func(uid string) authnv1.TokenReviewStatus {
		return authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"meshd"},
			User: authnv1.UserInfo{Username: "system:serviceaccount:demo:greeter", UID: uid}}
	}
	client.PrependReactor("create", "tokenreviews", reviewer(map[string]authnv1.TokenReviewStatus{
		"old": sa("uid-1"), "new": sa("uid-2"),
	}, &calls))
	// The fake clientset drops events between an informer's List and its
	// Watch: the test mutates only once the watch is registered.
	watching := make(chan struct{})
	var once sync.Once
	client.PrependWatchReactor("serviceaccounts", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		once.Do(func() { close(watching) })
		return true, w, err
	})
	factory := informers.NewSharedInformerFactory(client, 0)
	a := New(client, td, Options{ServiceAccounts: factory.Core().V1().ServiceAccounts()})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		factory.Shutdown()
	}()

	// Before the cache syncs: a retryable internal error.
	if _, err := a.Authenticate(ctx, "old"); err == nil || errors.Is(err, ca.ErrUnauthenticated) || !strings.Contains(err.Error(), "not synced") {
		t.Fatalf("before sync: err = %v", err)
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("%v did not sync", typ)
		}
	}
	if id, err := a.Authenticate(ctx, "old"); err != nil || id.String() != "spiffe://cluster.local/ns/demo/sa/greeter" {
		t.Fatalf("existing ServiceAccount: %v, %v", id, err)
	}
	select {
	case <-watching:
	case <-time.After(10 * time.Second):
		t.Fatal("the ServiceAccount informer never watched")
	}

	// eventually waits until Authenticate(token) fails with want, or
	// succeeds when want is "".
	eventually := func(token, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := a.Authenticate(ctx, token)
			if want == "" && err == nil {
				return
			}
			if want != "" && err != nil && strings.Contains(err.Error(), want) {
				if !errors.Is(err, ca.ErrUnauthenticated) {
					t.Fatalf("%s: %v is not ErrUnauthenticated", token, err)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: err = %v, want %q", token, err, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	sas := client.CoreV1().ServiceAccounts("demo")
	if err := sas.Delete(ctx, "greeter", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("old", "ServiceAccount demo/greeter does not exist")
	if _, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "greeter", Namespace: "demo", UID: "uid-2"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("old", "ServiceAccount demo/greeter was recreated")
	eventually("new", "")
}
