package inject

import (
	"bytes"
	"os"
	"path/filepath"
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
