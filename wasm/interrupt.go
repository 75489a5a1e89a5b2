package wasm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// interruptExport is the exported mutable i32 global that instrumentLoops
// adds: 0 while the guest may run, 1 once the watchdog wants the running
// callback stopped.
const interruptExport = "meshd_interrupt"

// Section ids of the binary format (WebAssembly core spec 5.5.2).
const (
	secCustom   = 0
	secImport   = 2
	secMemory   = 5
	secGlobal   = 6
	secExport   = 7
	secCode     = 10
	secTag      = 13
	kindGlobal  = 0x03
	opLoop      = 0x03
	opGlobalGet = 0x23
	opGlobalSet = 0x24
)

// yieldEvery is how many loop iterations instrumented code runs between
// two exits to Go (see instrumentLoops).
const yieldEvery = 4096

// instrumentLoops returns a copy of the module bin with an interruption
// check at the head of every loop, the mechanism that bounds a callback in
// time (see doc.go, "Limits and robustness"). It appends two mutable i32
// globals: the interrupt flag, exported as interruptExport and initially 0,
// and a private countdown. At every loop head it inserts
//
//	global.get $interrupt  if  unreachable  end
//	global.get $countdown  i32.eqz
//	if    i32.const yieldEvery  global.set $countdown
//	      i32.const 0  memory.grow  drop
//	else  global.get $countdown  i32.const 1  i32.sub  global.set $countdown
//	end
//
// so each iteration of every loop tests the flag (a load and a not-taken
// branch in native code) and a guest that never leaves a loop traps within
// one iteration of the host setting the flag. Straight-line code ends by
// itself, and unbounded recursion ends in wazero's stack-overflow trap.
//
// The memory.grow(0) every yieldEvery iterations changes nothing but is
// compiled as an exit from native code to Go: the goroutine running the
// guest reaches a Go preemption point there. Without it a looping guest could
// never be preempted, a stop-the-world phase of the Go GC would wait for it
// forever, and with the world stopped the watchdog goroutine could not set
// the flag: the whole process would hang (wazero's own WithCloseOnContextDone
// exits to Go at every iteration for the same reason, which is what makes it
// slow). At a few ns per iteration this bounds the extra GC pause a looping
// guest causes to tens of microseconds.
//
// Function indices, types and existing globals are unchanged (the new
// globals come after every imported and defined one), so the instrumented
// module imports and exports what the original does, plus the flag. The
// module must have a memory, as every proxy-wasm module does.
//
// The code section is decoded instruction by instruction to find `loop`
// opcodes; an opcode the decoder does not know fails the instrumentation
// with an error naming it and its function rather than risk a wrong rewrite.
func instrumentLoops(bin []byte) ([]byte, error) {
	if len(bin) < 8 || string(bin[:4]) != "\x00asm" {
		return nil, errors.New("not a WebAssembly binary (bad magic)")
	}
	if binary.LittleEndian.Uint32(bin[4:8]) != 1 {
		return nil, fmt.Errorf("unsupported binary version %d", binary.LittleEndian.Uint32(bin[4:8]))
	}
	type section struct {
		id   byte
		body []byte
	}
	var secs []section
	r := reader{b: bin, off: 8}
	for r.off < len(r.b) {
		id := r.byte()
		size := r.u32()
		body := r.bytes(int(size))
		if r.err != nil {
			return nil, fmt.Errorf("section at offset %d: %w", r.off, r.err)
		}
		secs = append(secs, section{id, body})
	}
	var importedGlobals, definedGlobals uint32
	hasGlobal, hasExport, hasMemory := false, false, false
	for _, s := range secs {
		switch s.id {
		case secImport:
			n, mems, err := countImports(s.body)
			if err != nil {
				return nil, fmt.Errorf("import section: %w", err)
			}
			importedGlobals, hasMemory = n, hasMemory || mems > 0
		case secMemory:
			sr := reader{b: s.body}
			hasMemory = hasMemory || sr.u32() > 0
		case secGlobal:
			hasGlobal = true
			sr := reader{b: s.body}
			definedGlobals = sr.u32()
			if sr.err != nil {
				return nil, fmt.Errorf("global section: %w", sr.err)
			}
		case secExport:
			hasExport = true
			if err := checkExportName(s.body, interruptExport); err != nil {
				return nil, fmt.Errorf("export section: %w", err)
			}
		}
	}
	if !hasMemory {
		return nil, errors.New("module has no memory")
	}
	flag := importedGlobals + definedGlobals
	// Two globals: i32, mutable, init i32.const 0 end.
	newGlobal := []byte{0x7f, 0x01, 0x41, 0x00, 0x0b, 0x7f, 0x01, 0x41, 0x00, 0x0b}
	newExport := appendName(nil, interruptExport)
	newExport = append(newExport, kindGlobal)
	newExport = binary.AppendUvarint(newExport, uint64(flag))

	out := make([]byte, 0, len(bin)+len(bin)/16+64)
	out = append(out, bin[:8]...)
	emit := func(id byte, body []byte) {
		out = append(out, id)
		out = binary.AppendUvarint(out, uint64(len(body)))
		out = append(out, body...)
	}
	// order is the position of a non-custom section in the module layout;
	// the tag section (13) sits between memory (5) and global (6).
	order := func(id byte) int {
		if id == secTag {
			return 55
		}
		return int(id) * 10
	}
	for _, s := range secs {
		if s.id != secCustom {
			if !hasGlobal && order(s.id) > order(secGlobal) {
				emit(secGlobal, append(binary.AppendUvarint(nil, 2), newGlobal...))
				hasGlobal = true
			}
			if !hasExport && order(s.id) > order(secExport) {
				emit(secExport, append(binary.AppendUvarint(nil, 1), newExport...))
				hasExport = true
			}
		}
		switch s.id {
		case secGlobal:
			emit(secGlobal, appendVecEntry(s.body, 2, newGlobal))
		case secExport:
			emit(secExport, appendVecEntry(s.body, 1, newExport))
		case secCode:
			body, err := instrumentCode(s.body, flag)
			if err != nil {
				return nil, err
			}
			emit(secCode, body)
		default:
			emit(s.id, s.body)
		}
	}
	if !hasGlobal {
		emit(secGlobal, append(binary.AppendUvarint(nil, 2), newGlobal...))
	}
	if !hasExport {
		emit(secExport, append(binary.AppendUvarint(nil, 1), newExport...))
	}
	return out, nil
}

// appendVecEntry returns the vector section body vec with n entries
// appended: its count plus n, then the original entries and entries.
func appendVecEntry(vec []byte, n uint32, entries []byte) []byte {
	r := reader{b: vec}
	count := r.u32()
	out := binary.AppendUvarint(make([]byte, 0, len(vec)+len(entries)+5), uint64(count)+uint64(n))
	out = append(out, vec[r.off:]...)
	return append(out, entries...)
}

// appendSLEB appends v in signed LEB128, the encoding of i32.const.
func appendSLEB(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendName(b []byte, name string) []byte {
	b = binary.AppendUvarint(b, uint64(len(name)))
	return append(b, name...)
}

// countImports returns how many globals and memories the import section
// imports.
func countImports(b []byte) (globals, memories uint32, err error) {
	r := reader{b: b}
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.name()
		r.name()
		switch kind := r.byte(); kind {
		case 0x00: // function: type index
			r.u32()
		case 0x01: // table: reftype, limits
			r.byte()
			r.limits()
		case 0x02: // memory: limits
			r.limits()
			memories++
		case kindGlobal: // global: valtype, mutability
			r.byte()
			r.byte()
			globals++
		case 0x04: // tag: attribute, type index
			r.byte()
			r.u32()
		default:
			return 0, 0, fmt.Errorf("import %d: unknown kind 0x%02x", i, kind)
		}
	}
	return globals, memories, r.err
}

// checkExportName fails when the export section already exports name.
func checkExportName(b []byte, name string) error {
	r := reader{b: b}
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		if r.name() == name {
			return fmt.Errorf("the module already exports %q, which the host reserves", name)
		}
		r.byte()
		r.u32()
	}
	return r.err
}

// instrumentCode rewrites the code section body, inserting the check
// described at instrumentLoops after every loop instruction; the countdown
// global is flag+1.
func instrumentCode(b []byte, flag uint32) ([]byte, error) {
	f := binary.AppendUvarint(nil, uint64(flag))
	c := binary.AppendUvarint(nil, uint64(flag)+1)
	var check []byte
	add := func(b ...byte) { check = append(check, b...) }
	add(opGlobalGet)
	add(f...)
	add(0x04, 0x40, 0x00, 0x0b) // if unreachable end
	add(opGlobalGet)
	add(c...)
	add(0x45, 0x04, 0x40) // i32.eqz if
	add(0x41)
	check = appendSLEB(check, yieldEvery)
	add(opGlobalSet)
	add(c...)
	add(0x41, 0x00, 0x40, 0x00, 0x1a) // i32.const 0 memory.grow drop
	add(0x05, opGlobalGet)            // else
	add(c...)
	add(0x41, 0x01, 0x6b, opGlobalSet) // i32.const 1 i32.sub
	add(c...)
	add(0x0b) // end

	r := reader{b: b}
	n := r.u32()
	out := binary.AppendUvarint(make([]byte, 0, len(b)+len(b)/8), uint64(n))
	var fn []byte
	for i := uint32(0); i < n; i++ {
		size := r.u32()
		body := r.bytes(int(size))
		if r.err != nil {
			return nil, fmt.Errorf("code section, function body %d: %w", i, r.err)
		}
		var err error
		if fn, err = instrumentBody(fn[:0], body, check); err != nil {
			return nil, fmt.Errorf("code section, function body %d: %w", i, err)
		}
		out = binary.AppendUvarint(out, uint64(len(fn)))
		out = append(out, fn...)
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("code section: %d trailing bytes", len(b)-r.off)
	}
	return out, nil
}

// instrumentBody appends to out the function body with check inserted
// after each loop's block type.
func instrumentBody(out, body, check []byte) ([]byte, error) {
	r := reader{b: body}
	groups := r.u32()
	for range groups {
		r.u32()  // count
		r.byte() // valtype
	}
	if r.err != nil {
		return nil, fmt.Errorf("locals: %w", r.err)
	}
	copied := 0
	for r.off < len(r.b) && r.err == nil {
		at := r.off
		op := r.byte()
		if err := r.skipImmediates(op); err != nil {
			return nil, fmt.Errorf("instruction at body offset %d: %w", at, err)
		}
		if op == opLoop && r.err == nil {
			out = append(out, body[copied:r.off]...)
			out = append(out, check...)
			copied = r.off
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return append(out, body[copied:]...), nil
}

// reader decodes the binary format; the first error sticks and later reads
// return zero values.
type reader struct {
	b   []byte
	off int
	err error
}

var errTruncated = errors.New("truncated")

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.err = errTruncated
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || r.off+n > len(r.b) {
		r.err = errTruncated
		return nil
	}
	v := r.b[r.off : r.off+n]
	r.off += n
	return v
}

// uleb reads an unsigned LEB128 of at most 64 bits; sleb skips a signed one.
func (r *reader) uleb() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		r.err = errors.New("malformed LEB128 integer")
		return 0
	}
	r.off += n
	return v
}

func (r *reader) u32() uint32 {
	v := r.uleb()
	if v > 1<<32-1 && r.err == nil {
		r.err = errors.New("u32 out of range")
	}
	return uint32(v)
}

// sleb skips a signed LEB128 of at most 64 bits (10 bytes).
func (r *reader) sleb() {
	for n := 0; r.err == nil; n++ {
		if n == 10 {
			r.err = errors.New("malformed LEB128 integer")
			return
		}
		if r.byte()&0x80 == 0 {
			return
		}
	}
}

func (r *reader) name() string { return string(r.bytes(int(r.u32()))) }

func (r *reader) limits() {
	flags := r.byte()
	r.uleb()
	if flags&1 != 0 {
		r.uleb()
	}
}

func (r *reader) memarg() {
	align := r.u32()
	if align&0x40 != 0 { // multi-memory: memory index follows
		r.u32()
	}
	r.uleb()
}

// blockType skips a block type: empty (0x40), a value type, or a type index
// (s33).
func (r *reader) blockType() {
	if r.err != nil || r.off >= len(r.b) {
		r.byte()
		return
	}
	switch r.b[r.off] {
	case 0x40, 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f:
		r.off++
	default:
		r.sleb()
	}
}

// skipImmediates skips the immediates of op (already read), covering the
// core instruction set with the extensions wazero implements: sign
// extension, saturating conversions, bulk memory, reference types, SIMD,
// threads, tail calls and exception handling.
func (r *reader) skipImmediates(op byte) error {
	switch {
	case op == 0x02 || op == 0x03 || op == 0x04 || op == 0x06: // block loop if try
		r.blockType()
	case op == 0x0c || op == 0x0d || op == 0x09 || op == 0x18: // br br_if rethrow delegate
		r.u32()
	case op == 0x0e: // br_table
		n := r.u32()
		for i := uint32(0); i <= n && r.err == nil; i++ {
			r.u32()
		}
	case op == 0x10 || op == 0x12 || op == 0x07 || op == 0x08 || op == 0xd2: // call return_call catch throw ref.func
		r.u32()
	case op == 0x11 || op == 0x13: // call_indirect return_call_indirect: type, table
		r.u32()
		r.u32()
	case op == 0x1c: // select t*
		n := r.u32()
		for i := uint32(0); i < n && r.err == nil; i++ {
			r.byte()
		}
	case op == 0x1f: // try_table: block type, vec(catch)
		r.blockType()
		n := r.u32()
		for i := uint32(0); i < n && r.err == nil; i++ {
			switch kind := r.byte(); kind {
			case 0x00, 0x01: // catch, catch_ref: tag, label
				r.u32()
				r.u32()
			case 0x02, 0x03: // catch_all, catch_all_ref: label
				r.u32()
			default:
				return fmt.Errorf("try_table: unknown catch kind 0x%02x", kind)
			}
		}
	case op >= 0x20 && op <= 0x26: // local.*, global.*, table.get/set
		r.u32()
	case op >= 0x28 && op <= 0x3e: // loads and stores
		r.memarg()
	case op == 0x3f || op == 0x40: // memory.size memory.grow
		r.u32()
	case op == 0x41 || op == 0x42: // i32.const i64.const
		r.sleb()
	case op == 0x43:
		r.bytes(4)
	case op == 0x44:
		r.bytes(8)
	case op == 0xd0: // ref.null heap type
		r.blockType()
	case op == 0xfc:
		return r.skipFC()
	case op == 0xfd:
		return r.skipSIMD()
	case op == 0xfe:
		sub := r.u32()
		if sub == 0x03 { // atomic.fence
			r.byte()
		} else {
			r.memarg()
		}
	case op <= 0x01 || op == 0x05 || op == 0x0a || op == 0x0b || op == 0x0f || op == 0x19 ||
		op == 0x1a || op == 0x1b || (op >= 0x45 && op <= 0xc4) || op == 0xd1:
		// no immediates
	default:
		return fmt.Errorf("unknown opcode 0x%02x", op)
	}
	return r.err
}

func (r *reader) skipFC() error {
	switch sub := r.u32(); {
	case sub <= 7: // saturating truncations
	case sub == 8: // memory.init: data, memory
		r.u32()
		r.u32()
	case sub == 9 || sub == 13 || sub == 15 || sub == 16 || sub == 17: // data.drop elem.drop table.grow/size/fill
		r.u32()
	case sub == 10 || sub == 12 || sub == 14: // memory.copy table.init table.copy
		r.u32()
		r.u32()
	case sub == 11: // memory.fill
		r.u32()
	default:
		return fmt.Errorf("unknown opcode 0xfc %d", sub)
	}
	return r.err
}

func (r *reader) skipSIMD() error {
	switch sub := r.u32(); {
	case sub <= 11 || sub == 92 || sub == 93: // loads, stores, load zero
		r.memarg()
	case sub == 12 || sub == 13: // v128.const, i8x16.shuffle
		r.bytes(16)
	case sub >= 21 && sub <= 34: // extract/replace lane
		r.byte()
	case sub >= 84 && sub <= 91: // load/store lane
		r.memarg()
		r.byte()
	case sub <= 275: // no immediates
	default:
		return fmt.Errorf("unknown opcode 0xfd %d", sub)
	}
	return r.err
}
