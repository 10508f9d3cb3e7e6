package benchmark

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DataDirPlaceholder in a server command stands for the data directory the
// server is started on.
const DataDirPlaceholder = "{data-dir}"

// ServerProc is a server process Compare starts, stops (SIGTERM) and
// restarts itself, so that it knows its pid and can time a restart.
type ServerProc struct {
	// Argv is the command; DataDirPlaceholder in it is replaced by the
	// data directory of each start.
	Argv []string
	// LogPath, when set, receives the process's stdout and stderr
	// (appended, across restarts).
	LogPath string

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	dataDir string
}

// Start starts the server on dataDir.
func (p *ServerProc) Start(dataDir string) error {
	if p.Running() {
		return fmt.Errorf("already running (pid %d)", p.Pid())
	}
	if len(p.Argv) == 0 {
		return fmt.Errorf("no command")
	}
	argv := make([]string, len(p.Argv))
	for i, a := range p.Argv {
		argv[i] = strings.ReplaceAll(a, DataDirPlaceholder, dataDir)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	// The server dies with the harness rather than outliving it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if p.LogPath != "" {
		f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		fmt.Fprintf(f, "==> %s %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
		cmd.Stdout, cmd.Stderr = f, f
		defer f.Close() // the child has its own descriptor
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	p.cmd, p.dataDir = cmd, dataDir
	p.exited = make(chan struct{})
	p.waitErr = nil
	go func(done chan struct{}) {
		p.waitErr = cmd.Wait()
		close(done)
	}(p.exited)
	return nil
}

// Pid is the process id of the last start (0 before any).
func (p *ServerProc) Pid() int {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// DataDir is the data directory of the last start.
func (p *ServerProc) DataDir() string { return p.dataDir }

// Running reports whether the last started process has not exited.
func (p *ServerProc) Running() bool {
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// ExitErr is how the last process ended (nil while running or after a
// clean exit).
func (p *ServerProc) ExitErr() error {
	if p.Running() {
		return nil
	}
	return p.waitErr
}

// Stop sends SIGTERM and waits for the process to exit, sending SIGKILL
// after timeout. It returns how long the exit took and, if the process did
// not exit cleanly on SIGTERM, why.
func (p *ServerProc) Stop(timeout time.Duration) (time.Duration, error) {
	if !p.Running() {
		return 0, nil
	}
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return 0, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.exited:
		took := time.Since(start)
		if p.waitErr != nil {
			return took, fmt.Errorf("exit after SIGTERM: %w", p.waitErr)
		}
		return took, nil
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
		return time.Since(start), fmt.Errorf("still running %v after SIGTERM: killed", timeout)
	}
}

// WaitServing waits until a linearizable Get on endpoints succeeds, for at
// most timeout, and returns the first error otherwise. It polls the TCP
// port every 5 ms first, then tries a Get on a fresh client (so no
// reconnect backoff hides the moment the server comes up).
func WaitServing(ctx context.Context, endpoints []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if last = tryLinearizableGet(ctx, endpoints); last == nil {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no linearizable read from %v within %v: %w", endpoints, timeout, last)
}

func tryLinearizableGet(ctx context.Context, endpoints []string) error {
	c, err := net.DialTimeout("tcp", hostPort(endpoints[0]), 200*time.Millisecond)
	if err != nil {
		return err
	}
	_ = c.Close()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: time.Second,
		Context:     ctx,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = cli.Get(gctx, "/axon-bench/restart-probe")
	return err
}

// hostPort strips a URL scheme from an endpoint ("http://h:p" -> "h:p").
func hostPort(ep string) string {
	if strings.Contains(ep, "://") {
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			return u.Host
		}
	}
	return ep
}
