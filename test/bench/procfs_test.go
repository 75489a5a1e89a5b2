package main

import (
	"os"
	"strings"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	// Fields 3..: state ppid pgrp session tty_nr tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime ...
	const tail = " S 1 2 3 0 -1 4194560 100 0 0 0 1234 567 8 9 20 0 5 0 99 1000 200 18446744073709551615"
	tests := []struct {
		name    string
		in      string
		want    procCPU
		wantErr string
	}{
		{name: "plain comm", in: "4242 (meshd)" + tail, want: procCPU{1234, 567}},
		{name: "comm with spaces and parens", in: "7 (a (b) c))" + tail, want: procCPU{1234, 567}},
		{name: "trailing newline", in: "7 (x)" + tail + "\n", want: procCPU{1234, 567}},
		{name: "no comm", in: "7 x" + tail, wantErr: "no ')'"},
		{name: "truncated", in: "7 (x) S 1 2 3", wantErr: "fields after comm"},
		{name: "bad utime", in: "7 (x) S 1 2 3 0 -1 4194560 100 0 0 0 x 567", wantErr: "utime (field 14)"},
		{name: "bad stime", in: "7 (x) S 1 2 3 0 -1 4194560 100 0 0 0 1 -5", wantErr: "stime (field 15)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcStat([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseProcStat error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseProcStat: %v", err)
			}
			if got != tt.want {
				t.Fatalf("parseProcStat = %+v, want %+v", got, tt.want)
			}
			if got.Total() != tt.want.UserTicks+tt.want.SystemTicks {
				t.Fatalf("Total = %d, want %d", got.Total(), tt.want.UserTicks+tt.want.SystemTicks)
			}
		})
	}
}

func TestParseStatusKB(t *testing.T) {
	const status = "Name:\tmeshd\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 1 kB\nRssFile:\t12344 kB\n"
	tests := []struct {
		name    string
		in, key string
		want    int64
		wantErr string
	}{
		{name: "VmRSS", in: status, key: "VmRSS", want: 12345 * 1024},
		{name: "RssAnon", in: status, key: "RssAnon", want: 1024},
		{name: "last line without newline", in: "Name:\tx\nVmRSS:\t8 kB", key: "VmRSS", want: 8 * 1024},
		{name: "missing", in: "Name:\tkthreadd\nState:\tS\n", key: "VmRSS", wantErr: "no VmRSS"},
		{name: "prefix of another key", in: "RssAnonX:\t1 kB\n", key: "RssAnon", wantErr: "no RssAnon"},
		{name: "wrong unit", in: "VmRSS:\t12 MB\n", key: "VmRSS", wantErr: "want \"<n> kB\""},
		{name: "not a number", in: "VmRSS:\tx kB\n", key: "VmRSS", wantErr: "VmRSS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatusKB([]byte(tt.in), tt.key)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseStatusKB error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseStatusKB = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

// TestOwnProcess reads this test process's /proc files, the real format.
func TestOwnProcess(t *testing.T) {
	m, err := readMem(os.Getpid())
	if err != nil || m.Anon <= 0 || m.RSS < m.Anon {
		t.Fatalf("readMem(self) = %+v, %v; want 0 < RssAnon <= VmRSS", m, err)
	}
	if _, err := readProcCPU(os.Getpid()); err != nil {
		t.Fatalf("readProcCPU(self): %v", err)
	}
	hz, src, err := clockTicks(t.Context())
	if err != nil {
		t.Fatalf("clockTicks: %v", err)
	}
	if hz <= 0 || src == "" {
		t.Fatalf("clockTicks = %d, %q", hz, src)
	}
}

func TestTicksAgree(t *testing.T) {
	tests := []struct {
		hz       int
		measured float64
		want     bool
	}{
		{100, 100, true},
		{100, 97.4, true},
		{100, 51, true},
		{100, 149, true},
		{100, 50, false},
		{100, 150, false},
		{100, 1000, false},
		{1000, 100, false},
	}
	for _, tt := range tests {
		if got := ticksAgree(tt.hz, tt.measured); got != tt.want {
			t.Errorf("ticksAgree(%d, %v) = %v, want %v", tt.hz, tt.measured, got, tt.want)
		}
	}
}

func TestParseStatusField(t *testing.T) {
	status := []byte("Name:\tmeshd\nCpus_allowed:\t1\nCpus_allowed_list:\t0\nMems_allowed_list:\t0\n")
	tests := []struct {
		key, want string
		wantOK    bool
	}{
		{"Cpus_allowed_list", "0", true},
		{"Cpus_allowed", "1", true},
		{"Name", "meshd", true},
		{"VmRSS", "", false},
	}
	for _, tt := range tests {
		if got, ok := parseStatusField(status, tt.key); got != tt.want || ok != tt.wantOK {
			t.Errorf("parseStatusField(%q) = %q, %v; want %q, %v", tt.key, got, ok, tt.want, tt.wantOK)
		}
	}
	if cpus, err := readCPUsAllowed(os.Getpid()); err != nil || cpus == "" {
		t.Errorf("readCPUsAllowed(self) = %q, %v", cpus, err)
	}
}
