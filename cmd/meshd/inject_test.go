//go:build !meshd_sidecar

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"meshd.dev/meshd/kube/inject"
)

// TestInjectCommand runs `meshd inject` on the inject package's test
// inputs and compares with what the package produces for the same flags.
func TestInjectCommand(t *testing.T) {
	in := filepath.Join("..", "..", "kube", "inject", "testdata", "deployment.yaml")
	data, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	want, err := inject.Config{Image: "meshd:v9", XDSAddress: "cp.meshd-system.svc:15010", ExcludeOutboundPorts: []int32{53, 5432}}.Manifest(data)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run([]string{"inject", "-f", in, "--image", "meshd:v9", "--xds", "cp.meshd-system.svc:15010", "--exclude-outbound-ports", "53, 5432"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("meshd inject printed\n%s\nwant\n%s", out.Bytes(), want)
	}

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no file", []string{"inject"}, 2, "usage: meshd inject -f"},
		{"bad port list", []string{"inject", "-f", in, "--exclude-inbound-ports", "80,x"}, 2, "--exclude-inbound-ports"},
		{"bad xds", []string{"inject", "-f", in, "--xds", "nohost"}, 2, "xds address"},
		{"missing file", []string{"inject", "-f", "none.yaml"}, 1, "none.yaml"},
		{"injector without TLS", []string{"injector"}, 2, "--tls-cert and --tls-key are required"},
		{"control plane config and kube", []string{"control-plane", "--config", in, "--kube"}, 2, "exclusive"},
		{"control plane bad kubeconfig", []string{"control-plane", "--kube", "--kubeconfig", "none.kubeconfig"}, 1, "--kube: --kubeconfig none.kubeconfig: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(tt.args, &out, &errOut); code != tt.code || !strings.Contains(errOut.String(), tt.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errOut.String(), tt.code, tt.want)
			}
		})
	}
}
