package scenarios

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"meshd.dev/meshd/internal/testutil"
)

// S7 (streaming stall): a server streams 512-byte messages every 10 ms.
// Through a proxy that buffers writes (or leaves Nagle on) they arrive in
// bursts with 40–200 ms gaps. The test streams to a grpc-go client directly
// and through meshd at the same time, in rounds that alternate which path
// starts first, and asserts the p99 inter-arrival gap through meshd exceeds
// the direct one by less than s7MaxExtra. It also measures the per-message
// delay (arrival minus the backend's send stamp) and holds its p99 extra to
// the same bound.
const (
	s7MessageSize = 512
	s7Interval    = 10 * time.Millisecond
	s7Rounds      = 3
	s7PerRound    = 110 // 330 messages per path in total
	// s7MaxExtra is acceptance 5's bound on the extra p99 gap, applied to
	// the extra p99 per-message delay too.
	s7MaxExtra = time.Millisecond
	// s7Attempts is how many measurements the test may take for one to
	// meet the bounds (see TestS7StreamingStallTiming).
	s7Attempts = 3
	// s7StarvedRunDelay is the time the sidecar's threads may wait for a
	// CPU during one attempt (about 3.3 s of streaming) before the attempt
	// counts as starved by other load. An otherwise idle 2-CPU machine
	// keeps it at a few milliseconds.
	s7StarvedRunDelay = 50 * time.Millisecond
)

// s7Sample is what one path measured in one stream.
type s7Sample struct {
	gaps   []time.Duration // arrival of message i minus arrival of i-1
	delays []time.Duration // arrival minus the backend's send stamp
}

// s7Stream runs one StreamingOutputCall of n messages and measures it.
func s7Stream(ctx context.Context, client testpb.TestServiceClient, n int) (s7Sample, error) {
	var s s7Sample
	stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: streamParams(n, s7MessageSize, s7Interval),
	})
	if err != nil {
		return s, fmt.Errorf("StreamingOutputCall: %w", err)
	}
	var last time.Time
	for i := range n {
		m, err := stream.Recv()
		if err != nil {
			return s, fmt.Errorf("Recv %d of %d: %w", i, n, err)
		}
		now := time.Now()
		if d, ok := sinceSent(m.GetPayload().GetBody()); ok {
			s.delays = append(s.delays, d)
		}
		if i > 0 {
			s.gaps = append(s.gaps, now.Sub(last))
		}
		last = now
	}
	return s, nil
}

func TestS7StreamingStallTiming(t *testing.T) {
	timing(t)
	testutil.CheckGoroutines(t)
	b := startGRPCBackend(t, backendConfig{})
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{b.Addr}})
	paths := []s7Path{
		{"direct", dialGRPC(t, b.Addr)},
		{"meshd", dialGRPC(t, sc.Addr)},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Warm both paths: connections, HPACK tables and windows in place.
	for _, p := range paths {
		if _, err := s7Stream(ctx, p.client, 5); err != nil {
			t.Fatalf("%s warm-up: %v", p.name, err)
		}
	}

	// A real stall (write buffering, Nagle meeting delayed ACK) delays
	// messages on every attempt by tens of milliseconds; a machine busy
	// with other work descheduling the sidecar for a moment does not do so
	// reliably. So the bound must hold in one of s7Attempts measurements.
	// A machine oversubscribed by other work makes the sidecar wait for a
	// CPU; that wait is read from the kernel for each attempt, and when
	// every attempt failed while the sidecar was starved the test skips
	// with the figures instead of blaming meshd.
	var failures []string
	starved := 0
	for attempt := 1; attempt <= s7Attempts; attempt++ {
		before, err := procRunDelay(sc.PID())
		if err != nil {
			t.Fatal(err)
		}
		problems := s7Measure(ctx, t, paths)
		after, err := procRunDelay(sc.PID())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("attempt %d: the sidecar waited %v for a CPU", attempt, after-before)
		if len(problems) == 0 {
			return
		}
		if after-before >= s7StarvedRunDelay {
			starved++
		}
		for _, p := range problems {
			failures = append(failures, fmt.Sprintf("attempt %d (sidecar waited %v for a CPU): %s", attempt, after-before, p))
		}
	}
	if starved == s7Attempts {
		t.Skipf("S7 not measurable: the machine is oversubscribed (load %s on %d CPUs) and the sidecar waited >= %v for a CPU in every attempt:\n%s",
			loadAverage(), runtime.NumCPU(), s7StarvedRunDelay, strings.Join(failures, "\n"))
	}
	t.Errorf("S7 bound missed on all %d attempts:\n%s", s7Attempts, strings.Join(failures, "\n"))
}

// s7Path is one way to reach the backend.
type s7Path struct {
	name   string
	client testpb.TestServiceClient
}

// s7Measure streams s7Rounds rounds on both paths at once and returns what
// breaks the bounds (nothing when they hold). It fails the test on an RPC
// error.
func s7Measure(ctx context.Context, t *testing.T, paths []s7Path) []string {
	t.Helper()
	total := make([]s7Sample, len(paths))
	for round := range s7Rounds {
		results := make([]s7Sample, len(paths))
		errs := make([]error, len(paths))
		var wg sync.WaitGroup
		for i := range paths {
			// Alternate which path starts first, so neither always
			// gets the earlier timer slot.
			k := (i + round) % len(paths)
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[k], errs[k] = s7Stream(ctx, paths[k].client, s7PerRound)
			}()
		}
		wg.Wait()
		for i, p := range paths {
			if errs[i] != nil {
				t.Fatalf("round %d, %s: %v", round, p.name, errs[i])
			}
			total[i].gaps = append(total[i].gaps, results[i].gaps...)
			total[i].delays = append(total[i].delays, results[i].delays...)
		}
	}

	direct, meshd := total[0], total[1]
	if len(meshd.gaps) < 300 || len(meshd.delays) < 300 {
		t.Fatalf("measured %d gaps and %d delays through meshd, want at least 300 of each", len(meshd.gaps), len(meshd.delays))
	}
	gapP99 := [2]time.Duration{percentile(direct.gaps, 99), percentile(meshd.gaps, 99)}
	gapMax := [2]time.Duration{direct.gaps[len(direct.gaps)-1], meshd.gaps[len(meshd.gaps)-1]} // sorted by percentile
	delayP99 := [2]time.Duration{percentile(direct.delays, 99), percentile(meshd.delays, 99)}
	t.Logf("%d gaps per path: p99 direct %v meshd %v (extra %v), max direct %v meshd %v",
		len(direct.gaps), gapP99[0], gapP99[1], gapP99[1]-gapP99[0], gapMax[0], gapMax[1])
	t.Logf("per-message delay: p50 direct %v meshd %v, p90 direct %v meshd %v, p99 direct %v meshd %v (extra %v)",
		percentile(direct.delays, 50), percentile(meshd.delays, 50), percentile(direct.delays, 90), percentile(meshd.delays, 90),
		delayP99[0], delayP99[1], delayP99[1]-delayP99[0])

	var problems []string
	if extra := gapP99[1] - gapP99[0]; extra >= s7MaxExtra {
		problems = append(problems, fmt.Sprintf("p99 inter-message gap through meshd %v exceeds direct %v by %v, want < %v (write buffering or Nagle on the path)",
			gapP99[1], gapP99[0], extra, s7MaxExtra))
	}
	if extra := delayP99[1] - delayP99[0]; extra >= s7MaxExtra {
		problems = append(problems, fmt.Sprintf("p99 per-message delay through meshd %v exceeds direct %v by %v, want < %v",
			delayP99[1], delayP99[0], extra, s7MaxExtra))
	}
	return problems
}
