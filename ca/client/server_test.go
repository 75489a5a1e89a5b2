package client

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/xds/server"
)

// TestOverXDSServer: the CA registered through server.Options.Services is
// reachable on the xDS server's port, as the sidecar uses it.
func TestOverXDSServer(t *testing.T) {
	testutil.CheckGoroutines(t)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	root, err := ca.GenerateRoot(td)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(td, ca.Options{}, root)
	if err != nil {
		t.Fatal(err)
	}
	tokens := ca.NewTokenAuthenticator(secret, td)
	m := exampleMesh(t)
	if err := tokens.SetMesh(m); err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Options{Services: ca.NewService(authority, tokens, ca.ServiceOptions{}).Register})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		srv.Stop(ctx)
		wg.Wait()
	}()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sink := mtls.NewStaticSource()
	c, err := New(Options{Conn: cc, Token: ca.BootstrapToken(secret, "greeter-server.demo"), Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	// Watch before Run, so the first update cannot be missed.
	_, changed := sink.Watch()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-changed:
	case <-time.After(testTimeout):
		t.Fatal("no SVID within the timeout")
	}
	svid, err := sink.GetX509SVID()
	if err != nil || svid.ID.String() != "spiffe://example.org/ns/demo/sa/greeter-server" {
		t.Fatalf("SVID %v, %v", svid, err)
	}
	if got := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore); got != ca.DefaultTTL+ca.DefaultBackdate {
		t.Errorf("lifetime %v, want the default TTL plus backdate", got)
	}
}
