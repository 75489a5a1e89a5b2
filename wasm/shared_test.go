package wasm

import (
	"strconv"
	"testing"
)

// TestSharedDataBounds checks that one vm_id's shared data stops growing at
// MaxSharedKeys keys and MaxSharedBytes bytes, that existing keys stay
// writable when the key bound is reached, and that other vm_ids are not
// affected.
func TestSharedDataBounds(t *testing.T) {
	var s sharedStore
	s.init()
	for i := range MaxSharedKeys {
		if st := s.set("vm", strconv.Itoa(i), []byte("v"), 0); st != StatusOK {
			t.Fatalf("set key %d of %d: %v", i, MaxSharedKeys, st)
		}
	}
	tests := []struct {
		name       string
		vm, key    string
		value      []byte
		cas        func() uint32
		wantStatus Status
	}{
		{name: "new key beyond the key bound", vm: "vm", key: "one-more", value: []byte("v"), wantStatus: StatusInternalFailure},
		{name: "existing key unconditional", vm: "vm", key: "7", value: []byte("w"), wantStatus: StatusOK},
		{name: "existing key with cas", vm: "vm", key: "8", value: []byte("w"), cas: func() uint32 {
			_, cas, _ := s.get("vm", "8")
			return cas
		}, wantStatus: StatusOK},
		{name: "cas mismatch still reported", vm: "vm", key: "9", value: []byte("w"), cas: func() uint32 { return 1 }, wantStatus: StatusCasMismatch},
		{name: "other vm_id unaffected", vm: "other", key: "k", value: []byte("v"), wantStatus: StatusOK},
		{name: "value beyond the byte bound", vm: "other", key: "big", value: make([]byte, MaxSharedBytes), wantStatus: StatusInternalFailure},
		{name: "existing key grown beyond the byte bound", vm: "other", key: "k", value: make([]byte, MaxSharedBytes), wantStatus: StatusInternalFailure},
		{name: "existing key shrunk", vm: "other", key: "k", value: nil, wantStatus: StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cas uint32
			if tc.cas != nil {
				cas = tc.cas()
			}
			if st := s.set(tc.vm, tc.key, tc.value, cas); st != tc.wantStatus {
				t.Fatalf("set(%q, %q) = %v, want %v", tc.vm, tc.key, st, tc.wantStatus)
			}
			v, _, st := s.get(tc.vm, tc.key)
			switch {
			case tc.wantStatus == StatusOK && string(v) != string(tc.value):
				t.Fatalf("get(%q, %q) = %q, %v; want the value just set", tc.vm, tc.key, v, st)
			case tc.wantStatus == StatusInternalFailure && len(v) == len(tc.value):
				t.Fatalf("get(%q, %q) returned the refused value", tc.vm, tc.key)
			}
		})
	}
	if n := len(s.data["vm"].values); n != MaxSharedKeys {
		t.Fatalf("vm holds %d keys, want %d", n, MaxSharedKeys)
	}
}
