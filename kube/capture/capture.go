// Package capture installs the traffic-capture rules of a pod's network
// namespace (`meshd capture`, run by the injected init container): inbound
// TCP is redirected to the sidecar's inbound port and outbound TCP to its
// outbound port, except the sidecar's own traffic (its UID), loopback
// traffic and the excluded ports. The sidecar recovers each connection's
// original destination (envoy.filters.listener.original_dst) and routes by
// it.
//
// Rules go in with iptables-restore when an iptables binary is present
// (whichever backend it uses, legacy or nf_tables), else with nft; both
// load atomically, so a half-installed rule set never redirects traffic.
package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// Backends.
const (
	BackendIPTables = "iptables"
	BackendNFT      = "nft"
)

// Names of what the rules create.
const (
	InboundChain  = "MESHD_INBOUND"
	OutboundChain = "MESHD_OUTPUT"
	NFTTable      = "meshd"
)

// Defaults of Config, which `meshd inject` also uses for the sidecar it
// injects (inject.DefaultInboundPort and friends are these).
const (
	DefaultInboundPort  = 15006
	DefaultOutboundPort = 15001
	// DefaultProxyUID is the sidecar's UID; capture exempts its traffic
	// so the sidecar's own connections are not captured again.
	DefaultProxyUID = 1337
)

// Config is one pod's capture.
type Config struct {
	// InboundPort receives redirected inbound TCP; OutboundPort
	// redirected outbound TCP.
	InboundPort, OutboundPort uint16
	// ProxyUID is the sidecar's UID, whose connections are never
	// redirected (they would loop back into the sidecar).
	ProxyUID uint32
	// ExcludeInboundPorts are destination ports of inbound connections
	// left alone (kubelet probe ports, for instance).
	ExcludeInboundPorts []uint16
	// ExcludeOutboundPorts are destination ports of outbound connections
	// left alone (DNS over TCP, a database outside the mesh).
	ExcludeOutboundPorts []uint16
}

// Validate reports the first problem with c, naming the field.
func (c Config) Validate() error {
	switch {
	case c.InboundPort == 0:
		return errors.New("inbound port: required")
	case c.OutboundPort == 0:
		return errors.New("outbound port: required")
	case c.InboundPort == c.OutboundPort:
		return fmt.Errorf("inbound and outbound ports must differ (both %d)", c.InboundPort)
	case c.ProxyUID == 0:
		return errors.New("proxy uid: required and not root (root's traffic cannot be told from the application's)")
	}
	return nil
}

func ports(p []uint16) []string {
	p = slices.Clone(p)
	slices.Sort(p)
	p = slices.Compact(p)
	out := make([]string, len(p))
	for i, v := range p {
		out[i] = strconv.Itoa(int(v))
	}
	return out
}

// IPTablesRules returns the nat table rules for iptables-restore
// --noflush (IPv4 and IPv6 share the text). Loading them again replaces
// the meshd chains' contents; the jumps from PREROUTING and OUTPUT are
// added once (Apply checks for them).
func (c Config) IPTablesRules(withJumps bool) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("*nat")
	w(":%s - [0:0]", InboundChain)
	w(":%s - [0:0]", OutboundChain)
	if withJumps {
		w("-A PREROUTING -p tcp -j %s", InboundChain)
		w("-A OUTPUT -p tcp -j %s", OutboundChain)
	}
	for _, p := range ports(c.ExcludeInboundPorts) {
		w("-A %s -p tcp --dport %s -j RETURN", InboundChain, p)
	}
	w("-A %s -p tcp -j REDIRECT --to-ports %d", InboundChain, c.InboundPort)
	w("-A %s -m owner --uid-owner %d -j RETURN", OutboundChain, c.ProxyUID)
	w("-A %s -o lo -j RETURN", OutboundChain)
	for _, p := range ports(c.ExcludeOutboundPorts) {
		w("-A %s -p tcp --dport %s -j RETURN", OutboundChain, p)
	}
	w("-A %s -p tcp -j REDIRECT --to-ports %d", OutboundChain, c.OutboundPort)
	w("COMMIT")
	return b.String()
}

// NFTRules returns an nft script replacing the inet table NFTTable (IPv4
// and IPv6) with the capture rules.
func (c Config) NFTRules() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	// Creating then deleting makes the script idempotent.
	w("table inet %s {}", NFTTable)
	w("delete table inet %s", NFTTable)
	w("table inet %s {", NFTTable)
	w("\tchain prerouting {")
	w("\t\ttype nat hook prerouting priority dstnat; policy accept;")
	if p := ports(c.ExcludeInboundPorts); len(p) > 0 {
		w("\t\ttcp dport { %s } return", strings.Join(p, ", "))
	}
	w("\t\tmeta l4proto tcp redirect to :%d", c.InboundPort)
	w("\t}")
	w("\tchain output {")
	w("\t\ttype nat hook output priority -100; policy accept;")
	w("\t\tmeta skuid %d return", c.ProxyUID)
	w("\t\toifname \"lo\" return")
	if p := ports(c.ExcludeOutboundPorts); len(p) > 0 {
		w("\t\ttcp dport { %s } return", strings.Join(p, ", "))
	}
	w("\t\tmeta l4proto tcp redirect to :%d", c.OutboundPort)
	w("\t}")
	w("}")
	return b.String()
}

// Detect returns the backend Apply uses: iptables when iptables-restore is
// in PATH, else nft, else an error.
func Detect() (string, error) {
	if _, err := exec.LookPath("iptables-restore"); err == nil {
		return BackendIPTables, nil
	}
	if _, err := exec.LookPath("nft"); err == nil {
		return BackendNFT, nil
	}
	return "", errors.New("capture: neither iptables-restore nor nft is in PATH")
}

// Apply installs c's rules in the current network namespace with backend
// (Detect's when empty). It needs CAP_NET_ADMIN. Errors carry the tool's
// output.
func Apply(ctx context.Context, c Config, backend string) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("capture: %w", err)
	}
	if backend == "" {
		var err error
		if backend, err = Detect(); err != nil {
			return err
		}
	}
	switch backend {
	case BackendNFT:
		return run(ctx, c.NFTRules(), "nft", "-f", "-")
	case BackendIPTables:
		// The jumps go in once: a chain that already exists had them.
		jumps := exec.CommandContext(ctx, "iptables", "-t", "nat", "-n", "-L", OutboundChain).Run() != nil
		if err := run(ctx, c.IPTablesRules(jumps), "iptables-restore", "--noflush"); err != nil {
			return err
		}
		// IPv6 when the host has it; a missing ip6tables is not an error.
		if _, err := exec.LookPath("ip6tables-restore"); err == nil {
			jumps6 := exec.CommandContext(ctx, "ip6tables", "-t", "nat", "-n", "-L", OutboundChain).Run() != nil
			if err := run(ctx, c.IPTablesRules(jumps6), "ip6tables-restore", "--noflush"); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("capture: backend %q is not %q or %q", backend, BackendIPTables, BackendNFT)
}

func run(ctx context.Context, input, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(input)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("capture: %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
