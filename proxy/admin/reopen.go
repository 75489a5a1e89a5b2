package admin

import "net/http"

// LogReopener is implemented by a Backend whose access logs can be reopened
// (log rotation): POST /reopen_logs calls ReopenLogs, as Envoy's does.
type LogReopener interface {
	// ReopenLogs makes every access-log file close and reopen its path.
	ReopenLogs()
}

// handleReopenLogs serves POST /reopen_logs: OK once the reopen is
// requested; a backend without access logs answers OK too (nothing to
// reopen), as Envoy does without access logs.
func (s *Server) handleReopenLogs(w http.ResponseWriter, r *http.Request) {
	if lr, ok := s.backend.(LogReopener); ok {
		s.logger.Info("admin: reopening access logs", "remote", r.RemoteAddr)
		lr.ReopenLogs()
	}
	w.Header().Set("Content-Type", contentText)
	s.write(w, "OK\n")
}
