package main

import (
	"bytes"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// h2loadOutput is h2load 1.52's output for a run with --warm-up-time=2s -D 10s.
const h2loadOutput = `starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 2s of warm-up time and 10s of main duration for measurements.
Warm-up started for thread #0.
progress: 10% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 12.00s, 41234.50 req/s, 48.12MB/s
requests: 412345 total, 412345 started, 412345 done, 412300 succeeded, 40 failed, 3 errored, 2 timeout
status codes: 412300 2xx, 0 3xx, 0 4xx, 40 5xx
traffic: 481.23MB (504606720) total, 1.23MB (1234567) headers (space savings 95.12%), 412.00MB (432013312) data
                     min         max         mean         sd        +/- sd
time for request:      123us     45.67ms     12.34ms      3.21ms    71.23%
`

func TestParseH2loadSummary(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    h2loadSummary
		wantErr string
	}{
		{
			name: "full run",
			in:   h2loadOutput,
			want: h2loadSummary{FinishedSeconds: 12, RPS: 41234.5, Total: 412345, Succeeded: 412300, Failed: 40, Errored: 3, Timeout: 2,
				StatusCodes: "status codes: 412300 2xx, 0 3xx, 0 4xx, 40 5xx"},
		},
		{
			name: "milliseconds",
			in:   "finished in 850.10ms, 100.00 req/s, 1KB/s\nrequests: 85 total, 85 started, 85 done, 85 succeeded, 0 failed, 0 errored, 0 timeout\n",
			want: h2loadSummary{FinishedSeconds: 0.8501, RPS: 100, Total: 85, Succeeded: 85},
		},
		{name: "no finished line", in: "requests: 1 total, 1 started, 1 done, 1 succeeded, 0 failed, 0 errored, 0 timeout\n", wantErr: "finished in"},
		{name: "no requests line", in: "finished in 1.00s, 1.00 req/s, 1B/s\n", wantErr: "requests:"},
		{name: "connection refused", in: "starting benchmark...\nclient could not connect to host\n", wantErr: "finished in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseH2loadSummary([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.FinishedSeconds < tt.want.FinishedSeconds-1e-9 || got.FinishedSeconds > tt.want.FinishedSeconds+1e-9 {
				t.Fatalf("FinishedSeconds = %v, want %v", got.FinishedSeconds, tt.want.FinishedSeconds)
			}
			got.FinishedSeconds = tt.want.FinishedSeconds
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseH2loadLog(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []time.Duration
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{
			name: "ok, failed and 5xx rows",
			in:   "1700000000000000\t200\t150\n1700000000000100\t-1\t9000\n1700000000000200\t503\t80\n1700000000000300\t200\t2500\textra\n",
			want: []time.Duration{150 * time.Microsecond, 2500 * time.Microsecond},
		},
		{name: "blank lines skipped", in: "\n1\t200\t1\n\n", want: []time.Duration{time.Microsecond}},
		{name: "two columns", in: "1\t200\n", wantErr: "line 1: 2 columns"},
		{name: "bad status", in: "1\t200\t1\n1\tok\t1\n", wantErr: "line 2: status"},
		{name: "negative latency", in: "1\t200\t-4\n", wantErr: "latency \"-4\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseH2loadLog([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestDurationArg(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{10 * time.Second, "10s"},
		{time.Second, "1s"},
		{500 * time.Millisecond, "500ms"},
		{1500 * time.Millisecond, "1500ms"},
	}
	for _, tt := range tests {
		if got := durationArg(tt.in); got != tt.want {
			t.Errorf("durationArg(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestGRPCFrame pins the framed request to the bytes the peer-proxy
// benchmarks sent with h2load -d (test/bench/README.md): flag 0, length 3,
// then field 2 (response_size) varint 1024.
func TestGRPCFrame(t *testing.T) {
	got, err := grpcFrame()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0, 0, 0, 0, 3, 0x10, 0x80, 0x08}
	if !bytes.Equal(got, want) {
		t.Fatalf("grpcFrame = % x, want % x", got, want)
	}
}

func TestParseListenerAddr(t *testing.T) {
	const two = `{"listener_statuses":[
		{"name":"admin-ish","local_address":{"socket_address":{"address":"127.0.0.1","port_value":1}}},
		{"name":"bench","local_address":{"socket_address":{"address":"127.0.0.1","port_value":40123}}}]}`
	tests := []struct {
		name, body, listener, want, wantErr string
	}{
		{name: "found", body: two, listener: "bench", want: "127.0.0.1:40123"},
		{name: "ipv6", body: `{"listener_statuses":[{"name":"l","local_address":{"socket_address":{"address":"::1","port_value":8080}}}]}`, listener: "l", want: "[::1]:8080"},
		{name: "missing", body: two, listener: "other", wantErr: `no listener named "other"`},
		{name: "unbound port", body: `{"listener_statuses":[{"name":"l","local_address":{"socket_address":{"address":"127.0.0.1","port_value":0}}}]}`, listener: "l", wantErr: "not a bound address"},
		{name: "not json", body: "listener: l", listener: "l", wantErr: "format=json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseListenerAddr([]byte(tt.body), tt.listener)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseListenerAddr = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseStats(t *testing.T) {
	body := []byte("cluster.grpc.upstream_cx_total: 16\ncluster.grpc.upstream_rq_total: 123456\nhistogram: P0(nan,1)\nbroken line\nx.y: -3\n")
	got := parseStats(body)
	want := map[string]int64{"cluster.grpc.upstream_cx_total": 16, "cluster.grpc.upstream_rq_total": 123456, "x.y": -3}
	if !maps.Equal(got, want) {
		t.Fatalf("parseStats = %v, want %v", got, want)
	}
}

func TestParseBackendLine(t *testing.T) {
	tests := []struct {
		line, grpc, http, wantErr string
	}{
		{line: "BACKEND grpc=127.0.0.1:1 http=127.0.0.1:2", grpc: "127.0.0.1:1", http: "127.0.0.1:2"},
		{line: "BACKEND http=127.0.0.1:2 grpc=127.0.0.1:1", grpc: "127.0.0.1:1", http: "127.0.0.1:2"},
		{line: "BACKEND grpc=127.0.0.1:1", wantErr: "lacks"},
		{line: "panic: boom", wantErr: "unexpected first line"},
	}
	for _, tt := range tests {
		g, h, err := parseBackendLine(tt.line)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseBackendLine(%q) error = %v, want %q", tt.line, err, tt.wantErr)
			}
			continue
		}
		if err != nil || g != tt.grpc || h != tt.http {
			t.Errorf("parseBackendLine(%q) = %q, %q, %v", tt.line, g, h, err)
		}
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name          string
		args          []string
		wantDuration  time.Duration
		wantWarmup    time.Duration
		wantRounds    int
		wantScenarios []string
		// wantTargets is the number of targets, wantFirstTarget the
		// first one when set.
		wantTargets     int
		wantFirstTarget string
		wantErr         string
	}{
		{name: "defaults", wantDuration: 10 * time.Second, wantWarmup: 2 * time.Second, wantRounds: 3,
			wantScenarios: []string{"grpc-unary-16x32", "grpc-unary-1x1", "grpc-unary-1000rps", "h2c-get-16x32", "grpc-stream-16x1", "grpc-stream-16x100", "idle-10k-active-1k"}, wantTargets: 9},
		{name: "quick overrides", args: []string{"-quick", "-rounds", "5"}, wantDuration: time.Second, wantWarmup: 500 * time.Millisecond, wantRounds: 1,
			wantScenarios: []string{"grpc-unary-16x32", "grpc-unary-1x1", "grpc-unary-1000rps", "h2c-get-16x32", "grpc-stream-16x1", "grpc-stream-16x100", "idle-10k-active-1k"}, wantTargets: 9},
		{name: "subset keeps canonical order", args: []string{"-scenarios", "h2c-get-16x32, grpc-unary-16x32", "-duration", "3s"},
			wantDuration: 3 * time.Second, wantWarmup: 2 * time.Second, wantRounds: 3, wantScenarios: []string{"grpc-unary-16x32", "h2c-get-16x32"}, wantTargets: 9},
		{name: "targets subset keeps canonical order", args: []string{"-targets", "haproxy,direct,meshd"}, wantDuration: 10 * time.Second, wantWarmup: 2 * time.Second,
			wantRounds: 3, wantScenarios: []string{"grpc-unary-16x32", "grpc-unary-1x1", "grpc-unary-1000rps", "h2c-get-16x32", "grpc-stream-16x1", "grpc-stream-16x100", "idle-10k-active-1k"}, wantTargets: 3, wantFirstTarget: "direct"},
		{name: "unknown scenario", args: []string{"-scenarios", "grpc-stream"}, wantErr: `-scenarios: unknown scenario "grpc-stream"`},
		{name: "unknown target", args: []string{"-targets", "envoy"}, wantErr: `-targets: unknown target "envoy"`},
		{name: "zero duration", args: []string{"-duration", "0s"}, wantErr: "-duration 0s"},
		{name: "zero rounds", args: []string{"-rounds", "0"}, wantErr: "-rounds 0"},
		{name: "bad generator", args: []string{"-generator", "wrk"}, wantErr: `-generator "wrk"`},
		{name: "same cpus are fine to parse", args: []string{"-proxy-cpu", "1"}, wantDuration: 10 * time.Second, wantWarmup: 2 * time.Second, wantRounds: 3,
			wantScenarios: []string{"grpc-unary-16x32", "grpc-unary-1x1", "grpc-unary-1000rps", "h2c-get-16x32", "grpc-stream-16x1", "grpc-stream-16x100", "idle-10k-active-1k"}, wantTargets: 9},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			o, err := parseFlags(tt.args, &stderr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.Duration != tt.wantDuration || o.Warmup != tt.wantWarmup || o.Rounds != tt.wantRounds {
				t.Fatalf("duration %v warmup %v rounds %d; want %v %v %d", o.Duration, o.Warmup, o.Rounds, tt.wantDuration, tt.wantWarmup, tt.wantRounds)
			}
			var names []string
			for _, s := range o.Scenarios {
				names = append(names, s.Name)
			}
			if strings.Join(names, ",") != strings.Join(tt.wantScenarios, ",") {
				t.Fatalf("scenarios %v, want %v", names, tt.wantScenarios)
			}
			if len(o.Targets) != tt.wantTargets || (tt.wantFirstTarget != "" && o.Targets[0].Name != tt.wantFirstTarget) {
				t.Fatalf("targets %v, want %d starting with %q", o.Targets, tt.wantTargets, tt.wantFirstTarget)
			}
			for _, s := range o.Scenarios {
				if s.Kind == kindIdle && slices.Contains(tt.args, "-quick") && (s.Idle != quickIdle || s.Conns != quickIdleActive) {
					t.Errorf("-quick: idle scenario %+v, want %d idle and %d active connections", s, quickIdle, quickIdleActive)
				}
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	sc := []scenario{allScenarios[0], allScenarios[1]}
	targets := []targetInfo{
		{targetSpec: targetSpec{Name: targetDirect}},
		{targetSpec: targetSpec{Name: targetMeshd}, Processes: 1, RSSIdleMB: 15, AnonIdleMB: 6},
		{targetSpec: targetSpec{Name: targetNghttpx, Peer: true}, Processes: 1, RSSIdleMB: 10},
		{targetSpec: targetSpec{Name: targetHAProxy, Peer: true}, Processes: 1, RSSIdleMB: 12},
	}
	run := func(s scenario, target string, round int, rps, p50, p99, p999 float64, cpu, rss *float64) runRecord {
		return runRecord{Scenario: s.Name, Target: target, Round: round,
			loadResult: loadResult{Requests: 1000, RPS: rps, P50Ms: p50, P99Ms: p99, P999Ms: p999}, ProxyCPUPer100k: cpu, ProxyRSSLoadedMB: rss, ProxyAnonLoadedMB: rss, BackendCPUPer100k: 3}
	}
	runs := []runRecord{
		run(sc[0], targetDirect, 1, 100, 1, 10, 11, nil, nil),
		run(sc[0], targetMeshd, 1, 50, 2, 30, 31, f(5), f(20)),
		run(sc[0], targetNghttpx, 1, 80, 2, 20, 25, f(2), f(30)),
		run(sc[0], targetHAProxy, 1, 90, 3, 16, 40, f(3), f(25)),
		run(sc[0], targetDirect, 2, 300, 3, 20, 21, nil, nil),
		run(sc[0], targetMeshd, 2, 70, 4, 50, 51, f(7), f(22)),
		run(sc[0], targetNghttpx, 2, 80, 2, 20, 25, f(2), f(30)),
		run(sc[0], targetHAProxy, 2, 90, 3, 16, 40, f(3), f(25)),
		run(sc[0], targetDirect, 3, 200, 2, 15, 16, nil, nil),
		run(sc[0], targetMeshd, 3, 100, 3, 40, 41, f(6), f(21)),
		run(sc[0], targetNghttpx, 3, 80, 2, 20, 25, f(2), f(30)),
		run(sc[0], targetHAProxy, 3, 90, 3, 16, 40, f(3), f(25)),
		// No peer ran the second scenario: no ratio.
		run(sc[1], targetDirect, 1, 9, 1, 1, 1, nil, nil),
		run(sc[1], targetMeshd, 1, 8, 2, 2, 2, f(1), f(1)),
		// A failed run adds its errors and nothing else.
		{Scenario: sc[0].Name, Target: targetMeshd, Round: 4, loadResult: loadResult{Errors: 7}},
	}
	runs[1].Errors = 1
	rows, ratios := summarize(sc, targets, runs)
	if len(rows) != 6 {
		t.Fatalf("got %d rows, want 6: %+v", len(rows), rows)
	}
	d, m := rows[0], rows[1]
	if d.Target != targetDirect || d.Rounds != 3 || d.RPS != 200 || d.P50Ms != 2 || d.P99Ms != 15 || d.P999Ms != 16 || d.ProxyCPUPer100k != nil || d.ProxyRSSIdleMB != nil {
		t.Fatalf("direct row %+v", d)
	}
	if m.Target != targetMeshd || m.RPS != 70 || m.P99Ms != 40 || *m.ProxyCPUPer100k != 6 || *m.ProxyRSSLoadedMB != 21 || *m.ProxyRSSIdleMB != 15 || *m.ProxyAnonIdleMB != 6 || *m.ProxyAnonLoadedMB != 21 || m.Errors != 8 || m.Rounds != 3 {
		t.Fatalf("meshd row %+v", m)
	}
	if len(ratios) != 2 {
		t.Fatalf("got %d ratios, want 2 (direct and meshd in the first scenario): %+v", len(ratios), ratios)
	}
	// Best peer per figure: req/s 90 (HAProxy), p50 2 and p99.9 25
	// (nghttpx), p99 16 (HAProxy), CPU 2 (nghttpx), anon RSS 25 (HAProxy).
	want := ratioRow{Scenario: sc[0].Name, Target: targetMeshd, RPS: 70.0 / 90, P50: 1.5, P99: 40.0 / 16, P999: 41.0 / 25,
		CPU: 3, Anon: 21.0 / 25, BestCPUPeer: targetNghttpx}
	if ratios[1] != want {
		t.Fatalf("meshd ratios %+v, want %+v", ratios[1], want)
	}
	if r := ratios[0]; r.Target != targetDirect || r.CPU != 0 || r.Anon != 0 || r.RPS != 200.0/90 {
		t.Fatalf("direct ratios %+v: want req/s 200/90 and no CPU or memory ratio", r)
	}
}
