package main

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name   string
		sorted []int
		p      float64
		want   int
	}{
		{"empty", nil, 50, 0},
		{"one sample p50", []int{7}, 50, 7},
		{"one sample p99", []int{7}, 99, 7},
		{"p50 of 1..100", hundred, 50, 50},
		{"p99 of 1..100", hundred, 99, 99},
		{"p100 of 1..100", hundred, 100, 100},
		{"p99.9 of 1..100 rounds up", hundred, 99.9, 100},
		{"p0 is zero value", hundred, 0, 0},
		{"p50 of 4 is the 2nd", []int{1, 2, 3, 4}, 50, 2},
		{"p51 of 4 is the 3rd", []int{1, 2, 3, 4}, 51, 3},
		{"p99 of 10", []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 99, 10},
		{"tiny p picks the first", hundred, 0.001, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Fatalf("percentile(%v) = %d, want %d", tt.p, got, tt.want)
			}
		})
	}
	if got := percentile([]time.Duration{time.Millisecond, 3 * time.Millisecond}, 99); got != 3*time.Millisecond {
		t.Fatalf("percentile of durations = %v, want 3ms", got)
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name   string
		in     []float64
		want   float64
		wantOK bool
	}{
		{"empty", nil, 0, false},
		{"one", []float64{2.5}, 2.5, true},
		{"odd unsorted", []float64{9, 1, 5}, 5, true},
		{"even is the mean of the middle two", []float64{4, 1, 3, 2}, 2.5, true},
		{"outlier does not move it", []float64{1, 1, 1000}, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.in...)
			got, ok := median(in)
			if got != tt.want || ok != tt.wantOK {
				t.Fatalf("median(%v) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
			for i := range in {
				if in[i] != tt.in[i] {
					t.Fatalf("median modified its input: %v, was %v", in, tt.in)
				}
			}
		})
	}
}
