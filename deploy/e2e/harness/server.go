package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Kind is the kind of key-value server: Axon or the etcd control.
type Kind string

const (
	KindAxon Kind = "axon"
	KindEtcd Kind = "etcd"
)

// ServerConfig describes one Axon (or control etcd) process.
type ServerConfig struct {
	Kind Kind
	// Name labels the data dir and log file ("main", "events", ...).
	Name string
	// Dir is the parent directory for the data dir and the log.
	Dir string
	// Memory selects Axon's --backend memory (for etcd: no fsync, and the
	// data dir is removed on Stop).
	Memory bool
	// ProgressNotify sets --watch-progress-notify-interval when non-zero.
	ProgressNotify time.Duration
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
}

// Server is a running (or killed) Axon or etcd process.
type Server struct {
	cfg      ServerConfig
	bin      string
	Port     int
	peerPort int
	DataDir  string
	LogPath  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	starts int
}

// URL is the client URL.
func (s *Server) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", s.Port) }

// StartServer starts a server and waits until it answers Status. It is
// stopped when the test ends.
func StartServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	if cfg.Kind == "" {
		cfg.Kind = KindAxon
	}
	s := &Server{
		cfg:     cfg,
		bin:     ServerBin(t, cfg.Kind),
		Port:    FreePort(t),
		DataDir: filepath.Join(cfg.Dir, string(cfg.Kind)+"-"+cfg.Name+"-data"),
		LogPath: filepath.Join(cfg.Dir, string(cfg.Kind)+"-"+cfg.Name+".log"),
	}
	if cfg.Kind == KindEtcd {
		s.peerPort = FreePort(t)
	}
	t.Cleanup(s.Stop)
	if _, err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *Server) args() []string {
	args := []string{}
	if s.cfg.Kind == KindAxon {
		args = append(args, "serve")
	} else {
		args = append(args, "--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", s.peerPort))
	}
	args = append(args, "--listen-client-urls", s.URL(), "--data-dir", s.DataDir)
	if s.cfg.Memory {
		args = append(args, "--backend", "memory")
	}
	if s.cfg.ProgressNotify > 0 {
		args = append(args, "--watch-progress-notify-interval", s.cfg.ProgressNotify.String())
	}
	return append(args, s.cfg.ExtraArgs...)
}

// Start starts the process (again, after Kill9) on the same port and data
// dir, and returns how long it took to answer Status.
func (s *Server) Start() (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return 0, fmt.Errorf("%s %s already running", s.cfg.Kind, s.cfg.Name)
	}
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	s.starts++
	fmt.Fprintf(logf, "\n===== start #%d at %s: %s %v\n", s.starts, time.Now().Format(time.RFC3339Nano), s.bin, s.args())
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the test process, even on a test timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return 0, err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	if err := s.waitReady(exited, 60*time.Second); err != nil {
		return 0, fmt.Errorf("%s %s not ready: %v\n--- log tail:\n%s", s.cfg.Kind, s.cfg.Name, err, tail(s.LogPath, 30))
	}
	return time.Since(start), nil
}

func (s *Server) waitReady(exited chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-exited:
			return errors.New("process exited")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no Status answer within %s", timeout)
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), 200*time.Millisecond); err == nil {
			c.Close()
			if err := s.status(); err == nil {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) status() error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.URL()}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = cli.Status(ctx, s.URL())
	return err
}

// Kill9 sends SIGKILL and waits for the process to be gone.
func (s *Server) Kill9() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("not running")
	}
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-s.exited
	s.cmd = nil
	return nil
}

// Stop terminates the process gracefully (SIGTERM, then SIGKILL after 10s).
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.exited
	}
	s.cmd = nil
	if s.cfg.Memory {
		os.RemoveAll(s.DataDir)
	}
}

// Client returns a clientv3 client for the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.URL()},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}
