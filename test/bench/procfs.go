package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procCPU is the CPU time a process (all of its threads, live and exited) has
// used, in clock ticks, as /proc/PID/stat reports it.
type procCPU struct {
	UserTicks   uint64
	SystemTicks uint64
}

// Total returns user plus system ticks.
func (c procCPU) Total() uint64 { return c.UserTicks + c.SystemTicks }

// parseProcStat extracts utime and stime (fields 14 and 15, see proc(5)) from
// the contents of /proc/PID/stat. The command name (field 2) is in parentheses
// and may itself contain spaces and parentheses, so fields are counted from
// the last ')'.
func parseProcStat(data []byte) (procCPU, error) {
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return procCPU{}, fmt.Errorf("proc stat: no ')' closing the comm field")
	}
	// fields[0] is field 3 (state), so field N is fields[N-3].
	fields := strings.Fields(string(data[end+1:]))
	const utimeField, stimeField = 14, 15
	if len(fields) < stimeField-2 {
		return procCPU{}, fmt.Errorf("proc stat: %d fields after comm, want at least %d", len(fields), stimeField-2)
	}
	utime, err := strconv.ParseUint(fields[utimeField-3], 10, 64)
	if err != nil {
		return procCPU{}, fmt.Errorf("proc stat: utime (field %d): %w", utimeField, err)
	}
	stime, err := strconv.ParseUint(fields[stimeField-3], 10, 64)
	if err != nil {
		return procCPU{}, fmt.Errorf("proc stat: stime (field %d): %w", stimeField, err)
	}
	return procCPU{UserTicks: utime, SystemTicks: stime}, nil
}

// parseStatusKB returns a "Key: <n> kB" line of /proc/PID/status in bytes.
func parseStatusKB(data []byte, key string) (int64, error) {
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, key+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("proc status: %s %q: want \"<n> kB\"", key, strings.TrimSpace(rest))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc status: %s: %w", key, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("proc status: no %s line (kernel thread or exited process?)", key)
}

// memSample is a process's resident memory in bytes: VmRSS, and its
// anonymous part RssAnon (heap, stacks, buffers). VmRSS also counts the
// file pages of the executable and libraries mapped in, which for a large
// statically linked Go binary are tens of MiB of shared page cache and no
// cost per process or per connection.
type memSample struct {
	RSS, Anon int64
}

// add returns the sum of m and o.
func (m memSample) add(o memSample) memSample { return memSample{m.RSS + o.RSS, m.Anon + o.Anon} }

// max returns the larger of each field.
func (m memSample) max(o memSample) memSample {
	return memSample{max(m.RSS, o.RSS), max(m.Anon, o.Anon)}
}

// readMem reads VmRSS and RssAnon of process pid.
func readMem(pid int) (memSample, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memSample{}, err
	}
	var m memSample
	if m.RSS, err = parseStatusKB(data, "VmRSS"); err != nil {
		return m, fmt.Errorf("pid %d: %w", pid, err)
	}
	if m.Anon, err = parseStatusKB(data, "RssAnon"); err != nil {
		return m, fmt.Errorf("pid %d: %w", pid, err)
	}
	return m, nil
}

// readProcCPU reads the CPU ticks of process pid.
func readProcCPU(pid int) (procCPU, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procCPU{}, err
	}
	c, err := parseProcStat(data)
	if err != nil {
		return procCPU{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return c, nil
}

// Clock tick calibration.
const (
	// assumedClockTicks is USER_HZ on every Linux architecture Go supports;
	// used when getconf is missing, after checking it against a busy loop.
	assumedClockTicks = 100
	// calibrationSpin is how long (wall time) the busy loop that checks the
	// tick rate runs.
	calibrationSpin = 300 * time.Millisecond
	// getconfTimeout bounds `getconf CLK_TCK`.
	getconfTimeout = 5 * time.Second
)

// clockTicks returns the unit of /proc/PID/stat's utime and stime in ticks
// per second, and how it was found: from `getconf CLK_TCK`, or assumed to be
// 100. Either way the value is checked against getrusage: the ticks this
// process accumulates while spinning, divided by the CPU seconds getrusage
// reports for the same spin, must be within half of it. (Wall time would be
// the wrong yardstick on a shared VM, where steal time leaves a spinning
// thread far less than one CPU-second per second.)
func clockTicks(ctx context.Context) (int, string, error) {
	hz, source := assumedClockTicks, "assumed 100 (getconf CLK_TCK unavailable)"
	cctx, cancel := context.WithTimeout(ctx, getconfTimeout)
	out, err := exec.CommandContext(cctx, "getconf", "CLK_TCK").Output()
	cancel()
	if err == nil {
		v, perr := strconv.Atoi(strings.TrimSpace(string(out)))
		if perr == nil && v > 0 {
			hz, source = v, "getconf CLK_TCK"
		}
	}
	measured, err := measureTickRate()
	if err != nil {
		return 0, "", fmt.Errorf("clock ticks: %w", err)
	}
	if !ticksAgree(hz, measured) {
		return 0, "", fmt.Errorf("clock ticks: %s gives %d/s but /proc/self/stat against getrusage measured %.0f/s", source, hz, measured)
	}
	return hz, fmt.Sprintf("%s; checked against getrusage: %.0f/s", source, measured), nil
}

// ticksAgree reports whether a measured tick rate is within half of hz.
func ticksAgree(hz int, measured float64) bool {
	return measured > float64(hz)/2 && measured < float64(hz)*3/2
}

// measureTickRate spins for calibrationSpin of wall time and returns the
// ticks /proc/self/stat gained per CPU-second getrusage gained meanwhile.
func measureTickRate() (float64, error) {
	pid := os.Getpid()
	before, err := readProcCPU(pid)
	if err != nil {
		return 0, err
	}
	var ruBefore, ruAfter syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ruBefore); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	start := time.Now()
	x := uint64(1)
	for time.Since(start) < calibrationSpin {
		for i := 0; i < 1000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ruAfter); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	after, err := readProcCPU(pid)
	if err != nil {
		return 0, err
	}
	cpu := tvSeconds(ruAfter.Utime) + tvSeconds(ruAfter.Stime) - tvSeconds(ruBefore.Utime) - tvSeconds(ruBefore.Stime)
	if cpu <= 0 || x == 0 { // x == 0 never holds; it keeps the loop alive
		return 0, fmt.Errorf("getrusage reported no CPU time for a %v spin", calibrationSpin)
	}
	return float64(after.Total()-before.Total()) / cpu, nil
}

// tvSeconds converts a syscall.Timeval to seconds.
func tvSeconds(tv syscall.Timeval) float64 {
	return float64(tv.Sec) + float64(tv.Usec)/1e6
}

// parseStatusField returns the value of a "Key:\tvalue" line of
// /proc/PID/status, trimmed; ok is false when there is no such line.
func parseStatusField(data []byte, key string) (string, bool) {
	for line := range strings.Lines(string(data)) {
		if rest, found := strings.CutPrefix(line, key+":"); found {
			return strings.TrimSpace(rest), true
		}
	}
	return "", false
}

// readCPUsAllowed returns process pid's Cpus_allowed_list ("0", "0-1"), the
// CPUs its affinity lets it run on.
func readCPUsAllowed(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	v, ok := parseStatusField(data, "Cpus_allowed_list")
	if !ok {
		return "", fmt.Errorf("pid %d: no Cpus_allowed_list in status", pid)
	}
	return v, nil
}
