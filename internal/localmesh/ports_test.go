package localmesh

import (
	"errors"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

func parseExample(t *testing.T) *model.Mesh {
	t.Helper()
	m, err := model.Parse(examples.Mesh, BuiltinSource)
	if err != nil {
		t.Fatalf("parsing the built-in mesh: %v", err)
	}
	return m
}

// picker hands out ports from a list, in order.
func picker(ports ...uint32) func(string) (uint32, error) {
	return func(string) (uint32, error) {
		if len(ports) == 0 {
			return 0, errors.New("out of ports")
		}
		p := ports[0]
		ports = ports[1:]
		return p, nil
	}
}

func busy(ports ...uint32) func(string, uint32) bool {
	return func(_ string, p uint32) bool { return !slices.Contains(ports, p) }
}

func TestPlanPorts(t *testing.T) {
	tests := []struct {
		name    string
		samples bool
		busy    []uint32
		pick    []uint32
		// want are the moves as "field from->to", in mesh order.
		want    []string
		wantErr string
		// wantAdmin (by node ID) and wantApp (the server's
		// spec.inbound.app) are the values after Apply.
		wantAdmin map[string]string
		wantApp   string
	}{
		{
			name:      "nothing busy",
			samples:   true,
			wantAdmin: map[string]string{"greeter-client.demo": "127.0.0.1:15002", "greeter-server.demo": "127.0.0.1:15001"},
			wantApp:   "127.0.0.1:50051",
		},
		{
			name:      "busy inbound, app and admin",
			samples:   true,
			busy:      []uint32{15101, 50051, 15002},
			pick:      []uint32{40001, 40002, 40003},
			want:      []string{"spec.admin 15002->40001", "spec.inbound.port 15101->40002", "spec.inbound.app 50051->40003"},
			wantAdmin: map[string]string{"greeter-client.demo": "127.0.0.1:40001", "greeter-server.demo": "127.0.0.1:15001"},
			wantApp:   "127.0.0.1:40003",
		},
		{
			name:      "app not checked without samples",
			samples:   false,
			busy:      []uint32{50051, 15201},
			pick:      []uint32{40001},
			want:      []string{"spec.outbound[0].port 15201->40001"},
			wantAdmin: map[string]string{"greeter-client.demo": "127.0.0.1:15002", "greeter-server.demo": "127.0.0.1:15001"},
			wantApp:   "127.0.0.1:50051",
		},
		{
			name:      "a pick that is another binding's port is skipped",
			samples:   true,
			busy:      []uint32{15201},
			pick:      []uint32{15101, 15201, 40001},
			want:      []string{"spec.outbound[0].port 15201->40001"},
			wantAdmin: map[string]string{"greeter-client.demo": "127.0.0.1:15002", "greeter-server.demo": "127.0.0.1:15001"},
			wantApp:   "127.0.0.1:50051",
		},
		{
			name:    "no port to pick",
			samples: true,
			busy:    []uint32{15001},
			wantErr: "Workload demo/greeter-server spec.admin: choosing a free port on 127.0.0.1: out of ports",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := parseExample(t)
			plan, err := PlanPorts(m, tc.samples, busy(tc.busy...), picker(tc.pick...))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("PlanPorts error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("PlanPorts: %v", err)
			}
			var got []string
			for _, mv := range plan.Moves {
				got = append(got, mv.Field+" "+itoa(mv.Port)+"->"+itoa(mv.To))
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("moves = %q, want %q", got, tc.want)
			}
			if err := plan.Apply(m); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			for id, want := range tc.wantAdmin {
				if got := m.Workload(id).Spec.Admin; got != want {
					t.Errorf("%s spec.admin = %s, want %s", id, got, want)
				}
			}
			if got := m.Workload("greeter-server.demo").Spec.Inbound.App; got != tc.wantApp {
				t.Errorf("spec.inbound.app = %s, want %s", got, tc.wantApp)
			}
			// The moved mesh still translates, and its listeners are on
			// the moved ports.
			res, err := translate.Translate(m)
			if err != nil {
				t.Fatalf("Translate after Apply: %v", err)
			}
			in := m.Workload("greeter-server.demo").Spec.Inbound.Port
			if !hasListener(res.Nodes["greeter-server.demo"], translate.InboundListenerName(in)) {
				t.Errorf("greeter-server.demo has no listener %s", translate.InboundListenerName(in))
			}
			out := m.Workload("greeter-client.demo").Spec.Outbound[0].Port
			if !hasListener(res.Nodes["greeter-client.demo"], translate.OutboundName(out)) {
				t.Errorf("greeter-client.demo has no listener %s", translate.OutboundName(out))
			}
		})
	}
}

// TestPortPlanReapplied checks what a live edit relies on: the plan made
// for the first version of a file moves the same ports of a freshly parsed
// copy, and fills an unset admin address the same way.
func TestPortPlanReapplied(t *testing.T) {
	noAdmin := strings.Replace(string(examples.Mesh), "  admin: 127.0.0.1:15002\n", "", 1)
	first, err := model.Parse([]byte(noAdmin), "mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	plan, err := PlanPorts(first, false, busy(15101), picker(40001, 40002))
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Moves) != 2 || plan.Moves[0].Port != 0 || !strings.Contains(plan.Moves[0].String(), "spec.admin unset: using 127.0.0.1:40001") {
		t.Fatalf("moves = %v, want the unset admin of greeter-client, then 15101", plan.Moves)
	}
	again, err := model.Parse([]byte(noAdmin), "mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*model.Mesh{first, again} {
		if err := plan.Apply(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []*model.Mesh{first, again} {
		if got := m.Workload("greeter-server.demo").Spec.Inbound.Port; got != 40002 {
			t.Errorf("inbound port = %d, want 40002", got)
		}
		if got := m.Workload("greeter-client.demo").Spec.Admin; got != "127.0.0.1:40001" {
			t.Errorf("client admin = %s, want 127.0.0.1:40001", got)
		}
	}
	r1, err := translate.Translate(first)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := translate.Translate(again)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Version != r2.Version {
		t.Errorf("versions differ after the same plan: %s vs %s", r1.Version, r2.Version)
	}
}

func TestPortFreeAndPick(t *testing.T) {
	p, err := PickPort("127.0.0.1")
	if err != nil || p == 0 {
		t.Fatalf("PickPort = %d, %v", p, err)
	}
	if !PortFree("127.0.0.1", p) {
		t.Fatalf("port %d just picked is not free", p)
	}
	// A port held on either transport is busy: http3 inbound ports bind
	// UDP as well as TCP.
	for _, network := range []string{"tcp", "udp"} {
		t.Run(network, func(t *testing.T) {
			var c io.Closer
			var port uint32
			if network == "tcp" {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				c, port = l, uint32(l.Addr().(*net.TCPAddr).Port)
			} else {
				u, err := net.ListenPacket("udp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				c, port = u, uint32(u.LocalAddr().(*net.UDPAddr).Port)
			}
			defer c.Close()
			if PortFree("127.0.0.1", port) {
				t.Errorf("PortFree(%d) = true while a %s socket holds it", port, network)
			}
		})
	}
}

func hasListener(r *translate.Resources, name string) bool {
	if r == nil {
		return false
	}
	for _, l := range r.Listeners {
		if l.(interface{ GetName() string }).GetName() == name {
			return true
		}
	}
	return false
}

func itoa(p uint32) string { return strconv.FormatUint(uint64(p), 10) }
