package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// bigBodySize is the size of the large bodies of issue 2, acceptance 3.
const bigBodySize = 10 << 20

// TestHTTP1 drives an HTTP/1.1 backend with HTTP/1.1 clients (net/http, raw
// sockets and curl), directly and through meshd with an HTTP/1.1 upstream.
func TestHTTP1(t *testing.T) {
	testutil.CheckGoroutines(t)
	big := testutil.BigBody(bigBodySize)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			backend := testutil.StartEchoBackend(t)
			addr, sc := front(t, m, backend.Addr, testutil.UpstreamHTTP1)
			base := "http://" + addr
			t.Run("net/http", func(t *testing.T) { testHTTP1NetHTTP(t, base, backend, sc, big) })
			t.Run("invalid header", func(t *testing.T) { testHTTP1InvalidHeader(t, addr) })
			t.Run("curl", func(t *testing.T) { testHTTP1Curl(t, base, big) })
		})
	}
}

func testHTTP1NetHTTP(t *testing.T, base string, backend *testutil.EchoBackend, sc *testutil.Sidecar, big []byte) {
	client := http1Client()
	defer client.CloseIdleConnections()

	// do sends one request and returns the response with its body read,
	// and whether the connection was reused.
	do := func(t *testing.T, req *http.Request) (*http.Response, []byte, bool) {
		t.Helper()
		var reused bool
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
		}))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", req.Method, req.URL, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
		}
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 || resp.ProtoMinor != 1 {
			t.Fatalf("%s %s: %s %d, want HTTP/1.1 200", req.Method, req.URL, resp.Proto, resp.StatusCode)
		}
		return resp, body, reused
	}
	newReq := func(t *testing.T, method, path string, body io.Reader) *http.Request {
		t.Helper()
		req, err := http.NewRequest(method, base+path, body)
		if err != nil {
			t.Fatal(err)
		}
		return req
	}

	t.Run("keep-alive", func(t *testing.T) {
		client.CloseIdleConnections()
		cxBefore := downstreamCx(t, sc)
		backendBefore := backend.Conns()
		const n = 5
		for i := range n {
			_, body, reused := do(t, newReq(t, http.MethodPost, "/echo", strings.NewReader(fmt.Sprint("request ", i))))
			if want := fmt.Sprint("request ", i); string(body) != want {
				t.Fatalf("request %d: body %q, want %q", i, body, want)
			}
			if reused != (i > 0) {
				t.Fatalf("request %d: connection reused = %v, want %v", i, reused, i > 0)
			}
		}
		if sc != nil {
			if got := downstreamCx(t, sc) - cxBefore; got != 1 {
				t.Errorf("http.%s.downstream_cx_total grew by %d over %d requests, want 1", testutil.DefaultListenerName, got, n)
			}
		} else if got := backend.Conns() - backendBefore; got != 1 {
			t.Errorf("backend accepted %d connections for %d requests, want 1", got, n)
		}
	})

	t.Run("chunked both ways", func(t *testing.T) {
		payload := big[:300<<10]
		// io.MultiReader hides the length, so net/http sends the body chunked.
		resp, body, _ := do(t, newReq(t, http.MethodPost, "/echo", io.MultiReader(bytes.NewReader(payload))))
		if !bytes.Equal(body, payload) {
			t.Fatalf("echoed %d bytes, want the %d sent", len(body), len(payload))
		}
		if got := resp.Header.Get(testutil.HeaderEchoTransferEncoding); got != "chunked" {
			t.Errorf("backend saw Transfer-Encoding %q, want chunked", got)
		}
		if resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
			t.Errorf("response Content-Length %d, Transfer-Encoding %q; want a chunked response", resp.ContentLength, resp.TransferEncoding)
		}
	})

	t.Run("10MiB upload", func(t *testing.T) {
		resp, body, _ := do(t, newReq(t, http.MethodPost, "/echo", bytes.NewReader(big)))
		if testutil.SHA256Hex(body) != testutil.SHA256Hex(big) {
			t.Fatalf("echoed %d bytes, checksum differs from the %d sent", len(body), len(big))
		}
		if got := resp.Header.Get(testutil.HeaderEchoContentLength); got != fmt.Sprint(bigBodySize) {
			t.Errorf("backend saw Content-Length %s, want %d", got, bigBodySize)
		}
	})

	t.Run("10MiB download", func(t *testing.T) {
		resp, body, _ := do(t, newReq(t, http.MethodGet, fmt.Sprintf("/big?size=%d", bigBodySize), nil))
		if sum := testutil.SHA256Hex(body); len(body) != bigBodySize || sum != resp.Header.Get(testutil.HeaderBodySHA256) || sum != testutil.SHA256Hex(big) {
			t.Fatalf("got %d bytes with checksum %s, want %d bytes with %s", len(body), sum, bigBodySize, resp.Header.Get(testutil.HeaderBodySHA256))
		}
		if resp.ContentLength != bigBodySize {
			t.Errorf("Content-Length %d, want %d", resp.ContentLength, bigBodySize)
		}
	})

	t.Run("Expect 100-continue", func(t *testing.T) {
		tr := client.Transport.(*http.Transport)
		tr.ExpectContinueTimeout = requestTimeout // send the body only after 100 Continue
		defer func() { tr.ExpectContinueTimeout = 0 }()
		payload := big[:64<<10]
		req := newReq(t, http.MethodPost, "/echo", bytes.NewReader(payload))
		req.Header.Set("Expect", "100-continue")
		var got100 bool
		req = req.WithContext(httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			Got100Continue: func() { got100 = true },
		}))
		_, body, _ := do(t, req)
		if !got100 {
			t.Error("no 100 Continue before the final response")
		}
		if !bytes.Equal(body, payload) {
			t.Errorf("echoed %d bytes, want the %d sent", len(body), len(payload))
		}
	})

	t.Run("HEAD", func(t *testing.T) {
		resp, body, _ := do(t, newReq(t, http.MethodHead, "/big?size=12345", nil))
		if resp.ContentLength != 12345 || len(body) != 0 {
			t.Fatalf("HEAD: Content-Length %d and %d body bytes, want 12345 and 0", resp.ContentLength, len(body))
		}
		// A HEAD response that carried a body would corrupt the next
		// response on the kept-alive connection.
		_, body, reused := do(t, newReq(t, http.MethodGet, "/big?size=10", nil))
		if !reused || !bytes.Equal(body, big[:10]) {
			t.Fatalf("GET after HEAD: reused %v, body %q; want the same connection and %q", reused, body, big[:10])
		}
	})
}

// downstreamCx returns http.<prefix>.downstream_cx_total, or 0 in direct
// mode.
func downstreamCx(t *testing.T, sc *testutil.Sidecar) int64 {
	t.Helper()
	if sc == nil {
		return 0
	}
	name := "http." + testutil.DefaultListenerName + ".downstream_cx_total"
	v, ok := sc.Stats(t)[name]
	if !ok {
		t.Fatalf("/stats has no %s", name)
	}
	return v
}

// testHTTP1InvalidHeader sends malformed requests on raw sockets: each must
// get 400, and the server must go on serving new connections.
func testHTTP1InvalidHeader(t *testing.T, addr string) {
	tests := []struct {
		name    string
		request string
	}{
		{"space in header name", "GET /echo HTTP/1.1\r\nHost: e2e\r\nBad Name: v\r\n\r\n"},
		{"bare CR in header value", "GET /echo HTTP/1.1\r\nHost: e2e\r\nX-Bad: a\rb\r\n\r\n"},
		{"NUL in header value", "GET /echo HTTP/1.1\r\nHost: e2e\r\nX-Bad: a\x00b\r\n\r\n"},
		{"colon missing", "GET /echo HTTP/1.1\r\nHost: e2e\r\nNoColonHere\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code := rawRequest(t, addr, tt.request); code != http.StatusBadRequest {
				t.Errorf("status %d, want 400", code)
			}
			if code := rawRequest(t, addr, "GET /status/200 HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n"); code != http.StatusOK {
				t.Errorf("valid request after the bad one: status %d, want 200", code)
			}
		})
	}
}

// rawRequest writes request on a new connection and returns the status of
// the response.
func rawRequest(t *testing.T, addr, request string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatalf("writing %q: %v", request, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response to %q: %v", request, err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// testHTTP1Curl repeats the HTTP/1.1 checks with curl, a client with its own
// framing and Expect handling.
func testHTTP1Curl(t *testing.T, base string, big []byte) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not found in PATH: skipping the curl half of TestHTTP1 (.ci/run installs curl)")
	}
	dir := t.TempDir()
	bigFile := filepath.Join(dir, "big")
	if err := os.WriteFile(bigFile, big, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, args ...string) (stdout, stderr string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, curl, append([]string{"--http1.1", "--silent", "--show-error", "--max-time", "20"}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		cmd.WaitDelay = time.Second
		if err := cmd.Run(); err != nil {
			t.Fatalf("curl %q: %v\n%s", args, err, errOut.String())
		}
		return out.String(), errOut.String()
	}
	fileSum := func(t *testing.T, path string) string {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		return hex.EncodeToString(sum[:])
	}
	bigSum := testutil.SHA256Hex(big)

	t.Run("keep-alive", func(t *testing.T) {
		out, _ := run(t, "-o", os.DevNull, "-o", os.DevNull, "-w", "%{http_code} %{num_connects}\n",
			base+"/status/200", base+"/status/200")
		if out != "200 1\n200 0\n" {
			t.Errorf("two requests in one curl: %q, want %q (the second on the first's connection)", out, "200 1\n200 0\n")
		}
	})
	t.Run("chunked both ways", func(t *testing.T) {
		outFile := filepath.Join(dir, "chunked")
		headers, _ := run(t, "-D", "-", "-o", outFile, "-H", "Transfer-Encoding: chunked", "--data-binary", "@"+bigFile, base+"/echo")
		if got := fileSum(t, outFile); got != bigSum {
			t.Errorf("echoed body checksum %s, want %s", got, bigSum)
		}
		if !regexp.MustCompile(`(?im)^x-echo-transfer-encoding: chunked\r?$`).MatchString(headers) {
			t.Errorf("backend did not see a chunked request; response headers:\n%s", headers)
		}
		if !regexp.MustCompile(`(?im)^transfer-encoding: chunked\r?$`).MatchString(headers) {
			t.Errorf("response not chunked; headers:\n%s", headers)
		}
	})
	t.Run("10MiB both ways", func(t *testing.T) {
		up := filepath.Join(dir, "up")
		out, _ := run(t, "-o", up, "-w", "%{http_code}", "--data-binary", "@"+bigFile, base+"/echo")
		if out != "200" || fileSum(t, up) != bigSum {
			t.Errorf("upload echo: status %s, checksum %s; want 200, %s", out, fileSum(t, up), bigSum)
		}
		down := filepath.Join(dir, "down")
		out, _ = run(t, "-o", down, "-w", "%{http_code}", fmt.Sprintf("%s/big?size=%d", base, bigBodySize))
		if out != "200" || fileSum(t, down) != bigSum {
			t.Errorf("download: status %s, checksum %s; want 200, %s", out, fileSum(t, down), bigSum)
		}
	})
	t.Run("Expect 100-continue", func(t *testing.T) {
		outFile := filepath.Join(dir, "expect")
		out, verbose := run(t, "-v", "-o", outFile, "-w", "%{http_code}", "-H", "Expect: 100-continue",
			"--expect100-timeout", "15", "--data-binary", "@"+bigFile, base+"/echo")
		if out != "200" || fileSum(t, outFile) != bigSum {
			t.Errorf("status %s, checksum %s; want 200, %s", out, fileSum(t, outFile), bigSum)
		}
		if !strings.Contains(verbose, "< HTTP/1.1 100 Continue") {
			t.Errorf("curl saw no 100 Continue:\n%s", verbose)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		headers, _ := run(t, "-I", base+"/big?size=1000")
		if !regexp.MustCompile(`(?im)^HTTP/1.1 200`).MatchString(headers) || !regexp.MustCompile(`(?im)^content-length: 1000\r?$`).MatchString(headers) {
			t.Errorf("HEAD headers:\n%s\nwant 200 with Content-Length: 1000", headers)
		}
	})
}
