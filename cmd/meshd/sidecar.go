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
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"meshd.dev/meshd/ca"
	caclient "meshd.dev/meshd/ca/client"
	"meshd.dev/meshd/kube/probe"
	"meshd.dev/meshd/otel/metrics"
	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/identity"
	"meshd.dev/meshd/proxy/sidecar"
	"meshd.dev/meshd/proxy/stats"
)

func runSidecar(args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "Envoy v3 bootstrap file (YAML or JSON)")
	fs.StringVar(path, "config-path", "", "same as -c")
	adminPath := fs.String("admin-address-path", "", "write the bound admin address to this file")
	drain := fs.Int("drain-time-s", 10, "seconds in-flight streams get to finish on shutdown")
	identityWait := fs.Duration("identity-wait", 30*time.Second, "how long start-up waits for the SVIDs of SDS identity sources before binding listeners (the sidecar is not ready until they arrive)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(level, "l", "info", "same as --log-level")
	configYAML := fs.String("config-yaml", "", "the bootstrap as a YAML string, instead of -c (as Envoy's --config-yaml; merging with -c is not supported)")
	serviceNode := fs.String("service-node", "", "node.id, replacing the bootstrap's (as Envoy's --service-node)")
	tokenFile := fs.String("token-file", "", "the built-in CA token's file (a projected service-account token on Kubernetes, which kubelet rotates): read for every SVID request and re-read every 5 min or halfway to the token's exp claim; also copied into node.metadata[\"meshd.token\"] at start")
	statusAddr := fs.String("status-address", "", "serve the status port here (host:port; empty: none): GET /app-health/<container>/<livez|readyz|startupz> runs the application's original kubelet probe from $"+probe.EnvAppProbes+" (set by meshd inject) against 127.0.0.1, and /healthz/ready answers 200 once the sidecar is ready")
	if code, done := parseFlags(fs, args, 2); done {
		return code
	}
	if fs.NArg() != 0 {
		// Flags after a stray argument would be ignored silently.
		fmt.Fprintf(stderr, "meshd sidecar: unexpected arguments %q (flags after them are not read)\n", fs.Args())
		return 2
	}
	logger, err := newLogger(stderr, *level)
	if err != nil {
		fmt.Fprintf(stderr, "meshd sidecar: %v\n", err)
		return 2
	}
	if (*path == "") == (*configYAML == "") {
		fmt.Fprintln(stderr, "meshd sidecar: -c BOOTSTRAP is required (or --config-yaml YAML, not both)")
		return 2
	}
	if *drain < 0 {
		fmt.Fprintln(stderr, "meshd sidecar: --drain-time-s: must not be negative")
		return 2
	}
	var sidecarRef atomic.Pointer[sidecar.Sidecar]
	if *statusAddr != "" {
		_, stop, err := startStatusServer(*statusAddr, os.Getenv(probe.EnvAppProbes), func() bool {
			sc := sidecarRef.Load()
			return sc != nil && sc.Ready()
		}, logger)
		if err != nil {
			fmt.Fprintf(stderr, "meshd sidecar: %v\n", err)
			return 1
		}
		defer stop()
	}
	b, err := loadSidecarBootstrap(*path, *configYAML, *serviceNode, *tokenFile)
	if err != nil {
		fmt.Fprintf(stderr, "meshd sidecar: %v\n", err)
		return 1
	}
	if *path == "" {
		*path = "--config-yaml"
	}
	sink, err := config.CompileStatsSinks(b)
	if err != nil {
		fmt.Fprintf(stderr, "meshd sidecar: invalid bootstrap %s:\n%v\n", *path, err)
		return 1
	}
	var durations *metrics.HTTPDurations
	if sink != nil {
		durations = metrics.NewHTTPDurations()
	}
	store := stats.NewStore()
	idOpts := identity.Options{Bootstrap: b, Stats: store, Logger: logger}
	if *tokenFile != "" {
		// kubelet rotates the projected token: it is read for every SVID
		// request and re-read in the background, not only at start.
		tf, err := caclient.NewTokenFile(*tokenFile, caclient.DefaultTokenRefresh, logger)
		if err != nil {
			fmt.Fprintf(stderr, "meshd sidecar: --token-file: %v\n", err)
			return 1
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = tf.Run(ctx) }()
		defer func() { cancel(); <-done }()
		idOpts.CAToken = tf.Token
	}
	ids, err := identity.New(idOpts)
	if err != nil {
		fmt.Fprintf(stderr, "meshd sidecar: %v\n", err)
		return 1
	}
	snap, err := compileWithIdentities(b, ids, *identityWait, logger)
	if err != nil {
		_ = ids.Close()
		fmt.Fprintf(stderr, "meshd sidecar: invalid bootstrap %s:\n%v\n", *path, err)
		return 1
	}
	sc := sidecar.New(sidecar.Options{
		AdminAddressPath: *adminPath,
		DrainTime:        time.Duration(*drain) * time.Second,
		Logger:           logger,
		Stats:            store,
		Identities:       ids,
		Durations:        durations,
		Version:          serverVersion(),
	})
	sidecarRef.Store(sc)
	if err := sc.Start(snap); err != nil {
		fmt.Fprintf(stderr, "meshd sidecar: %v\n", err)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = sc.Shutdown(ctx)
		return 1
	}
	// Ready (LIVE on /ready) is logged by the sidecar once the first xDS
	// config is warmed and the identities are there.
	logger.Info("sidecar started", "bootstrap", *path)
	if sink != nil {
		stop, err := startStatsSink(sink, b, store, durations, logger)
		if err != nil {
			logger.Error("metrics export not started", "err", err)
		} else {
			defer stop() // after the drain: the last export has the final counts
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	defer signal.Stop(sigs)
wait:
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGUSR1 {
				logger.Info("reopening access logs", "signal", s.String())
				sc.ReopenLogs()
				continue
			}
			logger.Info("shutting down", "signal", s.String(), "drain", sc.DrainTime())
		case <-sc.Done():
			logger.Info("shutting down", "reason", "/quitquitquit", "drain", sc.DrainTime())
		}
		break wait
	}
	ctx, cancel := context.WithTimeout(context.Background(), sc.DrainTime())
	defer cancel()
	if err := sc.Shutdown(ctx); err != nil {
		logger.Warn("drain deadline reached; remaining connections closed", "err", err)
	}
	logger.Info("stopped")
	return 0
}

// compileWithIdentities compiles b with its TLS contexts' SDS secrets
// served by ids. Compiling starts the identity sources the static
// resources name (and StartWellKnown those a dynamic configuration will);
// when any run, it waits up to wait for their SVIDs and compiles again, so
// listeners start with their SPIFFE ID as local principal. After wait it
// goes on: the sidecar stays unready until the SVIDs arrive.
func compileWithIdentities(b *bootstrapv3.Bootstrap, ids *identity.Manager, wait time.Duration, logger *slog.Logger) (*config.Snapshot, error) {
	snap, err := config.CompileResourcesWith(b, nil, ids)
	if err != nil {
		return nil, err
	}
	n, err := ids.StartWellKnown()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return snap, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := ids.Wait(ctx); err != nil {
		logger.Warn("starting without every SVID; not ready until they arrive", "err", err)
		return snap, nil
	}
	for _, cs := range ids.Certs() {
		logger.Info("identity ready", "source", cs.Source, "spiffe_id", cs.Chain[0].URIs[0].String(), "expires", cs.Chain[0].NotAfter)
	}
	return config.CompileResourcesWith(b, nil, ids)
}

// statusReadHeaderTimeout bounds a status-port request's headers; the
// probe itself is bounded by its own timeout.
const statusReadHeaderTimeout = 5 * time.Second

// startStatusServer serves the status port on addr with the application
// probes of probesJSON (probe.EnvAppProbes' value) and ready as the
// sidecar's readiness, and returns the bound address and a stop that
// closes it; bad probes or an address that cannot be bound are an error
// naming them.
func startStatusServer(addr, probesJSON string, ready func() bool, logger *slog.Logger) (bound net.Addr, stop func(), err error) {
	probes, err := probe.Parse(probesJSON)
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--status-address: %w", err)
	}
	srv := &http.Server{
		Handler:           &probe.Handler{Probes: probes, Ready: ready},
		ReadHeaderTimeout: statusReadHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("status server stopped", "address", ln.Addr().String(), "err", err)
		}
	}()
	logger.Info("status port serving", "address", ln.Addr().String(), "app_probes", len(probes))
	return ln.Addr(), func() {
		_ = srv.Close()
		<-done
	}, nil
}

// loadSidecarBootstrap loads the bootstrap from path or, when path is
// empty, from the YAML string inline; then sets node.id to serviceNode
// (when set) and node.metadata["meshd.token"] to the contents of
// tokenFile (when set). This is how an injected pod's sidecar gets its
// per-pod node ID (downward API) and its service-account token.
func loadSidecarBootstrap(path, inline, serviceNode, tokenFile string) (*bootstrapv3.Bootstrap, error) {
	var b *bootstrapv3.Bootstrap
	var err error
	if path != "" {
		b, err = config.LoadBootstrap(path)
	} else {
		path = "--config-yaml"
		b, err = config.ParseBootstrap([]byte(inline), path)
	}
	if err != nil {
		return nil, fmt.Errorf("invalid bootstrap %s:\n%w", path, err)
	}
	if serviceNode != "" {
		if b.Node == nil {
			b.Node = &corev3.Node{}
		}
		b.Node.Id = serviceNode
	}
	if tokenFile != "" {
		tok, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		t := strings.TrimSpace(string(tok))
		if t == "" {
			return nil, fmt.Errorf("--token-file %s: empty", tokenFile)
		}
		if b.Node == nil {
			b.Node = &corev3.Node{}
		}
		ca.SetNodeToken(b.Node, t)
	}
	return b, nil
}
