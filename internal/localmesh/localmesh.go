// Package localmesh runs a whole mesh on loopback, as `meshd up` does: an
// in-process xDS control plane publishing a mesh file, one `meshd sidecar`
// child process per Workload bootstrapped against it, and optionally sample
// gRPC applications (a grpc-go interop TestService server behind each
// grpc Workload's inbound side, and a client calling through each outbound
// port to a grpc Service), with live progress on a terminal.
//
// Ports the mesh file names that are busy are moved to free ones before
// translation (see PlanPorts), and the moves are printed; a mesh file given
// by path is watched, and edits are pushed to the running sidecars with the
// same moves applied.
//
// The control plane runs the built-in CA (package ca) on its xDS port, as
// `meshd control-plane` does, with a root generated for the run in the work
// directory (Options.CADir overrides it); each sidecar's bootstrap carries
// its token, so the mesh runs with the mTLS mode of its file (STRICT by
// default, as in the built-in example), and the start-up block prints
// every sidecar's SPIFFE ID.
package localmesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/internal/wasmbuild"
	"meshd.dev/meshd/xds/autotune"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/server"
	"meshd.dev/meshd/xds/source"
	"meshd.dev/meshd/xds/translate"
)

// BuiltinSource is the name the built-in example mesh goes by in messages.
const BuiltinSource = "built-in example mesh"

// Defaults of Options.
const (
	DefaultCallers = 4
	DefaultRate    = 100
	// DefaultReadyTimeout bounds the wait for every sidecar's /ready.
	DefaultReadyTimeout = 30 * time.Second
)

// Intervals of the live output.
const (
	progressInterval = time.Second
	// plainEvery is how often a line is printed when Out is not a terminal.
	plainEvery = 5 * time.Second
	// stopTimeout bounds stopping the sample server and the control plane.
	stopTimeout = 5 * time.Second
)

// Options configure Run.
type Options struct {
	// MeshPath is the mesh file to run and watch; empty runs the built-in
	// example (examples.Mesh), which is not watched.
	MeshPath string
	// Executable is the meshd binary the sidecars run as `meshd sidecar`;
	// required.
	Executable string
	// Samples starts the sample gRPC server and client (see the package
	// comment).
	Samples bool
	// Callers is the number of concurrent sample callers per outbound port
	// (DefaultCallers when 0); Rate caps their calls per second together
	// (DefaultRate when 0, no cap when negative).
	Callers int
	Rate    float64
	// Dir holds bootstraps and logs; empty creates a temporary directory,
	// removed at the end unless KeepLogs.
	Dir      string
	KeepLogs bool
	// Out receives the start-up block, the live progress and the final
	// summary line. Terminal selects the in-place redraw (ANSI cursor-up)
	// over a line every few seconds; Quiet prints neither.
	Out      io.Writer
	Terminal bool
	Quiet    bool
	// ReadyTimeout bounds the wait for the sidecars (DefaultReadyTimeout
	// when 0).
	ReadyTimeout time.Duration
	// Logger receives the control plane's logs; nil writes them to
	// control-plane.log in Dir.
	Logger *slog.Logger
	// CADir is where the in-process control plane's built-in CA keeps its
	// root and bootstrap-token secret; empty uses "ca" in Dir, a fresh
	// root for every run that goes away with the temporary directory
	// (nothing outlives `meshd up`, and its CA never mixes with a
	// `meshd control-plane`'s).
	CADir string
	// SVIDTTL is the lifetime of the sidecars' SVIDs (ca.DefaultTTL, 24h,
	// when 0; at least ca.MinTTL); sidecars renew at half-life.
	SVIDTTL time.Duration
	// RateLimitWasm is the rate-limit proxy-wasm module served to the
	// sidecars for RateLimitPolicies with engine wasm. Empty builds it
	// from filters/ratelimit/guest with internal/wasmbuild (cached
	// outside the repository) when the mesh has such a policy at start,
	// which needs the meshd source tree and a Go toolchain.
	RateLimitWasm string
}

// Run starts the local mesh and runs it until ctx ends, then stops the
// sample client, the sidecars (SIGTERM, bounded wait), the sample server
// and the control plane, in that order, prints the summary line and
// returns. It returns an error when the mesh cannot start or a part failed
// while running; the parts it started are stopped either way.
func Run(ctx context.Context, opts Options) (err error) {
	began := time.Now()
	if opts.Executable == "" {
		return errors.New("localmesh: Options.Executable is required")
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Callers <= 0 {
		opts.Callers = DefaultCallers
	}
	if opts.Rate == 0 {
		opts.Rate = DefaultRate
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = DefaultReadyTimeout
	}
	if opts.SVIDTTL == 0 {
		opts.SVIDTTL = ca.DefaultTTL
	}
	if opts.SVIDTTL < ca.MinTTL {
		return fmt.Errorf("localmesh: SVID TTL %v is below the minimum %v", opts.SVIDTTL, ca.MinTTL)
	}

	m, err := loadMesh(opts.MeshPath)
	if err != nil {
		return err
	}
	plan, err := PlanPorts(m, opts.Samples, PortFree, PickPort)
	if err != nil {
		return fmt.Errorf("choosing ports: %w", err)
	}
	if err := plan.Apply(m); err != nil {
		return fmt.Errorf("moving ports: %w", err)
	}
	for _, w := range m.Warnings() {
		fmt.Fprintf(opts.Out, "warning: %s\n", w)
	}

	dir, removeDir, err := workDir(opts.Dir, opts.KeepLogs)
	if err != nil {
		return err
	}
	defer func() {
		if rerr := removeDir(); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()

	logger, closeLog, err := controlPlaneLogger(opts.Logger, dir)
	if err != nil {
		return err
	}
	defer closeLog()

	lm := &localMesh{opts: opts, mesh: m, plan: plan, dir: dir, logger: logger, http: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}
	defer lm.http.CloseIdleConnections()
	startErr := lm.start(ctx)
	if startErr != nil && ctx.Err() != nil {
		if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
			// The run's time limit (--duration) ran out before the mesh
			// came up: the run showed nothing, which is a failure.
			startErr = fmt.Errorf("the run's time limit ran out before the mesh was ready: %w", startErr)
		} else {
			// Stopped (Ctrl-C, SIGTERM) while coming up: a clean stop.
			startErr = nil
		}
	}
	var runErr error
	if startErr == nil && ctx.Err() == nil {
		lm.printStart()
		runErr = lm.watch(ctx)
	}
	stopErr := lm.stop()
	if lm.rec != nil {
		totals, _ := lm.rec.Take()
		fmt.Fprintln(opts.Out, totals.Summary(began))
	}
	if opts.KeepLogs || startErr != nil || runErr != nil {
		fmt.Fprintf(opts.Out, "logs kept in %s\n", dir)
	}
	return errors.Join(startErr, runErr, stopErr)
}

// loadMesh parses the mesh file at path, or the built-in example.
func loadMesh(path string) (*model.Mesh, error) {
	if path == "" {
		m, err := model.Parse(examples.Mesh, BuiltinSource)
		if err != nil {
			return nil, fmt.Errorf("the built-in example mesh is invalid (a meshd bug): %w", err)
		}
		return m, nil
	}
	m, err := model.Load(path)
	if err != nil {
		return nil, fmt.Errorf("invalid mesh file:\n%w", err)
	}
	return m, nil
}

// workDir returns the directory for bootstraps and logs and the function
// that cleans it up at the end.
func workDir(dir string, keep bool) (string, func() error, error) {
	if dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", nil, fmt.Errorf("log directory: %w", err)
		}
		return dir, func() error { return nil }, nil
	}
	dir, err := os.MkdirTemp("", "meshd-up-")
	if err != nil {
		return "", nil, fmt.Errorf("log directory: %w", err)
	}
	return dir, func() error {
		if keep {
			return nil
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("removing %s: %w", dir, err)
		}
		return nil
	}, nil
}

func controlPlaneLogger(l *slog.Logger, dir string) (*slog.Logger, func(), error) {
	if l != nil {
		return l, func() {}, nil
	}
	f, err := os.OpenFile(filepath.Join(dir, "control-plane.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("control plane log: %w", err)
	}
	return slog.New(slog.NewTextHandler(f, nil)), func() { _ = f.Close() }, nil
}

// localMesh is one run. Fields are set by start and read by the rest, all
// on Run's goroutine except where noted.
type localMesh struct {
	opts   Options
	mesh   *model.Mesh
	plan   *PortPlan
	dir    string
	logger *slog.Logger
	http   *http.Client

	srv         *server.Server
	tuner       *autotune.Tuner     // between the mesh and srv (closed-loop tuning); set by publish
	watcher     *source.FileWatcher // with a mesh file: polled until the control plane stops
	edits       *editReporter       // with a mesh file: the watcher's sink, reporting saved edits
	tokens      *ca.TokenAuthenticator
	tokenSecret []byte
	caDir       string
	xdsAddr     string
	adminAddr   string
	cpCancel    context.CancelFunc
	cpWG        sync.WaitGroup
	adminServer *http.Server
	cpErrs      chan error // control plane serve failures

	sidecars []*sidecar
	servers  []*greeterServer
	clients  []*greeterClient
	rec      *Recorder // nil without sample clients
}

// start brings the parts up in dependency order: control plane, sample
// servers, sidecars (waiting for each to be ready), sample clients.
func (lm *localMesh) start(ctx context.Context) error {
	if err := lm.startControlPlane(); err != nil {
		return err
	}
	if lm.opts.Samples {
		for _, w := range lm.mesh.Workloads {
			if !sampleServer(w) {
				continue
			}
			g, err := startGreeterServer(w)
			if err != nil {
				return err
			}
			lm.servers = append(lm.servers, g)
		}
	}
	for _, w := range lm.mesh.Workloads {
		s, err := startSidecar(lm.opts.Executable, lm.mesh, w, lm.xdsAddr, lm.dir, ca.BootstrapToken(lm.tokenSecret, w.NodeID()))
		if err != nil {
			return err
		}
		lm.sidecars = append(lm.sidecars, s)
	}
	readyCtx, cancel := context.WithTimeoutCause(ctx, lm.opts.ReadyTimeout, fmt.Errorf("not ready within %s", lm.opts.ReadyTimeout))
	defer cancel()
	for _, s := range lm.sidecars {
		if err := s.waitReady(readyCtx, lm.http); err != nil {
			return err
		}
	}
	if lm.opts.Samples {
		targets := sampleTargets(lm.mesh)
		if len(targets) > 0 {
			lm.rec = NewRecorder()
		}
		rate := lm.opts.Rate
		if rate > 0 {
			rate /= float64(len(targets))
		}
		for _, t := range targets {
			c, err := startGreeterClient(t, lm.opts.Callers, max(rate, 0), lm.rec)
			if err != nil {
				return err
			}
			lm.clients = append(lm.clients, c)
		}
	}
	return nil
}

// startControlPlane serves xDS and the control plane's admin API on
// 127.0.0.1 port 0 and publishes the mesh (watching the file if there is
// one).
func (lm *localMesh) startControlPlane() error {
	caSvc, err := lm.startCA()
	if err != nil {
		return err
	}
	mod, err := lm.rateLimitModule()
	if err != nil {
		return err
	}
	// Closed-loop tuning (xds/autotune) sits between the mesh and the xDS
	// server: it learns from the sidecars' load reports and re-publishes
	// the mesh with what it learned. publish creates it; no stream can
	// reach these closures before Serve.
	lm.srv = server.New(server.Options{Logger: lm.logger,
		Services: func(g grpc.ServiceRegistrar) { caSvc.Register(g); lm.tuner.Register(g) },
		Tuning:   func() []server.TuningChange { return lm.tuner.Changes() }})
	xdsLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("control plane xDS listener: %w", err)
	}
	adminLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = xdsLis.Close()
		return fmt.Errorf("control plane admin listener: %w", err)
	}
	closeListeners := func() {
		_ = xdsLis.Close()
		_ = adminLis.Close()
	}
	lm.xdsAddr, lm.adminAddr = xdsLis.Addr().String(), adminLis.Addr().String()
	adminMux := http.NewServeMux()
	adminMux.Handle("/", lm.srv.AdminHandler())
	var topts translate.Options
	if mod != nil {
		adminMux.Handle("GET "+mod.Path, mod)
		if topts.RateLimitModule, err = mod.Ref(lm.adminAddr); err != nil {
			closeListeners()
			return err
		}
	}
	if err := lm.publish(topts); err != nil {
		closeListeners()
		return err
	}
	lm.adminServer = &http.Server{Handler: adminMux, ReadHeaderTimeout: 10 * time.Second}
	lm.cpErrs = make(chan error, 2)
	ctx, cancel := context.WithCancel(context.Background())
	lm.cpCancel = cancel
	lm.cpWG.Add(2)
	go func() {
		defer lm.cpWG.Done()
		if err := lm.srv.Serve(xdsLis); err != nil {
			lm.cpErrs <- fmt.Errorf("control plane xDS server: %w", err)
		}
	}()
	go func() {
		defer lm.cpWG.Done()
		if err := lm.adminServer.Serve(adminLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			lm.cpErrs <- fmt.Errorf("control plane admin server: %w", err)
		}
	}()
	if lm.watcher != nil {
		lm.cpWG.Add(1)
		go func() {
			defer lm.cpWG.Done()
			lm.watcher.Run(ctx)
		}()
	}
	return nil
}

// publish translates and publishes the mesh with topts: the built-in
// example once, a file through a watcher (lm.watcher) that Run keeps
// polling.
func (lm *localMesh) publish(topts translate.Options) error {
	tuner, err := autotune.New(autotune.Options{Sink: lm.srv, Logger: lm.logger, Translate: topts})
	if err != nil {
		return err
	}
	lm.tuner = tuner
	if lm.opts.MeshPath == "" {
		if err := lm.tokens.SetMesh(lm.mesh); err != nil {
			return fmt.Errorf("%s: CA tokens: %w", lm.mesh.Source, err)
		}
		res, err := translate.TranslateWith(lm.mesh, topts)
		if err != nil {
			return fmt.Errorf("%s: translating: %w", lm.mesh.Source, err)
		}
		_ = tuner.Adjust(lm.mesh)
		if err := tuner.Publish(res, lm.mesh.Warnings()); err != nil {
			return fmt.Errorf("publishing %s: %w", lm.mesh.Source, err)
		}
		return nil
	}
	adjust := func(m *model.Mesh) error {
		if err := lm.plan.Apply(m); err != nil {
			return err
		}
		if err := lm.tokens.SetMesh(m); err != nil {
			return err
		}
		return tuner.Adjust(m)
	}
	lm.edits = newEditReporter(tuner, lm.opts.MeshPath)
	lm.watcher = source.NewFileWatcher(lm.opts.MeshPath, lm.edits, source.FileOptions{Logger: lm.logger, Adjust: adjust, Translate: topts})
	if err := lm.watcher.Load(); err != nil {
		return fmt.Errorf("publishing %s: %w", lm.opts.MeshPath, err)
	}
	lm.edits.armed.Store(true)
	return nil
}

// rateLimitModule returns the module of Options.RateLimitWasm, else, when
// the mesh at start has a RateLimitPolicy with engine wasm, the module
// built from filters/ratelimit/guest; else nil.
func (lm *localMesh) rateLimitModule() (*server.Module, error) {
	if lm.opts.RateLimitWasm != "" {
		return server.ReadModule("ratelimit", lm.opts.RateLimitWasm)
	}
	var wasmPolicy *model.RateLimitPolicy
	for _, p := range lm.mesh.RateLimitPolicies {
		if p.Spec.Engine == model.EngineWasm {
			wasmPolicy = p
			break
		}
	}
	if wasmPolicy == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), wasmbuild.BuildTimeout)
	defer cancel()
	lm.logger.Info("building the rate-limit module", "package", RateLimitGuestPackage, "cache", wasmbuild.CacheDir())
	path, err := buildRateLimitModule(ctx)
	if err != nil {
		return nil, fmt.Errorf("RateLimitPolicy %s/%s has engine wasm, and building the rate-limit module failed (it needs the meshd source tree and a Go toolchain; or pass --ratelimit-wasm FILE): %w",
			wasmPolicy.Metadata.Namespace, wasmPolicy.Metadata.Name, err)
	}
	return server.ReadModule("ratelimit", path)
}

// RateLimitGuestPackage is the rate-limit guest's package.
const RateLimitGuestPackage = "meshd.dev/meshd/filters/ratelimit/guest"

// buildRateLimitModule builds (or finds in the cache) the rate-limit
// guest of the meshd module enclosing the working directory.
func buildRateLimitModule(ctx context.Context) (string, error) {
	env, err := wasmbuild.LoadEnv(ctx, ".")
	if err != nil {
		return "", err
	}
	return env.Cached(ctx, RateLimitGuestPackage)
}

// startCA loads or generates the built-in CA in opts.CADir (default: "ca"
// in the work directory) for the mesh's trust domain and returns its gRPC
// service, to be registered on the xDS server like `meshd control-plane`
// does.
func (lm *localMesh) startCA() (*ca.Service, error) {
	dir := lm.opts.CADir
	if dir == "" {
		dir = filepath.Join(lm.dir, "ca")
	}
	td, err := spiffeid.TrustDomainFromString(lm.mesh.Spec.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("built-in CA: mesh trust domain %q: %w", lm.mesh.Spec.TrustDomain, err)
	}
	a, err := ca.LoadOrGenerate(dir, td)
	if err != nil {
		return nil, fmt.Errorf("built-in CA: %w", err)
	}
	authority, err := ca.New(td, ca.Options{DefaultTTL: lm.opts.SVIDTTL}, a)
	if err != nil {
		return nil, fmt.Errorf("built-in CA: %w", err)
	}
	if lm.tokenSecret, err = ca.LoadOrCreateTokenSecret(dir); err != nil {
		return nil, fmt.Errorf("built-in CA: %w", err)
	}
	lm.tokens = ca.NewTokenAuthenticator(lm.tokenSecret, td)
	lm.caDir = dir
	lm.logger.Info("built-in CA ready", "trust_domain", td.Name(), "root", a.Root.Subject.String(), "dir", dir, "svid_ttl", lm.opts.SVIDTTL)
	return ca.NewService(authority, lm.tokens, ca.ServiceOptions{Logger: lm.logger}), nil
}

// printStart prints where everything is.
func (lm *localMesh) printStart() {
	w := lm.opts.Out
	fmt.Fprintf(w, "meshd up: local mesh from %s\n", lm.mesh.Source)
	for _, mv := range lm.plan.Moves {
		fmt.Fprintf(w, "  moved    %s\n", mv)
	}
	fmt.Fprintf(w, "  control plane  xDS %s  status http://%s/status\n", lm.xdsAddr, lm.adminAddr)
	fmt.Fprintf(w, "  mTLS     %s, trust domain %s, built-in CA in %s, SVIDs live %s\n", lm.mesh.Spec.MTLS, lm.mesh.Spec.TrustDomain, lm.caDir, lm.opts.SVIDTTL)
	for _, s := range lm.sidecars {
		fmt.Fprintf(w, "  sidecar  %-26s admin http://%s  log %s\n", s.nodeID, s.admin, filepath.Base(s.logPath))
		if wl := lm.mesh.Workload(s.nodeID); wl != nil {
			fmt.Fprintf(w, "           identity %s\n", lm.mesh.SPIFFEID(wl))
		}
		ls, err := s.listeners(context.Background(), lm.http)
		if err != nil {
			fmt.Fprintf(w, "           listeners: %v\n", err)
		}
		for _, l := range ls {
			name, addr, _ := strings.Cut(l, "::")
			fmt.Fprintf(w, "           listener %-24s %s\n", name, addr)
		}
	}
	for _, g := range lm.servers {
		fmt.Fprintf(w, "  sample   grpc.testing.TestService server on %s\n", g.addr)
	}
	for _, c := range lm.clients {
		fmt.Fprintf(w, "  sample   client of %s calling %s (%s's outbound) with %d callers\n", c.target.service.Key(), c.target.addr, c.target.workload.NodeID(), lm.opts.Callers)
	}
	if ts := sampleTargets(lm.mesh); len(ts) > 0 {
		fmt.Fprintf(w, "  try it   grpcurl -plaintext -d '{\"response_size\": 8}' %s grpc.testing.TestService/UnaryCall\n", ts[0].addr)
	}
	where := ", removed on exit (--keep-logs keeps them)"
	if lm.opts.KeepLogs || lm.opts.Dir != "" {
		where = ", kept on exit"
	}
	fmt.Fprintf(w, "  logs     %s%s\n", lm.dir, where)
	if lm.opts.MeshPath != "" {
		fmt.Fprintf(w, "  watching %s: saved edits are pushed to the sidecars (new Workloads need a restart)\n", lm.opts.MeshPath)
	}
	fmt.Fprintln(w, "Ctrl-C stops everything.")
}

// watch shows progress until ctx ends or a part fails.
func (lm *localMesh) watch(ctx context.Context) error {
	t := time.NewTicker(progressInterval)
	defer t.Stop()
	start := time.Now()
	last := start
	var lastTotals Totals
	prevRq := make([]uint64, len(lm.sidecars))
	drawn := 0
	lastPlain := start
	var edits <-chan string // nil without a mesh file: never ready
	if lm.edits != nil {
		edits = lm.edits.notes
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-lm.cpErrs:
			return err
		case note := <-edits:
			// Printed even with Quiet: it is the only word of an edit
			// that did not apply. On a terminal it goes above the
			// progress block, which is drawn again below it.
			if lm.opts.Terminal && drawn > 0 {
				fmt.Fprintf(lm.opts.Out, "\x1b[%dA\x1b[J", drawn)
				drawn = 0
			}
			fmt.Fprintln(lm.opts.Out, note)
			continue
		case <-t.C:
		}
		for _, s := range lm.sidecars {
			select {
			case <-s.exited:
				return fmt.Errorf("sidecar %s exited (%v); its log %s ends:\n%s", s.nodeID, s.exitErr, s.logPath, tail(s.logPath, 10))
			default:
			}
		}
		if lm.opts.Quiet {
			continue
		}
		now := time.Now()
		dt := now.Sub(last)
		last = now
		v := View{Elapsed: now.Sub(start), Samples: lm.rec != nil}
		if lm.rec != nil {
			totals, h := lm.rec.Take()
			v.Totals, v.CallRate = totals, Rate(lastTotals.Calls, totals.Calls, dt)
			v.P50, v.P99 = h.Quantile(0.50), h.Quantile(0.99)
			lastTotals = totals
		}
		for i, s := range lm.sidecars {
			sv := SidecarView{NodeID: s.nodeID}
			ok, err := s.ready(ctx, lm.http)
			sv.Ready = ok
			if err == nil {
				var resp adminResponse
				resp, err = s.get(ctx, lm.http, "/stats")
				if err == nil {
					c := ParseSidecarStats(resp.body)
					sv.RequestRate = Rate(prevRq[i], c.RequestsTotal, dt)
					sv.ConnectionsActive = c.ConnectionsActive
					prevRq[i] = c.RequestsTotal
				}
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				sv.Err = err.Error()
			}
			v.Sidecars = append(v.Sidecars, sv)
		}
		lines := v.Lines()
		if lm.opts.Terminal {
			var b strings.Builder
			if drawn > 0 {
				fmt.Fprintf(&b, "\x1b[%dA", drawn)
			}
			for _, l := range lines {
				b.WriteString("\x1b[2K" + l + "\n")
			}
			_, _ = io.WriteString(lm.opts.Out, b.String())
			drawn = len(lines)
		} else if now.Sub(lastPlain) >= plainEvery {
			lastPlain = now
			// One line: the summary first, the sidecars after it.
			_, _ = io.WriteString(lm.opts.Out, strings.Join(compact(lines), " |")+"\n")
		}
	}
}

func compact(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = strings.Join(strings.Fields(l), " ")
	}
	return out
}

// stop stops what start started, in reverse dependency order, bounded.
func (lm *localMesh) stop() error {
	var errs []error
	for _, c := range lm.clients {
		if err := c.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	var wg sync.WaitGroup
	sidecarErrs := make([]error, len(lm.sidecars))
	for i, s := range lm.sidecars {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sidecarErrs[i] = s.stop()
		}()
	}
	wg.Wait()
	errs = append(errs, sidecarErrs...)
	for _, g := range lm.servers {
		g.stop(stopTimeout)
	}
	if lm.srv != nil && lm.cpCancel != nil {
		lm.cpCancel()
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		lm.srv.Stop(ctx)
		if err := lm.adminServer.Shutdown(ctx); err != nil {
			_ = lm.adminServer.Close()
		}
		lm.cpWG.Wait()
	}
	return errors.Join(errs...)
}
