package hardening

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// floodHCM is the connection manager of TestHTTP2Floods: Envoy's flood
// limits set explicitly (most at their defaults), small header limits so
// the header floods trip fast, and short stream timeouts so stalled
// streams end within the test.
const floodHCM = `stream_idle_timeout: 3s
request_headers_timeout: 2s
max_request_headers_kb: 16
common_http_protocol_options: { max_headers_count: 50, idle_timeout: 30s }
http2_protocol_options:
  max_concurrent_streams: 1000
  max_outbound_frames: 2000
  max_outbound_control_frames: 1000
  max_consecutive_inbound_frames_with_empty_payload: 1
  max_inbound_priority_frames_per_stream: 100
  max_inbound_window_update_frames_per_data_frame_sent: 10`

// Bounds of one flood.
const (
	// floodRounds caps attacker connections per flood; the attack also
	// stops once the probe's measurement under attack is over.
	floodRounds = 1000
	// floodWorkers is how many attacker connections run at once.
	floodWorkers = 1
	// roundPause separates one worker's attacker connections. The
	// attackers share the test process (and CI's two cores) with the
	// backend and the probe; unpaced, they would starve those rather than
	// the sidecar, and the probe would measure the attacker's CPU.
	roundPause = 100 * time.Millisecond
	// outcomeWait bounds the wait for the server's answer to one attack.
	outcomeWait = 8 * time.Second
	// controlFloodFrames and controlFloodTime bound one connection of a
	// PING or SETTINGS flood (repeatedFrame): over ten times the frames,
	// and four times the time, the sidecar was seen to take to trip
	// max_outbound_control_frames.
	controlFloodFrames = 5_000_000
	controlFloodTime   = 20 * time.Second
	// attackerRecvBuffer is the SO_RCVBUF of an attacker that does not
	// read (smallBuffers).
	attackerRecvBuffer = 4096
	// maxRSSGrowth bounds how much the sidecar's RSS may grow during a flood.
	maxRSSGrowth = 96 << 20
	// maxAttackCores bounds the sidecar's CPU during a flood, in cores: it
	// must not be pinned on both of CI's cores.
	maxAttackCores = 1.8
	// maxAfterCores bounds its CPU in the second after the flood stopped,
	// above what the probe alone costs: nothing keeps spinning once the
	// attacker is gone.
	maxAfterCores = 0.25
	// floodPairs is how many attack phases run, each between two quiet
	// ones; maxPairs bounds them when too few yield a measurement.
	floodPairs, maxPairs = 5, 10
	// minPairs is how many attack phases, with probe windows in them and
	// in both quiet neighbours, the latency bound is judged on.
	minPairs = 5
	// phaseSettle starts each phase unmeasured (attacks in flight finish).
	phaseSettle = 150 * time.Millisecond
	// phaseLength is the measured part of a phase.
	phaseLength = 400 * time.Millisecond
	// latencyFloor is the least quiet p99 a slowdown is taken of: below
	// it, a shared 2-core machine's scheduling noise dominates.
	latencyFloor = 15 * time.Millisecond
	// quietNoise is the percentile of all quiet windows' p99s that also
	// floors the baseline: on a loaded machine the quiet phases' own
	// hiccups say how much noise any one window may carry.
	quietNoise = 0.9
	// maxSlowdown bounds the median, over attack phases, of the probe's
	// p99 under attack over that of the neighbouring quiet phases.
	maxSlowdown = 2.0
)

// flood is one attack of TestHTTP2Floods.
type flood struct {
	name string
	// settings are the attacker's SETTINGS.
	settings []http2.Setting
	// smallBuffers shrinks the attacker's receive buffer before it
	// connects (smallRecvBuffer), so a server writing to an attacker that
	// does not read fills it quickly.
	smallBuffers bool
	// send drives one attacker connection; it returns what it sent (in
	// frames or streams) and stops at the first write error.
	send func(c *rawConn) int
	// noRead: the attacker reads nothing until send returns (so the
	// server's replies pile up); otherwise it reads concurrently.
	noRead bool
	// done reports the server's answer is complete (nil: wait for the end
	// of the connection or outcomeWait).
	done func(o *outcome) bool
	// rounds caps attacker connections (0: floodRounds).
	rounds int
	// pause separates attacker connections (0: roundPause).
	pause time.Duration
	// check judges one connection's outcome.
	check func(o *outcome, sent int) error
	// stat is the sidecar stat the flood must increment.
	stat string
}

var getPath = func(path string) []string {
	return []string{":method", "GET", ":scheme", "http", ":authority", "hardening", ":path", path}
}

func wantGoAway(code http2.ErrCode) func(o *outcome, _ int) error {
	return func(o *outcome, _ int) error {
		if raceEnabled && !o.goAway && o.closed {
			// Under -race the sidecar can be slow enough to close with
			// the attacker's frames unread, so TCP resets the connection
			// and the GOAWAY before it is lost.
			return nil
		}
		if !o.goAway || o.goAwayCode != code {
			return fmt.Errorf("got GOAWAY %v %v %q (closed %v), want GOAWAY %v", o.goAway, o.goAwayCode, o.debug, o.closed, code)
		}
		return nil
	}
}

// wantCalmOrCut accepts GOAWAY ENHANCE_YOUR_CALM or, for an attacker
// that did not read, the connection being cut.
func wantCalmOrCut(o *outcome, _ int) error {
	if (o.goAway && o.goAwayCode == http2.ErrCodeEnhanceYourCalm) || (!o.goAway && o.closed) {
		return nil
	}
	return fmt.Errorf("got GOAWAY %v %v %q (closed %v), want ENHANCE_YOUR_CALM or the connection cut", o.goAway, o.goAwayCode, o.debug, o.closed)
}

func floods() []flood {
	emptyHeaders := func(c *rawConn, i int) error {
		return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), EndHeaders: true})
	}
	return []flood{
		{
			name: "rapid reset (CVE-2023-44487)",
			// Each connection gets 500 streams to a handler before the
			// GOAWAY; at 100 ms apart (~5500 streams/s) the probe's p99
			// rose to ~30 ms on a loaded 2-core machine
			// (docs/RELIABILITY.md), so this one attacker is paced more.
			pause: 200 * time.Millisecond,
			send:  streamLoop(true, func(c *rawConn, id uint32) error { return c.fr.WriteRSTStream(id, http2.ErrCodeCancel) }),
			check: wantGoAway(http2.ErrCodeEnhanceYourCalm),
			stat:  "http.plain.downstream_rq_too_many_premature_resets",
		},
		{
			name: "MadeYouReset: WINDOW_UPDATE 0 after HEADERS (CVE-2025-8671)",
			// 500 streams reach a handler per connection, as with rapid reset.
			pause: 200 * time.Millisecond,
			send:  streamLoop(false, func(c *rawConn, id uint32) error { return c.fr.WriteWindowUpdate(id, 0) }),
			check: wantGoAway(http2.ErrCodeEnhanceYourCalm),
			stat:  "http.plain.downstream_rq_too_many_premature_resets",
		},
		{
			name: "MadeYouReset: DATA after END_STREAM (CVE-2025-8671)",
			// 500 streams reach a handler per connection, as with rapid reset.
			pause: 200 * time.Millisecond,
			send:  streamLoop(true, func(c *rawConn, id uint32) error { return c.fr.WriteData(id, false, []byte("x")) }),
			check: wantGoAway(http2.ErrCodeEnhanceYourCalm),
			stat:  "http.plain.downstream_rq_too_many_premature_resets",
		},
		{
			name: "CONTINUATION flood (CVE-2024-27316)",
			send: func(c *rawConn) int {
				if c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block(getPath("/")...)}) != nil {
					return 0
				}
				junk := c.block("x-junk", strings.Repeat("j", 4000))
				return frameLoop(5000, func(c *rawConn, _ int) error { return c.fr.WriteContinuation(1, false, junk) })(c)
			},
			check: func(o *outcome, _ int) error {
				if !o.goAway || (o.goAwayCode != http2.ErrCodeProtocol && o.goAwayCode != http2.ErrCodeEnhanceYourCalm) {
					return fmt.Errorf("got GOAWAY %v %v (closed %v), want PROTOCOL_ERROR", o.goAway, o.goAwayCode, o.closed)
				}
				return nil
			},
			stat: "http2.rx_messaging_error",
		},
		{
			name: "HPACK bomb (max_request_headers_kb)",
			// One 4000-byte value enters the dynamic table, then each
			// stream references it 20 times: ~80 KB decoded from a few
			// dozen bytes on the wire.
			send: requestLoop(100, func(int) []string {
				kv := getPath("/")
				for range 20 {
					kv = append(kv, "x-bomb", strings.Repeat("b", 4000))
				}
				return kv
			}),
			done: func(o *outcome) bool { return o.status["431"] >= 100 },
			check: func(o *outcome, sent int) error {
				if o.status["431"] != sent || o.goAway {
					return fmt.Errorf("%d of %d streams answered 431 (statuses %v, GOAWAY %v)", o.status["431"], sent, o.status, o.goAway)
				}
				return nil
			},
			stat: "http2.header_overflow",
		},
		{
			name: "header count (max_headers_count)",
			send: requestLoop(100, func(int) []string {
				kv := getPath("/")
				for i := range 60 {
					kv = append(kv, "x-h"+strconv.Itoa(i), "v")
				}
				return kv
			}),
			done: func(o *outcome) bool { return o.status["431"] >= 100 },
			check: func(o *outcome, sent int) error {
				if o.status["431"] != sent {
					return fmt.Errorf("%d of %d streams answered 431 (statuses %v)", o.status["431"], sent, o.status)
				}
				return nil
			},
			stat: "http2.header_overflow",
		},
		{
			name:         "PING flood, attacker not reading (CVE-2019-9512)",
			rounds:       4,
			smallBuffers: true,
			noRead:       true,
			// A PING frame: length 8, type PING, no flags, stream 0, payload.
			send:  repeatedFrame(controlFloodFrames, controlFloodTime, []byte{0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}),
			check: wantCalmOrCut,
			stat:  "http2.outbound_control_flood",
		},
		{
			name:         "SETTINGS flood, attacker not reading",
			rounds:       4,
			smallBuffers: true,
			noRead:       true,
			// An empty SETTINGS frame: length 0, type SETTINGS, no flags, stream 0.
			send:  repeatedFrame(controlFloodFrames, controlFloodTime, []byte{0, 0, 0, 4, 0, 0, 0, 0, 0}),
			check: wantCalmOrCut,
			stat:  "http2.outbound_control_flood",
		},
		{
			name:  "RST_STREAM flood: malformed requests provoking resets (CVE-2019-9514)",
			send:  requestLoop(2000, func(int) []string { return append(getPath("/"), "connection", "close") }),
			check: wantGoAway(http2.ErrCodeEnhanceYourCalm),
			stat:  "http.plain.downstream_rq_too_many_premature_resets",
		},
		{
			name: "empty DATA frames (CVE-2019-9518)",
			send: func(c *rawConn) int {
				if c.request(1, "/hang", false) != nil {
					return 0
				}
				return frameLoop(1000, func(c *rawConn, _ int) error { return c.fr.WriteData(1, false, nil) })(c)
			},
			check: wantGoAway(http2.ErrCodeEnhanceYourCalm),
			stat:  "http2.inbound_empty_frames_flood",
		},
		{
			name:  "empty HEADERS frames (CVE-2019-9518)",
			send:  frameLoop(1000, emptyHeaders),
			check: wantGoAway(http2.ErrCodeEnhanceYourCalm),
			stat:  "http2.inbound_empty_frames_flood",
		},
		{
			name: "zero-length header names (CVE-2019-9516)",
			send: requestLoop(50, func(int) []string { return append(getPath("/"), "", "v") }),
			done: func(o *outcome) bool { return o.rst[http2.ErrCodeProtocol] >= 50 },
			check: func(o *outcome, sent int) error {
				if o.rst[http2.ErrCodeProtocol] != sent || len(o.status) != 0 {
					return fmt.Errorf("%d of %d streams reset PROTOCOL_ERROR, statuses %v", o.rst[http2.ErrCodeProtocol], sent, o.status)
				}
				return nil
			},
			stat: "http2.rx_messaging_error",
		},
		{
			name:     "1-byte window data dribble (CVE-2019-9511/9517)",
			settings: []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: 1}},
			// Large responses the attacker lets through one byte per
			// stream and then never again: the sidecar must neither
			// buffer them whole nor keep the streams past
			// stream_idle_timeout.
			send: frameLoop(20, func(c *rawConn, i int) error { return c.request(uint32(2*i+1), "/big?size=4194304", true) }),
			done: func(o *outcome) bool { return o.rst[http2.ErrCodeCancel]+o.rst[http2.ErrCodeInternal] >= 20 },
			check: func(o *outcome, sent int) error {
				if got := o.rst[http2.ErrCodeCancel] + o.rst[http2.ErrCodeInternal]; got != sent {
					return fmt.Errorf("%d of %d dribbled streams reset (RST_STREAM codes %v, GOAWAY %v %v)", got, sent, o.rst, o.goAway, o.goAwayCode)
				}
				return nil
			},
			stat: "http.plain.downstream_rq_idle_timeout",
		},
		{
			name: "PRIORITY churn (CVE-2019-9513)",
			send: frameLoop(5000, func(c *rawConn, i int) error {
				return c.fr.WritePriority(uint32(2*(i%1000)+1), http2.PriorityParam{StreamDep: uint32(2*((i+7)%1000) + 1), Weight: uint8(i)})
			}),
			check: wantGoAway(http2.ErrCodeEnhanceYourCalm),
			stat:  "http2.inbound_priority_frames_flood",
		},
		{
			name:  "WINDOW_UPDATE flood",
			send:  frameLoop(5000, func(c *rawConn, _ int) error { return c.fr.WriteWindowUpdate(0, 1) }),
			check: wantGoAway(http2.ErrCodeEnhanceYourCalm),
			stat:  "http2.inbound_window_update_frames_flood",
		},
	}
}

// TestHTTP2Floods runs each flood from raw-frame clients against a sidecar
// process while a well-behaved client probes it on its own connection.
// Each attacker connection must end as the flood's check says; the
// flood's stat must count it; the sidecar's RSS must grow less than
// maxRSSGrowth, its CPU stay under maxAttackCores during the flood and
// fall under maxAfterCores after it; and (without -race) the probe's p99
// under attack must stay within maxSlowdown of the quiet phases around
// it (see runPhases).
func TestHTTP2Floods(t *testing.T) {
	// Envoy's default per_connection_buffer_limit_bytes (1 MiB), which
	// meshd leaves unset unless configured (docs/RELIABILITY.md), on the
	// listeners and the cluster: with it a dribbled response is buffered a
	// window at a time instead of whole.
	m := startSidecar(t, sidecarParams{HCM: floodHCM, ConnBufferLimit: 1 << 20})
	pid := m.sc.PID()
	pr := startProbe(t, m.plain)
	for _, fl := range floods() {
		t.Run(fl.name, func(t *testing.T) {
			stat0 := m.stat(t, fl.stat)
			stop := make(chan struct{})
			var on atomic.Bool
			var mu sync.Mutex
			var failures []string
			var firstSent int
			var first *outcome
			rounds := fl.rounds
			if rounds == 0 {
				rounds = floodRounds
			}
			pause := fl.pause
			if pause == 0 {
				pause = roundPause
			}
			wait := attack(floodWorkers, rounds, pause, stop, &on, func(round int) {
				var prep func(network, address string, rc syscall.RawConn) error
				if fl.smallBuffers {
					prep = smallRecvBuffer
				}
				c, err := dialRawErr(m.plain, nil, prep, fl.settings...)
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					return
				}
				defer c.nc.Close()
				var o *outcome
				var sent int
				if fl.noRead {
					sent = fl.send(c)
					o = c.readUntilEnd(outcomeWait, nil)
				} else {
					done := make(chan *outcome, 1)
					go func() {
						done <- c.readUntilEnd(outcomeWait, func(o *outcome) bool { return fl.done != nil && fl.done(o) })
					}()
					sent = fl.send(c)
					o = <-done
				}
				mu.Lock()
				defer mu.Unlock()
				if first == nil {
					first, firstSent = o, sent
				}
				if err := fl.check(o, sent); err != nil {
					failures = append(failures, fmt.Sprintf("round %d (sent %d): %v", round, sent, err))
				}
			})
			// Quiet and attack phases alternate, Q A Q A ... Q, so each
			// attack phase is judged against the quiet phases on either
			// side of it: the same machine load, measured within a second.
			// The first part of each phase is not measured.
			ph := runPhases(t, pid, pr, &on)
			on.Store(false)
			close(stop)
			rounds = wait()
			during := sampleProc(t, pid)
			time.Sleep(time.Second)
			after := sampleProc(t, pid)

			mu.Lock()
			defer mu.Unlock()
			for i, f := range failures {
				if i < 5 {
					t.Errorf("attacker: %s", f)
				}
			}
			if len(failures) > 5 {
				t.Errorf("... and %d more attacker failures", len(failures)-5)
			}
			if d := m.stat(t, fl.stat) - stat0; d <= 0 {
				t.Errorf("%s did not increase", fl.stat)
			}
			growth := ph.rssMax - ph.rssBefore
			afterCores := cpuFraction(during, after)
			firstDesc := "none"
			if first != nil {
				firstDesc = fmt.Sprintf("sent %d, GOAWAY %v %v, RST %v, statuses %v", firstSent, first.goAway, first.goAwayCode, first.rst, first.status)
			}
			t.Logf("FIGURES %s: %d attacker connections; first: %s; sidecar CPU %.2f cores quiet (probe only), %.2f under attack, %.2f after; RSS %d MiB -> max %d MiB; probe: %s",
				fl.name, rounds, firstDesc, ph.quietCPU, ph.loudCPU, afterCores, ph.rssBefore>>20, ph.rssMax>>20, ph)
			rssBound := int64(maxRSSGrowth)
			if raceEnabled {
				rssBound *= 4 // the race detector's shadow memory
			}
			if growth > rssBound {
				t.Errorf("sidecar RSS grew by %d MiB during the flood, want < %d MiB", growth>>20, rssBound>>20)
			}
			if raceEnabled {
				return
			}
			if ph.loudCPU > maxAttackCores {
				t.Errorf("sidecar used %.2f cores during the flood, want <= %.1f", ph.loudCPU, maxAttackCores)
			}
			if afterCores > ph.quietCPU+maxAfterCores {
				t.Errorf("sidecar used %.2f cores in the second after the flood, want <= %.2f above the %.2f before it", afterCores, maxAfterCores, ph.quietCPU)
			}
			if ph.loud.errs > 0 {
				t.Errorf("well-behaved client: %d failed requests under attack", ph.loud.errs)
			}
			if len(ph.ratios) < minPairs {
				t.Errorf("well-behaved client: only %d of %d attack phases had probe windows on both sides (want %d): %s", len(ph.ratios), ph.pairs, minPairs, ph)
			} else if r := ph.slowdown(); r > maxSlowdown {
				t.Errorf("well-behaved client p99 %.1fx its neighbouring quiet phases' under attack (median over %d phases), want <= %.1fx: %s", r, len(ph.ratios), maxSlowdown, ph)
			}
		})
	}
}

// frameLoop returns a send that calls write(c, i) for i = 0, 1, ... at
// most limit times and stops at the first error; it returns how many
// writes succeeded.
func frameLoop(limit int, write func(c *rawConn, i int) error) func(c *rawConn) int {
	return func(c *rawConn) int {
		n := 0
		for ; n < limit; n++ {
			if write(c, n) != nil {
				break
			}
		}
		return n
	}
}

// repeatedFrame returns a send that writes frame, one encoded frame, a
// thousand frames per socket write, until a write fails (the server cut
// the connection), limit frames went out or d passed; d also bounds each
// write, replacing the dial's write deadline. An attacker that batches its
// writes this way outpaces a write per frame by far, so the replies it
// provokes outgrow the server's kernel send buffer (megabytes, autotuned)
// within the attack: a frame per write could leave every reply absorbed by
// that buffer, and the outbound queue the limit guards would never build
// up. The bounds are generous on purpose: the server's queue limit trips
// only after its send buffer filled (about 4 MB of replies: some 240 000
// PINGs or 450 000 SETTINGS frames on Linux's defaults), and how fast the
// server reads them is all that paces the attack, which on a loaded
// machine under -race took up to 5 s.
func repeatedFrame(limit int, d time.Duration, frame []byte) func(c *rawConn) int {
	const batch = 1000
	return func(c *rawConn) int {
		buf := bytes.Repeat(frame, batch)
		end := time.Now().Add(d)
		_ = c.nc.SetWriteDeadline(end)
		n := 0
		for n < limit && time.Now().Before(end) {
			if _, err := c.nc.Write(buf); err != nil {
				break
			}
			n += batch
		}
		return n
	}
}

// requestLoop returns a send of at most limit whole requests (HEADERS
// with END_STREAM and END_HEADERS) on streams 1, 3, 5, ..., the i-th with
// the header list kv(i) encoded on the connection's HPACK context.
func requestLoop(limit int, kv func(i int) []string) func(c *rawConn) int {
	return frameLoop(limit, func(c *rawConn, i int) error {
		return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: c.block(kv(i)...), EndStream: true, EndHeaders: true})
	})
}

// phases is what runPhases measured.
type phases struct {
	// quiet and loud merge the probe windows of all quiet and all attack
	// phases.
	quiet, loud latency
	// ratios are, per attack phase with probe windows in it and in both
	// neighbours, its median window p99 over the baseline: the median
	// window p99 of the two neighbouring quiet phases, floored by
	// latencyFloor and by the quietNoise percentile of all quiet windows.
	ratios []float64
	// pairs is how many attack phases ran.
	pairs int
	// quietCPU and loudCPU are the sidecar's mean CPU, in cores, over the
	// measured parts of the quiet and the attack phases.
	quietCPU, loudCPU float64
	// rssBefore is the sidecar's RSS at the start, rssMax the largest seen.
	rssBefore, rssMax int64
}

// runPhases alternates quiet and attack phases (on set during the
// latter), starting and ending quiet, and measures the measured part of
// each: probe windows, sidecar CPU and RSS. It runs floodPairs attack
// phases, and more, up to maxPairs, while fewer than minPairs of them have
// probe windows in them and in both neighbours (a starved probe reports
// none).
func runPhases(t *testing.T, pid int, pr *probe, on *atomic.Bool) phases {
	t.Helper()
	var out phases
	var quiet []latency // quiet[i] precedes attack phase i
	var loud []latency
	var quietCPU, loudCPU []float64
	measure := func(attacking bool) latency {
		on.Store(attacking)
		time.Sleep(phaseSettle)
		a := sampleProc(t, pid)
		if out.rssBefore == 0 {
			out.rssBefore = a.rss
		}
		from := time.Now()
		time.Sleep(phaseLength)
		b := sampleProc(t, pid)
		out.rssMax = max(out.rssMax, b.rss)
		if attacking {
			loudCPU = append(loudCPU, cpuFraction(a, b))
		} else {
			quietCPU = append(quietCPU, cpuFraction(a, b))
		}
		return pr.between(from, time.Now())
	}
	usable := func() int {
		n := 0
		for i := range loud {
			if len(loud[i].p99s) > 0 && len(quiet[i].p99s) > 0 && len(quiet[i+1].p99s) > 0 {
				n++
			}
		}
		return n
	}
	quiet = append(quiet, measure(false))
	for len(loud) < floodPairs || (usable() < minPairs && len(loud) < maxPairs) {
		loud = append(loud, measure(true))
		quiet = append(quiet, measure(false))
	}
	on.Store(false)
	out.pairs = len(loud)
	for _, l := range quiet {
		out.quiet.add(l)
	}
	for _, l := range loud {
		out.loud.add(l)
	}
	out.quiet.finish()
	out.loud.finish()
	floor := max(latencyFloor, percentile(out.quiet.p99s, quietNoise))
	for i, l := range loud {
		if len(l.p99s) == 0 || len(quiet[i].p99s) == 0 || len(quiet[i+1].p99s) == 0 {
			continue
		}
		var base latency
		base.add(quiet[i])
		base.add(quiet[i+1])
		base.finish()
		out.ratios = append(out.ratios, float64(l.median)/float64(max(base.median, floor)))
	}
	out.quietCPU, out.loudCPU = mean(quietCPU), mean(loudCPU)
	return out
}

// slowdown is the median of the per-phase ratios (0 without any).
func (p phases) slowdown() float64 {
	if len(p.ratios) == 0 {
		return 0
	}
	r := slices.Clone(p.ratios)
	slices.Sort(r)
	return r[len(r)/2]
}

func (p phases) String() string {
	rs := make([]string, len(p.ratios))
	for i, r := range p.ratios {
		rs[i] = strconv.FormatFloat(r, 'f', 2, 64)
	}
	return fmt.Sprintf("quiet %v, under attack %v; per-phase slowdown [%s], median %.2fx (floor %v)",
		p.quiet, p.loud, strings.Join(rs, " "), p.slowdown(), max(latencyFloor, percentile(p.quiet.p99s, quietNoise)).Round(10*time.Microsecond))
}

// mean is the arithmetic mean of xs (0 for none).
func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// streamLoop opens up to 2000 streams on /hang (HEADERS with END_STREAM
// when end), each followed at once by the frame follow writes, and returns
// how many it sent before the connection failed.
func streamLoop(end bool, follow func(c *rawConn, id uint32) error) func(c *rawConn) int {
	return frameLoop(2000, func(c *rawConn, i int) error {
		id := uint32(2*i + 1)
		if err := c.request(id, "/hang", end); err != nil {
			return err
		}
		return follow(c, id)
	})
}

// smallRecvBuffer is a net.Dialer.Control that sets SO_RCVBUF to
// attackerRecvBuffer before the socket connects. Set after the handshake,
// as it once was, it came too late: the attacker had already advertised a
// window sized for the default buffer, which TCP never takes back, so the
// server's replies overran the shrunk buffer and the attacker's kernel
// pruned and dropped them (TcpExt RcvPruned, TCPRcvQDrop). Under load the
// retransmissions that followed stalled the connection for seconds, the
// attacker's writes blocked until their deadline, and the sidecar ended
// the connection under request_headers_timeout (a frame header it had
// started waited 2 s) before its control-frame queue reached
// max_outbound_control_frames: the flood stat never moved.
func smallRecvBuffer(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, attackerRecvBuffer)
	}); err != nil {
		return fmt.Errorf("SO_RCVBUF: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("SO_RCVBUF %d: %w", attackerRecvBuffer, serr)
	}
	return nil
}
