package sidecar

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
)

// dumpJSON is s.ConfigDump() as protojson with proto field names, the
// admin server's rendering before any filter.
func dumpJSON(t *testing.T, s *Sidecar) string {
	t.Helper()
	cd, err := s.ConfigDump()
	if err != nil {
		t.Fatal(err)
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(cd)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestConfigDumpStaticResources: a bootstrap-only snapshot dumps its static
// listeners and clusters in a ListenersConfigDump and a ClustersConfigDump
// after the bootstrap, as Envoy does, so ?resource=static_clusters finds
// them without xDS.
func TestConfigDumpStaticResources(t *testing.T) {
	s := New(Options{})
	if cd, err := s.ConfigDump(); err != nil || len(cd.GetConfigs()) != 0 {
		t.Fatalf("before the first config: %v, %v; want no configs", cd, err)
	}
	s.snap.Swap(compile(t, bootstrap(0, "x")))
	cd, err := s.ConfigDump()
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, c := range cd.GetConfigs() {
		types = append(types, c.GetTypeUrl()[strings.LastIndex(c.GetTypeUrl(), ".")+1:])
	}
	if got, want := strings.Join(types, ","), "BootstrapConfigDump,ListenersConfigDump,ClustersConfigDump"; got != want {
		t.Errorf("configs = %s, want %s", got, want)
	}
	dump := dumpJSON(t, s)
	for _, want := range []string{`"static_listeners":[{"listener":{"@type":"type.googleapis.com/envoy.config.listener.v3.Listener"`, `"static_clusters":[{"cluster":{"@type":"type.googleapis.com/envoy.config.cluster.v3.Cluster"`} {
		if !strings.Contains(strings.ReplaceAll(dump, " ", ""), want) {
			t.Errorf("dump lacks %s:\n%s", want, dump)
		}
	}
}
