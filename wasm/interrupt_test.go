package wasm

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// loopModule exports "spin" (an endless loop) and "count" (a loop of n
// iterations returning n). It imports a global and defines one, so the
// interrupt global's index must count both.
func loopModule(t testing.TB) []byte {
	t.Helper()
	b := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	b = append(b, section(1, vec(functype(0, 0), functype(1, 1)))...)
	// import env.g: global i32 immutable
	b = append(b, section(2, vec(append(append(wname("env"), wname("g")...), 0x03, tI32, 0x00)))...)
	b = append(b, section(3, vec(leb(0), leb(1)))...)
	b = append(b, section(5, vec([]byte{0x00, 0x01}))...)
	b = append(b, section(6, vec([]byte{tI32, 0x01, 0x41, 0x00, 0x0b}))...)
	b = append(b, section(7, vec(
		append(wname("spin"), 0x00, 0x00),
		append(wname("count"), 0x00, 0x01),
		append(wname("memory"), 0x02, 0x00),
	))...)
	spin := []byte{0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b} // loop br 0 end
	// count(n): local i; loop { i++; br_if 0 (i < n) } return i
	count := []byte{0x01, 0x01, tI32, // one local i32
		0x03, 0x40, // loop
		0x20, 0x01, 0x41, 0x01, 0x6a, 0x21, 0x01, // i = i + 1
		0x20, 0x01, 0x20, 0x00, 0x48, 0x0d, 0x00, // br_if 0 (i < n)
		0x0b,             // end loop
		0x20, 0x01, 0x0b, // i end
	}
	b = append(b, section(10, vec(append(leb(uint32(len(spin))), spin...), append(leb(uint32(len(count))), count...)))...)
	return b
}

// globalProvider is a module exporting an immutable i32 global "g", to be
// instantiated as "env" for loopModule's import.
func globalProvider() []byte {
	b := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	b = append(b, section(6, vec([]byte{tI32, 0x00, 0x41, 0x07, 0x0b}))...)
	return append(b, section(7, vec(append(wname("g"), 0x03, 0x00)))...)
}

// TestInstrumentLoops runs instrumented code: a bounded loop still computes
// its result, and an endless one traps once the host sets the flag from
// another goroutine.
func TestInstrumentLoops(t *testing.T) {
	ctx := context.Background()
	bin, err := instrumentLoops(loopModule(t))
	if err != nil {
		t.Fatal(err)
	}
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	if _, err := rt.InstantiateWithConfig(ctx, globalProvider(), wazero.NewModuleConfig().WithName("env")); err != nil {
		t.Fatal(err)
	}
	mod, err := rt.InstantiateWithConfig(ctx, bin, wazero.NewModuleConfig().WithName("guest"))
	if err != nil {
		t.Fatalf("instantiate instrumented module: %v", err)
	}
	flag, ok := mod.ExportedGlobal(interruptExport).(api.MutableGlobal)
	if !ok {
		t.Fatalf("no mutable global %s", interruptExport)
	}
	if got, err := mod.ExportedFunction("count").Call(ctx, 1000); err != nil || got[0] != 1000 {
		t.Fatalf("count(1000) = %v, %v", got, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := mod.ExportedFunction("spin").Call(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("spin returned before the flag was set: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	// A stop-the-world GC phase must be able to preempt the looping
	// goroutine (at the periodic exits to Go), or the process hangs.
	gcDone := make(chan struct{})
	go func() { runtime.GC(); close(gcDone) }()
	select {
	case <-gcDone:
	case <-time.After(10 * time.Second):
		t.Fatal("runtime.GC blocked by a looping guest")
	}
	flag.Set(1)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("spin ended with %v, want the unreachable trap", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("spin still running 10 s after the flag was set")
	}
}

// TestInstrumentLoopsSectionLayout checks the rewrite of a module without
// global and export sections (both are created, in order) and the errors
// for modules the host cannot instrument.
func TestInstrumentLoopsSectionLayout(t *testing.T) {
	noSections := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	noSections = append(noSections, section(1, vec(functype(0, 0)))...)
	noSections = append(noSections, section(3, vec(leb(0)))...)
	noSections = append(noSections, section(5, vec([]byte{0x00, 0x01}))...)
	body := []byte{0x00, 0x03, 0x40, 0x0b, 0x0b}
	noSections = append(noSections, section(10, vec(append(leb(uint32(len(body))), body...)))...)
	out, err := instrumentLoops(noSections)
	if err != nil {
		t.Fatal(err)
	}
	rt := wazero.NewRuntime(context.Background())
	defer rt.Close(context.Background())
	mod, err := rt.Instantiate(context.Background(), out)
	if err != nil {
		t.Fatalf("instantiate: %v", err)
	}
	if g, ok := mod.ExportedGlobal(interruptExport).(api.MutableGlobal); !ok || g.Type() != api.ValueTypeI32 || g.Get() != 0 {
		t.Fatalf("exported global %s: %v", interruptExport, mod.ExportedGlobal(interruptExport))
	}

	withName := func(name string) []byte {
		b := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
		b = append(b, section(6, vec([]byte{tI32, 0x01, 0x41, 0x00, 0x0b}))...)
		return append(b, section(7, vec(append(wname(name), 0x03, 0x00)))...)
	}
	badOp := bytes.Clone(noSections)
	badOp[len(badOp)-4] = 0xff // the loop opcode becomes an unknown one
	tests := []struct {
		name, want string
		bin        []byte
	}{
		{"name taken", "already exports", withName(interruptExport)},
		{"not wasm", "magic", []byte("hello world")},
		{"no memory", "no memory", withName("other")[:len(withName("other"))-len(section(7, vec(append(wname("other"), 0x03, 0x00))))]},
		{"truncated section", "truncated", noSections[:len(noSections)-2]},
		{"unknown opcode", "unknown opcode 0xff", badOp},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := instrumentLoops(tc.bin); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	withMemory := append(withName("other")[:8:8], section(5, vec([]byte{0x00, 0x01}))...)
	withMemory = append(withMemory, withName("other")[8:]...)
	if _, err := instrumentLoops(withMemory); err != nil {
		t.Errorf("module exporting another global: %v", err)
	}
}

// FuzzInstrumentLoops: arbitrary bytes never panic the rewriter, and
// rewriting a module wazero accepts yields a module wazero still accepts
// (a wrong rewrite would fail every plugin load instead of the bad one).
func FuzzInstrumentLoops(f *testing.F) {
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	f.Cleanup(func() { _ = rt.Close(ctx) })
	valid := func(bin []byte) error {
		m, err := rt.CompileModule(ctx, bin)
		if err == nil {
			_ = m.Close(ctx)
		}
		return err
	}
	for _, seed := range [][]byte{minimalGuest(opLoopForever), minimalGuest(opUnreachable), loopModule(f)} {
		if err := valid(seed); err != nil {
			f.Fatalf("seed is not a valid module: %v", err)
		}
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, bin []byte) {
		out, err := instrumentLoops(bin)
		if err != nil {
			return
		}
		if len(out) < len(bin) {
			t.Fatalf("instrumented module shrank from %d to %d bytes", len(bin), len(out))
		}
		if valid(bin) != nil {
			return
		}
		if err := valid(out); err != nil {
			t.Fatalf("instrumenting a valid module made it invalid: %v", err)
		}
	})
}
