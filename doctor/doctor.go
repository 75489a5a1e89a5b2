// Package doctor diagnoses a mesh against the failures in docs/scenarios.md
// (S1…S11): statically from a mesh file (Static), live from one sidecar's
// admin API sampled over a window (Live), or over every sidecar connected to
// a control plane (Fleet).
//
// Every diagnosis is a Report: a list of Findings, each with a Severity, the
// scenario it leads to, the evidence with its numbers (also as Values, for
// machines such as a future auto-tuner), and the change that fixes it. A
// Report renders as a short text table (WriteText) or JSON, and its worst
// severity is the process exit code (ExitCode).
package doctor

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Severity orders findings: Info is context, Warning is a setting or an
// observation likely to hurt, Error is a mesh that cannot work as written.
type Severity int

// Severities, in increasing order.
const (
	Info Severity = iota
	Warning
	Error
)

// String returns "info", "warning" or "error".
func (s Severity) String() string {
	switch s {
	case Info:
		return "info"
	case Warning:
		return "warning"
	case Error:
		return "error"
	}
	return fmt.Sprintf("severity(%d)", int(s))
}

// MarshalJSON encodes the severity as its name.
func (s Severity) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON accepts a name written by MarshalJSON.
func (s *Severity) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err != nil {
		return fmt.Errorf("severity: %w", err)
	}
	for _, v := range []Severity{Info, Warning, Error} {
		if v.String() == name {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("severity: unknown %q (want info, warning or error)", name)
}

// Scenario names, as in docs/scenarios.md.
const (
	S1  = "S1"  // connection pool explosion
	S2  = "S2"  // too_many_pings loop
	S3  = "S3"  // REFUSED_STREAM storm
	S4  = "S4"  // TIME_WAIT storm
	S5  = "S5"  // TLS handshake hang
	S6  = "S6"  // response header hang
	S7  = "S7"  // streaming stall
	S8  = "S8"  // leaks on cancel
	S9  = "S9"  // GOAWAY during a rollout
	S10 = "S10" // idle connections never reclaimed
	S11 = "S11" // cold start
)

// ScenarioTitle returns the scenario's short title ("too_many_pings loop"),
// or "" for an unknown name.
func ScenarioTitle(s string) string {
	return map[string]string{
		S1: "connection pool explosion", S2: "too_many_pings loop", S3: "REFUSED_STREAM storm",
		S4: "TIME_WAIT storm", S5: "TLS handshake hang", S6: "response header hang",
		S7: "streaming stall", S8: "leaks on cancel", S9: "GOAWAY during a rollout",
		S10: "idle connections never reclaimed", S11: "cold start",
	}[s]
}

// Finding is one diagnosis.
type Finding struct {
	Severity Severity `json:"severity"`
	// Scenario is "S1"…"S11", or "" for a finding outside the catalogue
	// (a mesh file that does not load).
	Scenario string `json:"scenario,omitempty"`
	// Rule names the check that fired ("keepalive-below-min-ping",
	// "connection-churn"), stable for scripts.
	Rule string `json:"rule"`
	// Subject is what the finding is about: "Service demo/greeter",
	// "cluster backend".
	Subject string `json:"subject"`
	// Evidence says what was found, with the numbers.
	Evidence string `json:"evidence"`
	// Fix is the change that removes the cause: a mesh-file field and value
	// (static), or the setting to change (live).
	Fix string `json:"fix,omitempty"`
	// Values are the numbers behind Evidence, by name (e.g.
	// "keepalive_interval_ms", "reuse_ratio"), for machines.
	Values map[string]float64 `json:"values,omitempty"`
}

// Report is the result of one diagnosis.
type Report struct {
	// Target is what was diagnosed: a mesh file name, an admin address, a
	// control plane address.
	Target string `json:"target"`
	// Mode is "static", "live" or "fleet".
	Mode string `json:"mode"`
	// WindowSeconds is the live sampling window (0 for static).
	WindowSeconds float64 `json:"window_seconds,omitempty"`
	// Findings are sorted by severity (worst first), then scenario, subject
	// and rule.
	Findings []Finding `json:"findings"`
	// Nodes are the per-sidecar reports of a fleet diagnosis.
	Nodes []NodeReport `json:"nodes,omitempty"`
}

// NodeReport is one sidecar of a fleet diagnosis.
type NodeReport struct {
	// Node is the xDS node ID; Admin its admin address.
	Node  string `json:"node"`
	Admin string `json:"admin,omitempty"`
	// Error is set when the sidecar could not be sampled; Skipped when it
	// was not tried (why).
	Error   string  `json:"error,omitempty"`
	Skipped string  `json:"skipped,omitempty"`
	Report  *Report `json:"report,omitempty"`
}

// Worst returns the highest severity in the report (Info when empty),
// including the nodes of a fleet report; a node that could not be sampled
// counts as Error.
func (r *Report) Worst() Severity {
	w := Info
	for _, f := range r.Findings {
		w = max(w, f.Severity)
	}
	for _, n := range r.Nodes {
		if n.Error != "" {
			w = Error
		}
		if n.Report != nil {
			w = max(w, n.Report.Worst())
		}
	}
	return w
}

// ExitCode is the process exit code for the report: 0 when nothing is above
// info, 1 for warnings, 2 for errors.
func (r *Report) ExitCode() int { return int(r.Worst()) }

// Scenarios returns the distinct scenarios of findings at or above min,
// sorted.
func (r *Report) Scenarios(min Severity) []string {
	var out []string
	for _, f := range r.Findings {
		if f.Severity >= min && f.Scenario != "" && !slices.Contains(out, f.Scenario) {
			out = append(out, f.Scenario)
		}
	}
	slices.SortFunc(out, compareScenario)
	return out
}

// compareScenario orders "S2" before "S10".
func compareScenario(a, b string) int {
	var x, y int
	_, _ = fmt.Sscanf(a, "S%d", &x)
	_, _ = fmt.Sscanf(b, "S%d", &y)
	return cmp.Or(cmp.Compare(x, y), cmp.Compare(a, b))
}

func (r *Report) add(f Finding) { r.Findings = append(r.Findings, f) }

// sort puts the worst findings first.
func (r *Report) sort() {
	slices.SortStableFunc(r.Findings, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(b.Severity, a.Severity), compareScenario(a.Scenario, b.Scenario),
			cmp.Compare(a.Subject, b.Subject), cmp.Compare(a.Rule, b.Rule))
	})
	if r.Findings == nil {
		r.Findings = []Finding{}
	}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("doctor: encoding report: %w", err)
	}
	return nil
}

// WriteText writes the report for a person: a summary line, then per
// finding a header line (severity, scenario, subject) and its evidence and
// fix, indented.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	r.text(&b, "")
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) text(b *strings.Builder, indent string) {
	counts := map[Severity]int{}
	for _, f := range r.Findings {
		counts[f.Severity]++
	}
	what := r.Target
	if r.WindowSeconds > 0 {
		what += fmt.Sprintf(", window %gs", r.WindowSeconds)
	}
	fmt.Fprintf(b, "%smeshd doctor (%s) %s: %s\n", indent, r.Mode, what, summary(counts))
	for _, f := range r.Findings {
		scen := f.Scenario
		if t := ScenarioTitle(f.Scenario); t != "" {
			scen += " " + t
		}
		if scen == "" {
			scen = "-"
		}
		fmt.Fprintf(b, "%s%-7s  %s  [%s]  %s\n", indent, strings.ToUpper(f.Severity.String()), scen, f.Rule, f.Subject)
		fmt.Fprintf(b, "%s         evidence: %s\n", indent, f.Evidence)
		if f.Fix != "" {
			fmt.Fprintf(b, "%s         fix:      %s\n", indent, f.Fix)
		}
	}
	for _, n := range r.Nodes {
		fmt.Fprintf(b, "%s\n%snode %s (admin %s)\n", indent, indent, n.Node, n.Admin)
		if n.Error != "" {
			fmt.Fprintf(b, "%s  ERROR    %s\n", indent, n.Error)
		}
		if n.Skipped != "" {
			fmt.Fprintf(b, "%s  skipped: %s\n", indent, n.Skipped)
		}
		if n.Report != nil {
			n.Report.text(b, indent+"  ")
		}
	}
}

func summary(counts map[Severity]int) string {
	if counts[Error]+counts[Warning]+counts[Info] == 0 {
		return "no findings"
	}
	var parts []string
	for _, s := range []Severity{Error, Warning, Info} {
		if n := counts[s]; n > 0 {
			name := s.String()
			if n > 1 {
				name += "s"
			}
			parts = append(parts, fmt.Sprintf("%d %s", n, name))
		}
	}
	return strings.Join(parts, ", ")
}
