package upstream

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"testing"
)

// TestResolveDNS: each STRICT_DNS endpoint contributes what its name
// resolves to; a name whose lookup fails keeps its previous addresses
// (none the first time) while the other names' results are taken, as
// Envoy keeps a failed target's hosts.
func TestResolveDNS(t *testing.T) {
	eps := []Endpoint{{Host: "a.test", Port: 80, Weight: 1}, {Host: "b.test", Port: 8080, Weight: 2}}
	prev := [][]resolved{{{"10.0.0.1:80", 1}}, {{"10.0.1.1:8080", 2}, {"10.0.1.2:8080", 2}}}
	tests := []struct {
		name    string
		answers map[string][]string // nil entry: the lookup fails
		last    [][]resolved
		want    []string
	}{
		{name: "both resolve", answers: map[string][]string{"a.test": {"10.0.0.9"}, "b.test": {"10.0.1.9", "fd00::1"}}, last: prev,
			want: []string{"10.0.0.9:80", "10.0.1.9:8080", "[fd00::1]:8080"}},
		{name: "one name fails", answers: map[string][]string{"a.test": {"10.0.0.9"}, "b.test": nil}, last: prev,
			want: []string{"10.0.0.9:80", "10.0.1.1:8080", "10.0.1.2:8080"}},
		{name: "every name fails", answers: map[string][]string{"a.test": nil, "b.test": nil}, last: prev,
			want: []string{"10.0.0.1:80", "10.0.1.1:8080", "10.0.1.2:8080"}},
		{name: "first lookup fails", answers: map[string][]string{"a.test": nil, "b.test": {"10.0.1.9"}},
			want: []string{"10.0.1.9:8080"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(_ context.Context, host string) ([]net.IPAddr, error) {
				ans := tt.answers[host]
				if ans == nil {
					return nil, errors.New("no such host")
				}
				var out []net.IPAddr
				for _, a := range ans {
					out = append(out, net.IPAddr{IP: net.ParseIP(a)})
				}
				return out, nil
			}
			all, per := resolveDNS(context.Background(), eps, tt.last, lookup, slog.New(slog.DiscardHandler))
			var got []string
			weightByPort := map[string]uint32{"80": 1, "8080": 2}
			for _, r := range all {
				got = append(got, r.addr)
				if _, port, _ := net.SplitHostPort(r.addr); r.weight != weightByPort[port] {
					t.Errorf("%s has weight %d, want its endpoint's %d", r.addr, r.weight, weightByPort[port])
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("addresses %v, want %v", got, tt.want)
			}
			// The next round starts from this one's per-endpoint results.
			var flat []resolved
			for _, p := range per {
				flat = append(flat, p...)
			}
			if !slices.Equal(flat, all) || len(per) != len(eps) {
				t.Errorf("per-endpoint results %v do not add up to %v", per, all)
			}
		})
	}
}
