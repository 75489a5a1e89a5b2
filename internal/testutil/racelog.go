package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// raceReportStart is the first line of each data race report the race
// runtime writes; raceReportSeparator frames every report.
const (
	raceReportStart     = "WARNING: DATA RACE"
	raceReportSeparator = "=================="
)

// RaceLog collects the data race reports of processes started from a
// race-built binary (go build -race), so that a race inside a meshd
// process fails the test that ran it instead of scrolling by on the
// process's stderr. It works by the race runtime's GORACE option
// log_path: each process writes its reports to "<prefix>.<pid>" under a
// directory of the test's own, and Check reads them.
//
// A binary built without -race ignores GORACE, so a RaceLog costs such a
// process nothing and never reports. Its methods are safe for concurrent
// use.
type RaceLog struct {
	prefix string // log_path handed to the race runtime; immutable

	mu       sync.Mutex
	reported map[string]int // file -> bytes already reported
}

// WatchRaces points cmd's race runtime at a fresh log directory and
// registers a t.Cleanup that calls Check. Call it before cmd.Start and
// before registering the cleanup that stops the process, so that (cleanups
// running last-in first-out) the check reads the logs after the process
// has gone. cmd's environment is kept: when cmd.Env is nil it is filled
// from the test's environment, and options already in GORACE (e.g.
// halt_on_error) are kept, log_path taking precedence. The processes cmd
// starts inherit the variable, so `meshd up`'s sidecars report to the same
// RaceLog.
func WatchRaces(t testing.TB, cmd *exec.Cmd) *RaceLog {
	t.Helper()
	r := &RaceLog{
		prefix:   filepath.Join(t.TempDir(), "race"),
		reported: make(map[string]int),
	}
	env := cmd.Environ()
	gorace := "log_path=" + r.prefix
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GORACE="); ok && strings.TrimSpace(v) != "" {
			// Later options override earlier ones in the race runtime's
			// parser, so ours goes last.
			gorace = strings.TrimSpace(v) + " " + gorace
		}
	}
	// exec.Cmd keeps the last of duplicate variables.
	cmd.Env = append(env, "GORACE="+gorace)
	t.Cleanup(func() { r.Check(t) })
	return r
}

// Check fails t (with Errorf, so the test goes on to its cleanups) once for
// every data race report the watched processes have written since the last
// Check, quoting the whole report. Anything else the race runtime wrote
// there (its own warnings) is logged, not failed.
func (r *RaceLog) Check(t testing.TB) {
	t.Helper()
	reports, other, err := r.collect()
	if err != nil {
		t.Errorf("reading race reports: %v", err)
	}
	if other != "" {
		t.Logf("race runtime output that is not a data race report:\n%s", other)
	}
	for _, rep := range reports {
		t.Errorf("data race in a process the test started:\n%s", rep)
	}
}

// collect reads the unreported tail of every log file and splits it into
// data race reports and other output.
func (r *RaceLog) collect() (reports []string, other string, err error) {
	files, err := filepath.Glob(r.prefix + ".*")
	if err != nil {
		return nil, "", fmt.Errorf("listing %s.*: %w", r.prefix, err)
	}
	slices.Sort(files)
	r.mu.Lock()
	defer r.mu.Unlock()
	var rest []string
	for _, f := range files {
		data, rerr := os.ReadFile(f)
		if rerr != nil {
			err = fmt.Errorf("reading %s: %w", f, rerr)
			continue
		}
		from := r.reported[f]
		if len(data) <= from {
			continue
		}
		// The pid suffix tells which process a report came from.
		pid := strings.TrimPrefix(filepath.Ext(f), ".")
		reps, o := SplitRaceReports(string(data[from:]))
		for _, rep := range reps {
			reports = append(reports, "(pid "+pid+")\n"+rep)
		}
		if o != "" {
			rest = append(rest, "(pid "+pid+")\n"+o)
		}
		r.reported[f] = len(data)
	}
	return reports, strings.Join(rest, "\n"), err
}

// SplitRaceReports splits what a race runtime wrote (to its log_path or
// stderr) into its data race reports, each from its "WARNING: DATA RACE"
// line to the end of its goroutine stacks, and returns the remaining
// non-blank text (e.g. "Found 2 data race(s)") as other. A report cut
// short, because the process was killed while writing it, is returned as
// far as it goes.
func SplitRaceReports(text string) (reports []string, other string) {
	var rest strings.Builder
	for {
		i := strings.Index(text, raceReportStart)
		if i < 0 {
			rest.WriteString(text)
			break
		}
		before := text[:i]
		// The separator line that opens the report belongs to it.
		if j := strings.LastIndex(before, raceReportSeparator); j >= 0 && strings.TrimSpace(before[j+len(raceReportSeparator):]) == "" {
			before = before[:j]
		}
		rest.WriteString(before)
		body := text[i:]
		end := strings.Index(body, "\n"+raceReportSeparator)
		if end < 0 {
			reports = append(reports, strings.TrimRight(body, "\n"))
			text = ""
			continue
		}
		reports = append(reports, body[:end])
		text = body[end+1+len(raceReportSeparator):]
	}
	var lines []string
	for l := range strings.SplitSeq(rest.String(), "\n") {
		if strings.TrimSpace(l) != "" && strings.Trim(l, "=") != "" {
			lines = append(lines, l)
		}
	}
	return reports, strings.Join(lines, "\n")
}
