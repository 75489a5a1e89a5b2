//go:build !meshd_sidecar

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/internal/wasmbuild"
	kubesource "meshd.dev/meshd/kube/source"
	"meshd.dev/meshd/otel/metrics"
	"meshd.dev/meshd/otel/tracing"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/autotune"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/server"
	"meshd.dev/meshd/xds/source"
	"meshd.dev/meshd/xds/translate"
)

// controlPlaneStopTimeout bounds the graceful stop of the xDS and admin
// servers after SIGTERM or SIGINT.
const controlPlaneStopTimeout = 5 * time.Second

func runControlPlane(args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("control-plane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	meshPath := fs.String("config", "", "mesh file (meshd.dev/v1alpha1 documents), watched for changes")
	xdsAddr := fs.String("xds-address", "127.0.0.1:15010", "address of the gRPC ADS/xDS server")
	adminAddr := fs.String("admin-address", "127.0.0.1:15014", "address of the status, health and metrics HTTP server")
	xdsAddrPath := fs.String("xds-address-path", "", "write the bound xDS address to this file")
	adminAddrPath := fs.String("admin-address-path", "", "write the bound admin address to this file")
	poll := fs.Duration("poll-interval", source.DefaultPollInterval, "how often the mesh file is checked for changes")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	caDir := fs.String("ca-dir", defaultCADir(), "directory of the built-in CA: the generated root (when --ca-cert is not set) and the bootstrap-token secret, created on first use")
	caCert := fs.String("ca-cert", "", "signing certificate PEM of the built-in CA (followed by its chain up to the root); default: a root generated in --ca-dir")
	caKey := fs.String("ca-key", "", "private key PEM of --ca-cert")
	svidTTL := fs.Duration("svid-ttl", ca.DefaultTTL, "lifetime of the SVIDs the built-in CA issues (at least 1s)")
	otlpEndpoint := fs.String("otlp-endpoint", "", "HOST:PORT of an OpenTelemetry collector (OTLP/gRPC, plaintext): the control plane traces each xDS push until its ACK or NACK there")
	rlWasm := fs.String("ratelimit-wasm", "", "the rate-limit proxy-wasm module (filters/ratelimit/guest, built by go generate ./internal/wasmbuild) served to sidecars for RateLimitPolicies with engine wasm")
	moduleAddr := fs.String("module-address", "", "host:port sidecars reach the admin server at to fetch WASM modules (default: the bound --admin-address, an unspecified IP as loopback)")
	kube := fs.Bool("kube", false, "read the mesh from the Kubernetes API (Services, EndpointSlices, Pods, the meshd.dev CRDs) instead of --config; sidecars authenticate to the CA with their service-account token (TokenReview)")
	kubeconfig := fs.String("kubeconfig", "", "with --kube: kubeconfig file; default: the in-cluster service account")
	kubeTrustDomain := fs.String("trust-domain", model.DefaultTrustDomain, "with --kube: the CA's trust domain (a Mesh resource must agree)")
	otlpMetrics := fs.String("otlp-metrics-address", "", "OTLP/gRPC collector (host:port, plaintext) to export the control plane's metrics to; default: none")
	metricsInterval := fs.Duration("metrics-interval", metrics.DefaultInterval, "how often metrics are exported with --otlp-metrics-address")
	if code, done := parseFlags(fs, args, 2); done {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "meshd control-plane: unexpected arguments %q\n", fs.Args())
		return 2
	}
	logger, err := newLogger(stderr, *level)
	if err != nil {
		fmt.Fprintf(stderr, "meshd control-plane: %v\n", err)
		return 2
	}
	if *meshPath == "" && !*kube {
		fmt.Fprintln(stderr, "meshd control-plane: --config MESH.yaml is required (or --kube)")
		return 2
	}
	if *meshPath != "" && *kube {
		fmt.Fprintln(stderr, "meshd control-plane: --config and --kube are exclusive")
		return 2
	}
	if *poll <= 0 {
		fmt.Fprintln(stderr, "meshd control-plane: --poll-interval: must be positive")
		return 2
	}
	if (*caCert == "") != (*caKey == "") {
		fmt.Fprintln(stderr, "meshd control-plane: --ca-cert and --ca-key go together")
		return 2
	}
	if *svidTTL < ca.MinTTL {
		fmt.Fprintf(stderr, "meshd control-plane: --svid-ttl: %v is below the minimum %v\n", *svidTTL, ca.MinTTL)
		return 2
	}

	// The CA's trust domain is the mesh's; peek at the file once for it.
	// The watcher then keeps the token table in step with every version
	// it publishes (a mesh whose trust domain changed is rejected).
	td := *kubeTrustDomain
	var kc *kubeClients
	if *kube {
		var err error
		if kc, err = newKubeClients(*kubeconfig); err != nil {
			fmt.Fprintf(stderr, "meshd control-plane: --kube: %v\n", err)
			return 1
		}
	} else {
		m, err := model.Load(*meshPath)
		if err != nil {
			fmt.Fprintf(stderr, "meshd control-plane: invalid mesh file:\n%v\n", err)
			return 1
		}
		td = m.Spec.TrustDomain
	}
	st := stats.NewStore()
	caSvc, tokens, rotation, err := newBuiltinCA(td, *caDir, *caCert, *caKey, *svidTTL, logger, st, kc)
	if err != nil {
		fmt.Fprintf(stderr, "meshd control-plane: built-in CA: %v\n", err)
		return 1
	}
	var rlModule *server.Module
	if *rlWasm != "" {
		if rlModule, err = loadRateLimitModule(*rlWasm); err != nil {
			fmt.Fprintf(stderr, "meshd control-plane: --ratelimit-wasm: %v\n", err)
			return 1
		}
	}
	// Closed-loop tuning (xds/autotune) sits between the mesh watcher and
	// the xDS server: it learns from the sidecars' load reports (LRS on
	// the xDS port) and re-publishes the mesh with what it learned.
	var tuner *autotune.Tuner
	// ks, the Kubernetes source, is set before the admin server starts.
	var ks *kubesource.Source
	opts := server.Options{Logger: logger, Stats: st,
		Services: func(g grpc.ServiceRegistrar) { caSvc.Register(g); tuner.Register(g) },
		Tuning:   func() []server.TuningChange { return tuner.Changes() },
		Rejected: func() []server.RejectedObject {
			if ks == nil {
				return nil
			}
			return ks.Rejections()
		}}
	if *otlpEndpoint != "" {
		tp, err := tracing.NewSDKProvider(context.Background(), *otlpEndpoint, "meshd-control-plane")
		if err != nil {
			fmt.Fprintf(stderr, "meshd control-plane: --otlp-endpoint: %v\n", err)
			return 1
		}
		defer func() {
			if err := tracing.ShutdownSDKProvider(tp); err != nil {
				logger.Warn("tracing: spans not flushed at exit", "err", err)
			}
		}()
		opts.Tracer = tp.Tracer("meshd.dev/meshd/xds/server")
	}
	srv := server.New(opts)

	xdsLis, err := net.Listen("tcp", *xdsAddr)
	if err != nil {
		fmt.Fprintf(stderr, "meshd control-plane: --xds-address: %v\n", err)
		return 1
	}
	adminLis, err := net.Listen("tcp", *adminAddr)
	if err != nil {
		_ = xdsLis.Close()
		fmt.Fprintf(stderr, "meshd control-plane: --admin-address: %v\n", err)
		return 1
	}
	// The module's URL names the admin server, so the mesh is translated
	// once it is bound.
	var topts translate.Options
	if rlModule != nil {
		addr := adminLis.Addr().String()
		if *moduleAddr != "" {
			addr = *moduleAddr
		}
		if topts.RateLimitModule, err = rlModule.Ref(addr); err != nil {
			_ = xdsLis.Close()
			_ = adminLis.Close()
			fmt.Fprintf(stderr, "meshd control-plane: --module-address: %v\n", err)
			return 1
		}
		logger.Info("serving the rate-limit module", "url", topts.RateLimitModule.URL, "sha256", rlModule.SHA256)
	}
	if tuner, err = autotune.New(autotune.Options{Sink: srv, Logger: logger, Translate: topts}); err != nil {
		_ = xdsLis.Close()
		_ = adminLis.Close()
		fmt.Fprintf(stderr, "meshd control-plane: %v\n", err)
		return 1
	}
	// runSource feeds the server, through the tuner, until its context
	// ends: the mesh file's watcher, or the Kubernetes source.
	var runSource func(context.Context) error
	if kc != nil {
		ks, err = kc.source(tuner, td, topts, logger, st)
		if err != nil {
			_ = xdsLis.Close()
			_ = adminLis.Close()
			fmt.Fprintf(stderr, "meshd control-plane: --kube: %v\n", err)
			return 1
		}
		runSource = ks.Run
	} else {
		adjust := func(m *model.Mesh) error {
			if err := tokens.SetMesh(m); err != nil {
				return err
			}
			return tuner.Adjust(m)
		}
		watcher := source.NewFileWatcher(*meshPath, tuner, source.FileOptions{PollInterval: *poll, Logger: logger, Adjust: adjust, Translate: topts})
		if err := watcher.Load(); err != nil {
			_ = xdsLis.Close()
			_ = adminLis.Close()
			fmt.Fprintf(stderr, "meshd control-plane: invalid mesh file:\n%v\n", err)
			return 1
		}
		runSource = func(ctx context.Context) error { watcher.Run(ctx); return nil }
	}
	for _, f := range []struct{ path, addr string }{
		{*xdsAddrPath, xdsLis.Addr().String()},
		{*adminAddrPath, adminLis.Addr().String()},
	} {
		if f.path == "" {
			continue
		}
		if err := writeAddressFile(f.path, f.addr); err != nil {
			_ = xdsLis.Close()
			_ = adminLis.Close()
			fmt.Fprintf(stderr, "meshd control-plane: %v\n", err)
			return 1
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	adminMux := http.NewServeMux()
	adminMux.Handle(CARotatePath, rotation)
	if rlModule != nil {
		adminMux.Handle("GET "+rlModule.Path, rlModule)
	}
	adminMux.Handle("/", srv.AdminHandler())
	admin := &http.Server{Handler: adminMux, ReadHeaderTimeout: 10 * time.Second}
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := srv.Serve(xdsLis); err != nil {
			errs <- err
		}
	}()
	go func() {
		defer wg.Done()
		if err := admin.Serve(adminLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("admin server on %s: %w", adminLis.Addr(), err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := runSource(ctx); err != nil {
			errs <- err
		}
	}()
	logger.Info("control plane serving", "xds", xdsLis.Addr().String(), "admin", adminLis.Addr().String(), "config", *meshPath, "kube", *kube, "version", srv.Version())
	if *otlpMetrics != "" {
		stop, err := exportControlPlaneMetrics(*otlpMetrics, *metricsInterval, st, logger)
		if err != nil {
			logger.Error("metrics export not started", "err", err)
		} else {
			defer stop()
		}
	}

	code := awaitStop(logger, errs)
	cancel()
	stopCtx, stopCancel := context.WithTimeout(context.Background(), controlPlaneStopTimeout)
	defer stopCancel()
	srv.Stop(stopCtx)
	if err := admin.Shutdown(stopCtx); err != nil {
		_ = admin.Close()
	}
	wg.Wait()
	logger.Info("stopped")
	return code
}

// awaitStop blocks until SIGTERM or SIGINT arrives or a server fails on
// errs, logs why it is shutting down, and returns the exit code: 0 for a
// signal, 1 for a server error.
func awaitStop(logger *slog.Logger, errs <-chan error) int {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	select {
	case s := <-sigs:
		logger.Info("shutting down", "signal", s.String())
		return 0
	case err := <-errs:
		logger.Error("shutting down", "err", err)
		return 1
	}
}

// writeAddressFile writes addr to path through a temporary file and a
// rename, so a reader never sees half an address.
func writeAddressFile(path, addr string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".addr-*")
	if err != nil {
		return fmt.Errorf("address file %s: %w", path, err)
	}
	_, werr := tmp.WriteString(addr + "\n")
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("address file %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("address file %s: %w", path, err)
	}
	return nil
}

// defaultCADir is where the built-in CA keeps its generated root and token
// secret: <user config dir>/meshd/ca, or under the temp dir when there is
// no config dir (no $HOME).
func defaultCADir() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "meshd", "ca")
}

// newBuiltinCA loads (or generates and persists) the CA's signing
// authority and the bootstrap-token secret, and returns the gRPC service
// with the authenticator the mesh watcher keeps up to date.
//
// With kc (--kube) sidecars authenticate with their service-account token
// (TokenReview) instead of bootstrap tokens: there is no token secret and
// the returned *ca.TokenAuthenticator is nil.
func newBuiltinCA(trustDomain, dir, certFile, keyFile string, ttl time.Duration, logger *slog.Logger, st *stats.Store, kc *kubeClients) (*ca.Service, *ca.TokenAuthenticator, *caRotation, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("mesh trust domain %q: %w", trustDomain, err)
	}
	var a *ca.Authority
	if certFile != "" {
		a, err = ca.LoadAuthority(certFile, keyFile)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--ca-cert/--ca-key: %w", err)
		}
	} else {
		a, err = ca.LoadOrGenerate(dir, td)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--ca-dir %s: %w", dir, err)
		}
	}
	authority, err := ca.New(td, ca.Options{DefaultTTL: ttl}, a)
	if err != nil {
		return nil, nil, nil, err
	}
	rotation := &caRotation{ca: authority, log: logger}
	if certFile == "" {
		rotation.dir = dir // the root was generated there: persist its successor
	}
	if kc != nil {
		logger.Info("built-in CA ready", "trust_domain", td.Name(), "root", a.Root.Subject.String(), "root_expires", a.Root.NotAfter, "authentication", "TokenReview", "svid_ttl", ttl)
		return ca.NewService(authority, kc.authenticator(td), ca.ServiceOptions{Logger: logger, Stats: st}), nil, rotation, nil
	}
	secret, err := ca.LoadOrCreateTokenSecret(dir)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--ca-dir %s: %w", dir, err)
	}
	tokens := ca.NewTokenAuthenticator(secret, td)
	logger.Info("built-in CA ready", "trust_domain", td.Name(), "root", a.Root.Subject.String(), "root_expires", a.Root.NotAfter, "dir", dir, "svid_ttl", ttl)
	return ca.NewService(authority, tokens, ca.ServiceOptions{Logger: logger, Stats: st}), tokens, rotation, nil
}

// loadRateLimitModule reads the rate-limit module from path and checks
// that it exports the proxy-wasm ABI (a module built without
// internal/wasmbuild's overlay links but exports nothing).
func loadRateLimitModule(path string) (*server.Module, error) {
	m, err := server.ReadModule("ratelimit", path)
	if err != nil {
		return nil, err
	}
	if err := wasmbuild.CheckExports(context.Background(), m.Data()); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// exportControlPlaneMetrics exports the control plane's stats (pushes,
// ACKs, NACKs, connected nodes, push latency, CA counters) over OTLP/gRPC
// to addr every interval, named as the sidecar's are. The returned function
// exports once more and stops.
func exportControlPlaneMetrics(addr string, interval time.Duration, store *stats.Store, logger *slog.Logger) (func(), error) {
	exp, err := metrics.StartExporter(context.Background(), metrics.ExporterConfig{
		Endpoint: addr,
		Interval: interval,
		Producer: metrics.NewProducer(store, nil, metrics.ProducerOptions{UseTagExtractedName: true, EmitTagsAsAttributes: true}),
		Resource: []attribute.KeyValue{attribute.String("service.name", "meshd-control-plane")},
		Stats:    store, StatPrefix: "control_plane.otlp",
		Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	logger.Info("exporting metrics over OTLP", "endpoint", addr, "interval", interval)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := exp.Shutdown(ctx); err != nil {
			logger.Warn("final metrics export", "err", err)
		}
	}, nil
}
