package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"
)

// responseSize is the payload size every gRPC unary call asks for.
const responseSize = 1024

// grpcUnaryPath is the method the gRPC scenarios call.
const grpcUnaryPath = "/grpc.testing.TestService/UnaryCall"

// unaryRequest returns the request of the gRPC scenarios:
// SimpleRequest{response_size: 1024}.
func unaryRequest() *testpb.SimpleRequest {
	return &testpb.SimpleRequest{ResponseSize: responseSize}
}

// grpcFrame returns the gRPC length-prefixed message (uncompressed) carrying
// unaryRequest, the body h2load sends with -d.
func grpcFrame() ([]byte, error) {
	msg, err := proto.Marshal(unaryRequest())
	if err != nil {
		return nil, fmt.Errorf("marshal SimpleRequest: %w", err)
	}
	frame := make([]byte, 5+len(msg))
	frame[0] = 0 // not compressed
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(msg)))
	copy(frame[5:], msg)
	return frame, nil
}

// h2loadGenerator drives load with nghttp2's h2load (one thread), h2c with
// prior knowledge. Latencies come from its --log-file.
type h2loadGenerator struct {
	path string // h2load executable
	dir  string // where request bodies and logs go
}

// Name implements generator.
func (g h2loadGenerator) Name() string { return "h2load (" + g.path + ")" }

// h2loadExitGrace is how long past warm-up plus duration h2load may take to
// exit before it is killed.
const h2loadExitGrace = 15 * time.Second

// Run implements generator. measuring is called warmup after h2load starts;
// h2load's own warm-up begins once its connections are up, a difference of
// the connection set-up time.
func (g h2loadGenerator) Run(ctx context.Context, sc scenario, addr string, warmup, duration time.Duration, measuring func()) (loadResult, error) {
	logPath := filepath.Join(g.dir, "h2load-"+sc.Name+".log")
	args := []string{
		"-t", "1",
		"-c", strconv.Itoa(sc.Conns),
		"-m", strconv.Itoa(sc.Streams),
		"-D", durationArg(duration),
		"--log-file=" + logPath,
	}
	if warmup > 0 {
		args = append(args, "--warm-up-time="+durationArg(warmup))
	}
	if sc.Rate > 0 {
		// --rps is per client; the rate is split evenly.
		args = append(args, "--rps="+strconv.Itoa(max(1, sc.Rate/sc.Conns)))
	}
	switch sc.Kind {
	case kindGRPCUnary:
		body, err := grpcFrame()
		if err != nil {
			return loadResult{}, err
		}
		bodyPath := filepath.Join(g.dir, "grpc_req.bin")
		if err := os.WriteFile(bodyPath, body, 0o644); err != nil {
			return loadResult{}, fmt.Errorf("h2load request body: %w", err)
		}
		args = append(args, "-d", bodyPath,
			"-H", "content-type: application/grpc",
			"-H", "te: trailers",
			"http://"+addr+grpcUnaryPath)
	case kindH2CGet, kindIdle:
		args = append(args, "http://"+addr+getPath)
	default:
		return loadResult{}, fmt.Errorf("scenario %s: unknown kind %q", sc.Name, sc.Kind)
	}

	rctx, cancel := context.WithTimeout(ctx, warmup+duration+h2loadExitGrace)
	defer cancel()
	cmd := exec.CommandContext(rctx, g.path, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return loadResult{}, fmt.Errorf("start h2load: %w", err)
	}
	measured := make(chan struct{})
	timer := time.AfterFunc(warmup, func() { measuring(); close(measured) })
	err := cmd.Wait()
	if timer.Stop() {
		// h2load ended before the warm-up did; keep the contract.
		measuring()
		close(measured)
	}
	<-measured // measuring's writes happen before Run returns
	if err != nil {
		return loadResult{}, fmt.Errorf("h2load %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	sum, err := parseH2loadSummary(out.Bytes())
	if err != nil {
		return loadResult{}, fmt.Errorf("h2load output: %w\n%s", err, out.String())
	}
	logData, err := os.ReadFile(logPath)
	if err != nil {
		return loadResult{}, fmt.Errorf("h2load log: %w", err)
	}
	lat, err := parseH2loadLog(logData)
	if err != nil {
		return loadResult{}, fmt.Errorf("h2load log %s: %w", logPath, err)
	}
	_ = os.Remove(logPath)
	slices.Sort(lat)
	r := loadResult{
		Requests: sum.Succeeded,
		Errors:   sum.Failed + sum.Errored + sum.Timeout,
		Seconds:  duration.Seconds(),
		RPS:      sum.RPS,
		P50Ms:    ms(percentile(lat, 50)),
		P99Ms:    ms(percentile(lat, 99)),
		P999Ms:   ms(percentile(lat, 99.9)),
	}
	if r.Errors > 0 {
		r.ErrorDetail = fmt.Sprintf("%d failed, %d errored, %d timeout; %s", sum.Failed, sum.Errored, sum.Timeout, sum.StatusCodes)
	}
	return r, nil
}

// durationArg formats d for h2load's duration options, which take an
// integer with an optional unit suffix (ms, s).
func durationArg(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}

// h2loadSummary is what h2load prints at the end of a run. With
// --warm-up-time, "finished in" counts the warm-up too, while the request
// counts and req/s cover the main duration only.
type h2loadSummary struct {
	FinishedSeconds                            float64
	RPS                                        float64
	Succeeded, Failed, Errored, Timeout, Total int64
	// StatusCodes is the "status codes: ..." line, as printed.
	StatusCodes string
}

var (
	// finished in 10.00s, 12345.67 req/s, 15.00MB/s
	h2loadFinishedRE = regexp.MustCompile(`(?m)^finished in ([0-9.]+)(ms|s), ([0-9.]+) req/s,`)
	// requests: 100 total, 100 started, 100 done, 99 succeeded, 1 failed, 0 errored, 0 timeout
	h2loadStatusRE   = regexp.MustCompile(`(?m)^status codes: .*$`)
	h2loadRequestsRE = regexp.MustCompile(`(?m)^requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
)

// parseH2loadSummary reads the duration and request counts from h2load's
// standard output.
func parseH2loadSummary(out []byte) (h2loadSummary, error) {
	var s h2loadSummary
	m := h2loadFinishedRE.FindSubmatch(out)
	if m == nil {
		return s, fmt.Errorf("no \"finished in\" line")
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return s, fmt.Errorf("finished in %q: %w", m[1], err)
	}
	if string(m[2]) == "ms" {
		v /= 1000
	}
	if v <= 0 {
		return s, fmt.Errorf("finished in %q: duration must be positive", m[1])
	}
	s.FinishedSeconds = v
	if s.RPS, err = strconv.ParseFloat(string(m[3]), 64); err != nil {
		return s, fmt.Errorf("req/s %q: %w", m[3], err)
	}
	r := h2loadRequestsRE.FindSubmatch(out)
	if r == nil {
		return s, fmt.Errorf("no \"requests:\" line")
	}
	for i, dst := range []*int64{&s.Total, &s.Succeeded, &s.Failed, &s.Errored, &s.Timeout} {
		n, err := strconv.ParseInt(string(r[i+1]), 10, 64)
		if err != nil {
			return s, fmt.Errorf("requests line: %w", err)
		}
		*dst = n
	}
	s.StatusCodes = string(h2loadStatusRE.Find(out))
	return s, nil
}

// parseH2loadLog reads the latencies of successful (2xx) requests from an
// h2load --log-file: tab-separated start time (µs since the epoch), status
// code (-1 for a failed stream) and µs until the end of the response; later
// columns are ignored.
func parseH2loadLog(data []byte) ([]time.Duration, error) {
	var lat []time.Duration
	sc := bufio.NewScanner(bytes.NewReader(data))
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if text == "" {
			continue
		}
		f := strings.Split(text, "\t")
		if len(f) < 3 {
			return nil, fmt.Errorf("line %d: %d columns, want at least 3", line, len(f))
		}
		status, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: status: %w", line, err)
		}
		us, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil || us < 0 {
			return nil, fmt.Errorf("line %d: latency %q: want a non-negative integer", line, f[2])
		}
		if status >= 200 && status < 300 {
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return lat, nil
}
