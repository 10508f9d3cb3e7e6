// Package harness starts and stops the processes of the end-to-end suite:
// Axon (or, as the control, an embedded etcd in its own process), and
// kube-apiserver; it also holds the knobs read from the environment and the
// summary lines every part prints.
package harness

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Environment variables understood by the suite.
const (
	// EnvProfile selects the size of the run: "full" (default) or "ci".
	EnvProfile = "E2E_PROFILE"
	// EnvBackend selects what kube-apiserver and the storage suite talk to:
	// "axon" (default) or "etcd" (the control).
	EnvBackend = "E2E_BACKEND"
	// EnvSummaryFile, when set, receives a copy of every summary line.
	EnvSummaryFile = "E2E_SUMMARY_FILE"
	// EnvWorkDir is where data dirs and logs go (default deploy/e2e/.work).
	EnvWorkDir = "E2E_WORK_DIR"
	// EnvAxonBin, EnvEtcdBin, EnvKubeAPIServerBin override the binaries;
	// by default they are built into deploy/e2e/.bin.
	EnvAxonBin          = "E2E_AXON_BIN"
	EnvEtcdBin          = "E2E_ETCD_BIN"
	EnvKubeAPIServerBin = "E2E_KUBE_APISERVER_BIN"
)

// CI reports whether the reduced CI profile is selected.
func CI() bool { return strings.EqualFold(os.Getenv(EnvProfile), "ci") }

// Pick returns full or ci depending on the profile.
func Pick[T any](full, ci T) T {
	if CI() {
		return ci
	}
	return full
}

// Backend returns the kind of store under test: KindAxon or KindEtcd.
func Backend() Kind {
	switch strings.ToLower(os.Getenv(EnvBackend)) {
	case "", "axon":
		return KindAxon
	case "etcd":
		return KindEtcd
	default:
		panic(fmt.Sprintf("%s=%q: want axon or etcd", EnvBackend, os.Getenv(EnvBackend)))
	}
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// ModuleRoot returns the directory of the e2e module (deploy/e2e).
func ModuleRoot() (string, error) {
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootErr = err
			return
		}
		for {
			b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
			if err == nil && strings.Contains(string(b), "module github.com/axon-kv/axon/deploy/e2e\n") {
				rootDir = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootErr = fmt.Errorf("deploy/e2e go.mod not found above the working directory")
				return
			}
			dir = parent
		}
	})
	return rootDir, rootErr
}

// WorkDir returns a fresh directory for one test's data and logs, under
// $E2E_WORK_DIR or deploy/e2e/.work. It is kept after the test for reading
// logs; `make e2e` clears it at start.
func WorkDir(t testing.TB, name string) string {
	t.Helper()
	base := os.Getenv(EnvWorkDir)
	if base == "" {
		root, err := ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		base = filepath.Join(root, ".work")
	}
	dir := filepath.Join(base, fmt.Sprintf("%s-%s", name, time.Now().Format("150405.000")))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

var summaryMu sync.Mutex

// Summary prints one summary line for a part of the suite, to stdout and to
// $E2E_SUMMARY_FILE when set.
func Summary(part, format string, args ...any) {
	line := fmt.Sprintf("E2E SUMMARY %-12s %s", part+":", fmt.Sprintf(format, args...))
	summaryMu.Lock()
	defer summaryMu.Unlock()
	fmt.Println(line)
	if p := os.Getenv(EnvSummaryFile); p != "" {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(f, line)
			f.Close()
		}
	}
}

// Binaries.

var (
	buildMu  sync.Mutex
	builtBin = map[string]string{}
)

// AxonBin returns the Axon binary, building ../../cmd/axon into .bin/axon
// once per test process (Go's build cache makes that quick) unless
// $E2E_AXON_BIN names one.
func AxonBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvAxonBin); p != "" {
		return p
	}
	return buildOnce(t, "axon", func(root, out string) *exec.Cmd {
		c := exec.Command("go", "build", "-o", out, "./cmd/axon")
		c.Dir = filepath.Join(root, "..", "..")
		return c
	})
}

// EtcdBin returns the embed-etcd control binary (module embed-etcd/).
func EtcdBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvEtcdBin); p != "" {
		return p
	}
	return buildOnce(t, "embed-etcd", func(root, out string) *exec.Cmd {
		c := exec.Command("go", "build", "-o", out, ".")
		c.Dir = filepath.Join(root, "embed-etcd")
		return c
	})
}

// ServerBin returns the binary for kind.
func ServerBin(t testing.TB, kind Kind) string {
	if kind == KindEtcd {
		return EtcdBin(t)
	}
	return AxonBin(t)
}

// KubeAPIServerBin returns the kube-apiserver binary, running
// build-kube-apiserver.sh when .bin/kube-apiserver is missing (slow the first
// time: about ten minutes on 2 cores).
func KubeAPIServerBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvKubeAPIServerBin); p != "" {
		return p
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, ".bin", "kube-apiserver")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	t.Logf("building kube-apiserver (first build takes minutes)")
	c := exec.Command(filepath.Join(root, "build-kube-apiserver.sh"))
	c.Dir = root
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("build kube-apiserver: %v\n%s", err, out)
	}
	return bin
}

func buildOnce(t testing.TB, name string, cmd func(root, out string) *exec.Cmd) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := builtBin[name]; ok {
		return p
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, ".bin", name)
	c := cmd(root, out)
	start := time.Now()
	if b, err := c.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, b)
	}
	t.Logf("built %s in %s", name, time.Since(start).Round(time.Millisecond))
	builtBin[name] = out
	return out
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
