package testutil

// PID returns the operating-system process id of the sidecar, so tests can
// read what the kernel says about it (/proc/PID/fd, /proc/PID/status). The
// id stays valid until the process has been reaped (Done is closed).
func (s *Sidecar) PID() int { return s.cmd.Process.Pid }
