package localmesh

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// Binding is one address the local mesh will listen on, named by the
// document field that sets it.
type Binding struct {
	// Owner is the document, e.g. "Workload demo/greeter-server".
	Owner string
	// Field is the field path in that document, e.g. "spec.inbound.port".
	Field string
	// Host is the IP the port is bound on.
	Host string
	// Port is the port the mesh file asks for; 0 when the field is unset
	// (a Workload without spec.admin), so a port must be chosen.
	Port uint32
}

// Move is one port the local mesh binds instead of the one the mesh file
// names, because that one was busy (or unset).
type Move struct {
	Binding
	// To is the port bound instead.
	To uint32
}

// String says what moved, for the start-up block.
func (m Move) String() string {
	if m.Port == 0 {
		return fmt.Sprintf("%s %s unset: using %s", m.Owner, m.Field, net.JoinHostPort(m.Host, strconv.Itoa(int(m.To))))
	}
	return fmt.Sprintf("%s %s: port %d is busy, using %d", m.Owner, m.Field, m.Port, m.To)
}

// PortPlan is the set of port moves decided once at start. Apply replays it
// on every version of the mesh file, so a live edit keeps the ports the
// running sidecars were started with. It is immutable after PlanPorts.
type PortPlan struct {
	// Moves are the moves in mesh order (Workloads sorted by namespace and
	// name, fields in document order).
	Moves   []Move
	samples bool
	ports   map[uint32]uint32 // mesh-file port -> bound port
	admins  map[string]uint32 // node ID -> port, for Workloads without spec.admin
}

// Bindings lists every address the local mesh binds for m: each Workload's
// inbound listener, outbound listeners and admin address, and with samples,
// the application address (spec.inbound.app) of each Workload whose sample
// server meshd starts.
func Bindings(m *model.Mesh, samples bool) []Binding {
	var bs []Binding
	for _, w := range m.Workloads {
		owner := "Workload " + w.Metadata.Namespace + "/" + w.Metadata.Name
		if in := w.Spec.Inbound; in != nil {
			bs = append(bs, Binding{owner, "spec.inbound.port", translate.LocalAddress, in.Port})
			if samples && sampleServer(w) {
				if host, port, err := splitHostPort(in.App); err == nil {
					bs = append(bs, Binding{owner, "spec.inbound.app", host, port})
				}
			}
		}
		for i, out := range w.Spec.Outbound {
			bs = append(bs, Binding{owner, fmt.Sprintf("spec.outbound[%d].port", i), translate.LocalAddress, out.Port})
		}
		if w.Spec.Admin == "" {
			bs = append(bs, Binding{owner, "spec.admin", translate.LocalAddress, 0})
		} else if host, port, err := splitHostPort(w.Spec.Admin); err == nil {
			bs = append(bs, Binding{owner, "spec.admin", host, port})
		}
	}
	return bs
}

// PlanPorts decides which of m's bindings (see Bindings) must move: those
// whose port free reports busy, and unset admin addresses. Each gets a port
// from pick that is neither another binding's port nor picked before. An
// error names the binding no port could be found for.
//
// free and pick are parameters so tests can decide what is busy; Run uses
// PortFree and PickPort.
func PlanPorts(m *model.Mesh, samples bool, free func(host string, port uint32) bool, pick func(host string) (uint32, error)) (*PortPlan, error) {
	bs := Bindings(m, samples)
	taken := make(map[uint32]bool, len(bs))
	for _, b := range bs {
		taken[b.Port] = true
	}
	p := &PortPlan{samples: samples, ports: map[uint32]uint32{}, admins: map[string]uint32{}}
	adminOwner := map[string]string{} // owner -> node ID
	for _, w := range m.Workloads {
		adminOwner["Workload "+w.Metadata.Namespace+"/"+w.Metadata.Name] = w.NodeID()
	}
	for _, b := range bs {
		if b.Port != 0 {
			if _, moved := p.ports[b.Port]; moved || free(b.Host, b.Port) {
				continue
			}
		}
		to, err := pickUnused(b, taken, pick)
		if err != nil {
			return nil, err
		}
		if b.Port == 0 {
			p.admins[adminOwner[b.Owner]] = to
		} else {
			p.ports[b.Port] = to
		}
		p.Moves = append(p.Moves, Move{Binding: b, To: to})
	}
	return p, nil
}

// pickAttempts bounds how often PlanPorts asks for a port that is not
// already spoken for.
const pickAttempts = 20

func pickUnused(b Binding, taken map[uint32]bool, pick func(string) (uint32, error)) (uint32, error) {
	for range pickAttempts {
		to, err := pick(b.Host)
		if err != nil {
			return 0, fmt.Errorf("%s %s: choosing a free port on %s: %w", b.Owner, b.Field, b.Host, err)
		}
		if to != 0 && !taken[to] {
			taken[to] = true
			return to, nil
		}
	}
	return 0, fmt.Errorf("%s %s: no free port on %s after %d tries", b.Owner, b.Field, b.Host, pickAttempts)
}

// Apply rewrites m's bindings (see Bindings) by the plan. m must be a fresh
// result of model.Parse that nothing else holds yet: the model's values are
// otherwise immutable. Ports the plan does not know (a Workload added by a
// live edit) are left as the file says.
func (p *PortPlan) Apply(m *model.Mesh) error {
	var errs []error
	for _, w := range m.Workloads {
		owner := "Workload " + w.Metadata.Namespace + "/" + w.Metadata.Name
		if in := w.Spec.Inbound; in != nil {
			in.Port = p.port(in.Port)
			if p.samples && sampleServer(w) {
				app, err := p.moveAddr(in.App, 0)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s spec.inbound.app: %w", owner, err))
				}
				in.App = app
			}
		}
		for i := range w.Spec.Outbound {
			w.Spec.Outbound[i].Port = p.port(w.Spec.Outbound[i].Port)
		}
		admin, err := p.moveAddr(w.Spec.Admin, p.admins[w.NodeID()])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s spec.admin: %w", owner, err))
		}
		w.Spec.Admin = admin
	}
	return errors.Join(errs...)
}

func (p *PortPlan) port(port uint32) uint32 {
	if to, ok := p.ports[port]; ok {
		return to
	}
	return port
}

// moveAddr returns addr with its port moved by the plan; an empty addr
// becomes 127.0.0.1:unset when unset is not 0.
func (p *PortPlan) moveAddr(addr string, unset uint32) (string, error) {
	if addr == "" {
		if unset == 0 {
			return "", nil
		}
		return net.JoinHostPort(translate.LocalAddress, strconv.Itoa(int(unset))), nil
	}
	host, port, err := splitHostPort(addr)
	if err != nil {
		return addr, err
	}
	return net.JoinHostPort(host, strconv.Itoa(int(p.port(port)))), nil
}

// PortFree reports whether both a TCP listener and a UDP socket can bind
// host:port now: an inbound port of an http3 Service is served on both
// (HTTP/3 over QUIC on UDP, the HTTP/2 fallback on TCP).
func PortFree(host string, port uint32) bool {
	addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	_ = l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	_ = u.Close()
	return true
}

// dualAttempts bounds PickPort's search for a port free on both TCP and
// UDP.
const dualAttempts = 20

// PickPort returns a port the OS chose as free on host, for TCP and UDP
// alike (see PortFree). Nothing holds it afterwards, so another process
// could take it first; the local mesh binds it within a second or two,
// which makes that unlikely on a workstation.
func PickPort(host string) (uint32, error) {
	for range dualAttempts {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, err
		}
		port := uint32(l.Addr().(*net.TCPAddr).Port)
		_ = l.Close()
		if PortFree(host, port) {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no port free for both TCP and UDP on %s after %d tries", host, dualAttempts)
}

func splitHostPort(addr string) (string, uint32, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("%q: port must be 1..65535", addr)
	}
	return host, uint32(port), nil
}
