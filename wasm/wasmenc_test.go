package wasm

// A tiny WebAssembly binary encoder for hand-written test modules (wazero
// has no text-format compiler). It knows just the sections the tests use.

func leb(n uint32) []byte {
	var b []byte
	for {
		c := byte(n & 0x7f)
		n >>= 7
		if n != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

func vec(items ...[]byte) []byte {
	b := leb(uint32(len(items)))
	for _, it := range items {
		b = append(b, it...)
	}
	return b
}

func wname(s string) []byte { return append(leb(uint32(len(s))), s...) }

func section(id byte, payload []byte) []byte {
	return append(append([]byte{id}, leb(uint32(len(payload)))...), payload...)
}

const (
	tI32 = 0x7f
)

// functype encodes (params) -> (results) of i32s.
func functype(params, results int) []byte {
	p := make([][]byte, params)
	r := make([][]byte, results)
	for k := range p {
		p[k] = []byte{tI32}
	}
	for k := range r {
		r[k] = []byte{tI32}
	}
	return append(append([]byte{0x60}, vec(p...)...), vec(r...)...)
}

type wimport struct {
	mod, name string
	typ       uint32
}

type wfunc struct {
	export string
	typ    uint32
	code   []byte // instructions without the final end
}

// module encodes a module with the given types, function imports, one
// exported memory of one page and the functions (exported by name).
func module(types [][]byte, imports []wimport, funcs []wfunc) []byte {
	b := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	b = append(b, section(1, vec(types...))...)
	if len(imports) > 0 {
		var im [][]byte
		for _, i := range imports {
			e := append(append(wname(i.mod), wname(i.name)...), 0x00)
			im = append(im, append(e, leb(i.typ)...))
		}
		b = append(b, section(2, vec(im...))...)
	}
	var fs, ex, code [][]byte
	for k, f := range funcs {
		fs = append(fs, leb(f.typ))
		ex = append(ex, append(append(wname(f.export), 0x00), leb(uint32(len(imports)+k))...))
		body := append(append([]byte{0x00}, f.code...), 0x0b) // no locals
		code = append(code, append(leb(uint32(len(body))), body...))
	}
	b = append(b, section(3, vec(fs...))...)
	b = append(b, section(5, vec([]byte{0x00, 0x01}))...)
	ex = append(ex, append(wname("memory"), 0x02, 0x00))
	b = append(b, section(7, vec(ex...))...)
	return append(b, section(10, vec(code...))...)
}

// Instructions.
var (
	opUnreachable = []byte{0x00}
	opLoopForever = []byte{0x03, 0x40, 0x0c, 0x00, 0x0b, 0x00} // loop br 0 end unreachable
)

func i32const(v uint32) []byte { return append([]byte{0x41}, leb(v)...) } // v < 64 stays positive

// minimalGuest is a proxy-wasm module whose proxy_on_request_headers runs
// onHeaders; everything else succeeds. imports are added verbatim.
func minimalGuest(onHeaders []byte, imports ...wimport) []byte {
	types := [][]byte{functype(1, 1), functype(2, 0), functype(0, 0), functype(2, 1), functype(3, 1)}
	return module(types, imports, []wfunc{
		{"proxy_on_memory_allocate", 0, i32const(16)},
		{"proxy_on_context_create", 1, nil},
		{"proxy_abi_version_0_2_1", 2, nil},
		{"proxy_on_vm_start", 3, i32const(1)},
		{"proxy_on_configure", 3, i32const(1)},
		{"proxy_on_request_headers", 4, onHeaders},
	})
}
