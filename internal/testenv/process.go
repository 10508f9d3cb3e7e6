package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// BuildAxon builds the axon binary into a fresh temporary directory, for
// tests that run it as a separate process (kill -9, signals).
func BuildAxon(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "axon")
	// go test puts its own go first on PATH.
	out, err := exec.Command("go", "build", "-o", bin, "github.com/axon-kv/axon/cmd/axon").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// Process is one running `axon serve` subprocess.
type Process struct {
	Cmd     *exec.Cmd
	URL     string
	out     *syncBuffer
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid once done is closed
}

// StartAxonProcess starts `axon serve` on dataDir (Badger) and a free
// loopback port, with extra flags appended. The developer's AXON_* settings
// do not leak in. The process is killed at the end of the test if still
// running, and its output logged if the test failed.
func StartAxonProcess(t testing.TB, bin, dataDir string, args ...string) *Process {
	t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	p := &Process{URL: url, out: &syncBuffer{}, done: make(chan struct{})}
	p.Cmd = exec.Command(bin, append([]string{"serve", "--backend", "badger", "--data-dir", dataDir,
		"--listen-client-urls", url, "--log-level", "info"}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AXON_") {
			p.Cmd.Env = append(p.Cmd.Env, kv)
		}
	}
	p.Cmd.Stdout, p.Cmd.Stderr = p.out, p.out
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start axon: %v", err)
	}
	go func() {
		p.waitErr = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("axon serve on %s output:\n%s", url, p.out.String())
		}
	})
	t.Cleanup(func() { // runs before the log above
		select {
		case <-p.done:
		default:
			_ = p.Cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// processReadyTimeout bounds process start until a Get succeeds.
const processReadyTimeout = 30 * time.Second

// WaitReady waits until the port accepts connections and a Get succeeds,
// and returns a client connected to the process.
func (p *Process) WaitReady(t testing.TB) *clientv3.Client {
	t.Helper()
	deadline := time.Now().Add(processReadyTimeout)
	host := strings.TrimPrefix(p.URL, "http://")
	// Wait for the listener first: gRPC backs off for seconds after a
	// refused connection.
	for {
		if p.Exited() {
			t.Fatalf("axon exited before listening: %v", p.waitErr)
		}
		c, err := net.DialTimeout("tcp", host, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("axon not listening on %s after %v: %v", host, processReadyTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.URL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	for {
		if p.Exited() {
			cli.Close()
			t.Fatalf("axon exited before serving: %v", p.waitErr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "axon-test-readiness-probe")
		cancel()
		if err == nil {
			return cli
		}
		if time.Now().After(deadline) {
			cli.Close()
			t.Fatalf("axon on %s not serving Get after %v: %v", p.URL, processReadyTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitExit waits for the process to exit and returns its Wait error (nil
// for status 0). It fails the test if the process still runs after d.
func (p *Process) WaitExit(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(d):
		t.Fatalf("axon still running %v after the signal", d)
		return errors.New("unreachable")
	}
}

// Output is what the process printed so far.
func (p *Process) Output() string { return p.out.String() }

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for concurrent Write and String.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// CopyDir copies a stopped data dir (or engine dir) to a fresh temporary
// directory of the same base name, so each case can damage its own copy.
// cp keeps Badger's preallocated logs sparse.
func CopyDir(t testing.TB, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if out, err := exec.Command("cp", "-a", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v %s", src, err, out)
	}
	return dst
}
