package h2

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// TestH2Spec runs the h2spec conformance suite against a server using this
// codec. It needs the h2spec binary: set H2SPEC to its path (build it with
// `go run github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible`).
func TestH2Spec(t *testing.T) {
	bin := os.Getenv("H2SPEC")
	if bin == "" {
		t.Skip("H2SPEC is not set")
	}
	checkLeaks(t)
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		buf := make([]byte, 4096)
		for {
			if _, err := s.Read(buf); err != nil {
				break
			}
		}
		hdr := header.Make(1)
		hdr.Add("content-type", "text/plain")
		if err := s.WriteHeader(&stream.Response{Status: 200, Header: hdr, ContentLength: -1}, false); err != nil {
			return
		}
		_, _ = s.Write([]byte("hello from meshd\n"))
		_ = s.CloseWrite()
	})
	ts := startServer(t, &ServerConfig{MaxConcurrentStreams: 100}, h)
	_, port, _ := strings.Cut(ts.addr(), ":")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, _ := strconv.Atoi(port)
	out, err := exec.CommandContext(ctx, bin, "-h", "127.0.0.1", "-p", strconv.Itoa(p), "-o", "2").CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	summary := lines[len(lines)-1]
	t.Log(summary)
	if err != nil {
		t.Errorf("h2spec failed: %v\n%s", err, out)
	}
}
