package probe

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary MESHD_APP_PROBES values (the injector writes
// them, the sidecar parses them) to Parse: no panic, every accepted
// probe validates and sits under PathPrefix, and the accepted set
// survives a JSON round trip, which is how the injector produced it.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		`{"/app-health/app/livez":{"httpGet":{"path":"/healthz","port":8080,"httpHeaders":[{"name":"Host","value":"x"}]},"timeoutSeconds":3}}`,
		`{"/app-health/app/readyz":{"tcpSocket":{"port":9000,"host":"127.0.0.1"}},"/app-health/app/startupz":{"grpc":{"port":50051,"service":""}}}`,
		`{"/app-health/a/livez":null}`,
		`{"/other":{"grpc":{"port":1}}}`,
		`{"/app-health/a/livez":{"grpc":{"port":1},"tcpSocket":{"port":2}}}`,
		`{"/app-health/a/livez":{"httpGet":{"port":70000}}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		probes, err := Parse(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), EnvAppProbes+": ") {
				t.Fatalf("error %q does not name %s", err, EnvAppProbes)
			}
			return
		}
		for path, p := range probes {
			if !strings.HasPrefix(path, PathPrefix) {
				t.Fatalf("accepted path %q", path)
			}
			if err := p.Validate(); err != nil {
				t.Fatalf("accepted invalid probe %q: %v", path, err)
			}
		}
		b, err := json.Marshal(probes)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Parse(string(b))
		if err != nil {
			t.Fatalf("re-parsing %s: %v", b, err)
		}
		if !reflect.DeepEqual(again, probes) {
			t.Fatalf("round trip of %s changed it", b)
		}
	})
}
