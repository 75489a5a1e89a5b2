package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"meshd.dev/meshd/xds/translate"
)

// ModulePathPrefix is where the admin server serves WASM modules:
// ModulePathPrefix + "<name>-<sha256>.wasm".
const ModulePathPrefix = "/wasm/"

// Module is a proxy-wasm module the control plane serves to sidecars on
// its admin HTTP server. Its path carries the module's digest, so a
// sidecar never fetches bytes under a digest they do not have, and a
// changed module is a new URL. It is immutable and safe for concurrent
// use.
type Module struct {
	// Name is the module's short name ("ratelimit").
	Name string
	// SHA256 is the lower-case hex SHA-256 of Data.
	SHA256 string
	// Path is the URL path the module is served at.
	Path string
	data []byte
	mod  time.Time
}

// NewModule returns the module name with contents data.
func NewModule(name string, data []byte) *Module {
	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	return &Module{Name: name, SHA256: hexSum, Path: ModulePathPrefix + name + "-" + hexSum + ".wasm", data: data, mod: time.Now()}
}

// Data returns the module's bytes; callers must not modify them.
func (m *Module) Data() []byte { return m.data }

// Ref returns the reference translation emits for m served by the admin
// server at addr (host:port as bound, or as reachable from sidecars). An
// unspecified IP (0.0.0.0, ::) becomes the loopback address of its
// family: sidecars started by `meshd up` or in file mode run on the
// control plane's host.
func (m *Module) Ref(addr string) (*translate.WasmModule, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("module %s: admin address %q: %w", m.Name, addr, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.Is6() && !ip.Is4In6() {
			host = "::1"
		}
	}
	return &translate.WasmModule{URL: "http://" + net.JoinHostPort(host, port) + m.Path, SHA256: m.SHA256}, nil
}

// ServeHTTP answers GET and HEAD of m.Path with the module
// (application/wasm, an ETag of its digest); other paths get 404.
func (m *Module) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != m.Path {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/wasm")
	w.Header().Set("ETag", `"`+m.SHA256+`"`)
	http.ServeContent(w, r, "", m.mod, bytes.NewReader(m.data))
}

// MaxModuleSize bounds a module read by ReadModule (the sidecar's limit).
const MaxModuleSize = 64 << 20

// wasmMagic starts every WebAssembly binary module (magic and version 1).
var wasmMagic = []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}

// ReadModule reads the module name from the file path and checks that it
// is a WebAssembly binary of at most MaxModuleSize bytes.
func ReadModule(name, path string) (*Module, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s module: %w", name, err)
	}
	switch {
	case len(data) > MaxModuleSize:
		return nil, fmt.Errorf("%s module %s: %d bytes, more than the %d a sidecar accepts", name, path, len(data), MaxModuleSize)
	case !bytes.HasPrefix(data, wasmMagic):
		return nil, fmt.Errorf("%s module %s: not a WebAssembly binary module (no \\0asm version 1 header)", name, path)
	}
	return NewModule(name, data), nil
}
