package capture

import (
	"strings"
	"testing"
)

func TestRules(t *testing.T) {
	c := Config{InboundPort: 15006, OutboundPort: 15001, ProxyUID: 1337, ExcludeInboundPorts: []uint16{8081, 15020, 8081}, ExcludeOutboundPorts: []uint16{53}}
	ipt := c.IPTablesRules(true)
	for _, want := range []string{
		"-A PREROUTING -p tcp -j MESHD_INBOUND\n",
		"-A MESHD_INBOUND -p tcp --dport 8081 -j RETURN\n-A MESHD_INBOUND -p tcp --dport 15020 -j RETURN\n-A MESHD_INBOUND -p tcp -j REDIRECT --to-ports 15006\n",
		"-A MESHD_OUTPUT -m owner --uid-owner 1337 -j RETURN\n-A MESHD_OUTPUT -o lo -j RETURN\n-A MESHD_OUTPUT -p tcp --dport 53 -j RETURN\n-A MESHD_OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n",
	} {
		if !strings.Contains(ipt, want) {
			t.Errorf("iptables rules lack %q:\n%s", want, ipt)
		}
	}
	if strings.Contains(c.IPTablesRules(false), "PREROUTING") {
		t.Error("rules without jumps still jump from PREROUTING")
	}
	nft := c.NFTRules()
	for _, want := range []string{"delete table inet meshd\n", "tcp dport { 8081, 15020 } return\n\t\tmeta l4proto tcp redirect to :15006\n", "meta skuid 1337 return\n\t\toifname \"lo\" return\n\t\ttcp dport { 53 } return\n\t\tmeta l4proto tcp redirect to :15001\n"} {
		if !strings.Contains(nft, want) {
			t.Errorf("nft rules lack %q:\n%s", want, nft)
		}
	}
	for _, bad := range []struct {
		c    Config
		want string
	}{
		{Config{OutboundPort: 1, ProxyUID: 1}, "inbound port"},
		{Config{InboundPort: 1, ProxyUID: 1}, "outbound port"},
		{Config{InboundPort: 1, OutboundPort: 1, ProxyUID: 1}, "must differ"},
		{Config{InboundPort: 1, OutboundPort: 2}, "proxy uid"},
	} {
		if err := bad.c.Validate(); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%+v: err = %v, want %q", bad.c, err, bad.want)
		}
	}
}
