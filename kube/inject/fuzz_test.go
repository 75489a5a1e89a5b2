package inject

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzManifest feeds arbitrary YAML or JSON streams to Manifest, the
// parser behind `meshd inject -f` (annotations included): it must not
// panic, an error must say something, and, as Manifest promises, its
// output is a fixed point: injecting it again returns it unchanged.
// Seeds are the golden-test inputs in testdata.
func FuzzManifest(f *testing.F) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range inputs {
		if strings.HasSuffix(p, ".golden.yaml") {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  annotations:\n    meshd.dev/exclude-inbound-ports: \"8080, 9090\"\n    meshd.dev/exclude-outbound-ports: \"0\"\nspec: {containers: [{name: a}]}\n"))
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","annotations":{"meshd.dev/rewrite-probes":"false"}},"spec":{"containers":[{"name":"a"}]}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := testConfig.Manifest(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		again, err := testConfig.Manifest(out)
		if err != nil {
			t.Fatalf("re-injecting the output: %v\noutput:\n%s", err, out)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("output is not a fixed point:\nfirst:\n%s\nsecond:\n%s", out, again)
		}
	})
}

// FuzzParsePorts checks the parser of the exclude-inbound-ports and
// exclude-outbound-ports annotations: it accepts a list exactly when
// every non-blank comma-separated field is a port in 1..65535, returns
// one port per such field, and joinPorts of the result parses back to
// its sorted set.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"", "8080", "8080, 9090,", "443,80,443", " 1 ,65535", "0", "65536", "-1", "+80", "80 80", "0x50", "١٢"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ports, err := parsePorts(s)
		fields := 0
		valid := true
		for _, fl := range strings.Split(s, ",") {
			fl = strings.TrimSpace(fl)
			if fl == "" {
				continue
			}
			fields++
			n, err := strconv.Atoi(fl)
			valid = valid && err == nil && n >= 1 && n <= 65535 && fl[0] != '+' && fl[0] != '-'
		}
		if (err == nil) != valid {
			t.Fatalf("parsePorts(%q) = %v, %v; want valid=%v", s, ports, err, valid)
		}
		if err != nil {
			if !strings.Contains(err.Error(), "1..65535") {
				t.Fatalf("parsePorts(%q) error %q does not give the range", s, err)
			}
			return
		}
		if len(ports) != fields {
			t.Fatalf("parsePorts(%q) = %v, want %d ports", s, ports, fields)
		}
		set := slices.Compact(slices.Sorted(slices.Values(ports)))
		again, err := parsePorts(joinPorts(ports))
		if err != nil || !slices.Equal(again, set) {
			t.Fatalf("round trip of %v: %v, %v", ports, again, err)
		}
	})
}
