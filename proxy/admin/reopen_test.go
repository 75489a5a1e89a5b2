package admin

import (
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"meshd.dev/meshd/proxy/stats"
)

type reopenBackend struct {
	*fakeBackend
	reopened atomic.Int32
}

func (b *reopenBackend) ReopenLogs() { b.reopened.Add(1) }

func TestReopenLogs(t *testing.T) {
	b := &reopenBackend{fakeBackend: newFakeBackend()}
	plain := New(newFakeBackend(), stats.NewStore(), nil)
	srv := New(b, stats.NewStore(), nil)
	for _, tc := range []struct {
		name     string
		srv      *Server
		method   string
		wantCode int
		want     int32
	}{
		{"GET is refused", srv, "GET", 405, 0},
		{"POST reopens", srv, "POST", 200, 1},
		{"no access logs: nothing to reopen", plain, "POST", 200, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			tc.srv.ServeHTTP(rec, httptest.NewRequest(tc.method, "/reopen_logs", nil))
			if rec.Code != tc.wantCode || b.reopened.Load() != tc.want {
				t.Errorf("%s /reopen_logs = %d, reopened %d times; want %d, %d", tc.method, rec.Code, b.reopened.Load(), tc.wantCode, tc.want)
			}
		})
	}
}
