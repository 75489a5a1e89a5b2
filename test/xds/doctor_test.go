package xds_test

import (
	"encoding/json"
	"testing"
	"time"

	"meshd.dev/meshd/doctor"
	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
)

// TestDoctorFleet runs `meshd doctor --control-plane` against a control
// plane with two sidecars under a steady call load: doctor finds both
// sidecars by the admin addresses they reported to the control plane
// (node.metadata meshd.admin, on /status), samples each over the window,
// and reports nothing above info for this healthy mesh (exit 0).
func TestDoctorFleet(t *testing.T) {
	app := testutil.StartGRPCInteropServer(t)
	cp, sidecars, _, _, p := startTunedMesh(t, app.Addr)
	load := meshtest.StartCallLoad(t, meshtest.DialLoopback(t, p.Outbound), 2)
	load.WaitCalls(t, 10, "calls before doctor")

	res := testutil.RunMeshd(t, time.Minute, "doctor", "--control-plane", cp.Admin, "--window", "2s", "-o", "json")
	load.Stop()
	var rep doctor.Report
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("meshd doctor --control-plane -o json: %v\nstdout: %s\nstderr: %s", err, res.Stdout, res.Stderr)
	}
	if res.ExitCode != 0 || rep.Mode != "fleet" || len(rep.Nodes) != len(sidecars) {
		t.Fatalf("exit %d, mode %q, %d nodes; want 0, fleet, %d nodes:\n%s\n%s", res.ExitCode, rep.Mode, len(rep.Nodes), len(sidecars), res.Stdout, res.Stderr)
	}
	for _, n := range rep.Nodes {
		sc := sidecars[n.Node]
		if sc == nil || n.Admin != sc.AdminAddr || n.Error != "" || n.Report == nil || n.Report.Worst() != doctor.Info {
			t.Errorf("node %+v: want one of the mesh's sidecars at its admin address, sampled, nothing above info", n)
		}
	}
	if ok, fail := load.Counts(); ok == 0 || fail > 0 {
		t.Errorf("load: %d calls ok, %d failed (first: %v)", ok, fail, load.FirstError())
	}
}
