package main

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// cgroupDir lays out a fake cgroup mount with the given files.
func cgroupDir(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCgroupMemoryLimit(t *testing.T) {
	const (
		v2Root   = "0::/\n"
		v2Nested = "0::/system.slice/axon.service\n"
		v1Nested = "12:pids:/x\n4:memory:/kubepods/pod1/c1\n1:cpu,cpuacct:/x\n0::/\n"
	)
	for _, tc := range []struct {
		name    string
		proc    string
		files   map[string]string
		want    int64
		ok      bool
		wantErr bool
	}{
		{"none", v2Root, nil, 0, false, false},
		{"v2 limit", v2Root, map[string]string{"memory.max": "4294967296\n"}, 4 << 30, true, false},
		{"v2 max", v2Root, map[string]string{"memory.max": "max\n"}, 0, false, false},
		{"v1 limit", "", map[string]string{"memory/memory.limit_in_bytes": "2147483648\n"}, 2 << 30, true, false},
		{"v1 unlimited", "", map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0, false, false},
		{"beyond int64", v2Root, map[string]string{"memory.max": "18446744073709551615\n"}, 0, false, false},
		{"v2 wins over v1", v2Root, map[string]string{"memory.max": "1073741824", "memory/memory.limit_in_bytes": "2147483648"}, 1 << 30, true, false},
		{"v2 own cgroup", v2Nested, map[string]string{
			"system.slice/axon.service/memory.max": "1073741824",
			"system.slice/memory.max":              "max",
		}, 1 << 30, true, false},
		{"v2 smallest ancestor", v2Nested, map[string]string{
			"system.slice/axon.service/memory.max": "max",
			"system.slice/memory.max":              "536870912",
		}, 512 << 20, true, false},
		{"v1 own cgroup", v1Nested, map[string]string{
			"memory/kubepods/pod1/c1/memory.limit_in_bytes": "2147483648",
			"memory/kubepods/pod1/memory.limit_in_bytes":    "3221225472",
			"memory/memory.limit_in_bytes":                  "9223372036854771712",
		}, 2 << 30, true, false},
		{"path missing under root (no cgroup namespace)", v2Nested, map[string]string{"memory.max": "2147483648"}, 2 << 30, true, false},
		{"garbage", v2Root, map[string]string{"memory.max": "lots\n"}, 0, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := cgroupMemoryLimit(cgroupDir(t, tc.files), tc.proc)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if got != tc.want || ok != tc.ok {
				t.Errorf("got %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestMemoryLimitResolve(t *testing.T) {
	limited := cgroupDir(t, map[string]string{"memory.max": "4294967296"})
	unlimited := cgroupDir(t, map[string]string{"memory.max": "max"})
	fraction := cgroupFraction // a variable: the constant product is not an integer
	autoLimit := int64(float64(4<<30) * fraction)
	for _, tc := range []struct {
		name       string
		flag       string
		root       string
		gomemlimit bool
		want       int64
	}{
		{"auto in a limited cgroup", "auto", limited, false, autoLimit},
		{"auto without a cgroup limit", "auto", unlimited, false, -1},
		{"auto keeps GOMEMLIMIT", "auto", limited, true, -1},
		{"explicit wins over the cgroup", "2GiB", limited, false, 2 << 30},
		{"explicit wins over GOMEMLIMIT", "512MiB", limited, true, 512 << 20},
		{"zero is none", "0", limited, false, math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m memoryLimitValue
			if err := m.Set(tc.flag); err != nil {
				t.Fatal(err)
			}
			got, source, err := m.resolve(tc.root, "0::/\n", tc.gomemlimit)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("limit = %d (%s), want %d", got, source, tc.want)
			}
		})
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1048576": 1 << 20, "2GiB": 2 << 30, "2Gi": 2 << 30, "2G": 2 << 30,
		"1536MiB": 1536 << 20, "1.5GiB": 3 << 29, "512 MiB": 512 << 20, "2GB": 2e9, "64k": 64 << 10,
	} {
		got, err := parseBytes(in)
		if err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1GiB", "2XB", "lots", "1e30"} {
		if got, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) = %d, want an error", in, got)
		}
	}
}

// TestServeMemoryLimit checks that the flag and its variable reach the
// runtime (and restores the test process's limit afterwards).
func TestServeMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	_, out, err := parseServe(t, []string{"AXON_MEMORY_LIMIT=768MiB"})
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := debug.SetMemoryLimit(-1); got != 768<<20 {
		t.Errorf("limit from AXON_MEMORY_LIMIT = %d, want %d", got, 768<<20)
	}
	if !strings.Contains(out, "limit=768MiB") {
		t.Errorf("log does not mention the limit:\n%s", out)
	}

	if _, out, err = parseServe(t, []string{"AXON_MEMORY_LIMIT=768MiB"}, "--memory-limit", "1GiB"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := debug.SetMemoryLimit(-1); got != 1<<30 {
		t.Errorf("limit from --memory-limit = %d, want %d", got, 1<<30)
	}

	if _, out, err = parseServe(t, nil, "--memory-limit", "0"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("limit after --memory-limit 0 = %d, want none", got)
	}

	if _, out, err = parseServe(t, nil, "--memory-limit", "lots"); err == nil {
		t.Errorf("--memory-limit lots accepted:\n%s", out)
	}
}

// TestServeGCPercent checks the collector's target: the default, GOGC
// winning over the default, and the flag winning over GOGC.
func TestServeGCPercent(t *testing.T) {
	// A value that is neither the default nor Go's, so that setting and
	// leaving alone are told apart.
	const other = 77
	prev := debug.SetGCPercent(other)
	t.Cleanup(func() { debug.SetGCPercent(prev) })

	if _, out, err := parseServe(t, nil); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := debug.SetGCPercent(other); got != defaultGCPercent {
		t.Errorf("GC percent by default = %d, want %d", got, defaultGCPercent)
	}

	t.Setenv("GOGC", "100") // the runtime read GOGC at start; Axon only must not override it
	_, out, err := parseServe(t, nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := debug.SetGCPercent(other); got != other {
		t.Errorf("GC percent with GOGC set = %d, want it left alone (%d)", got, other)
	}
	if !strings.Contains(out, "source=GOGC") {
		t.Errorf("log does not say GOGC was used:\n%s", out)
	}

	if _, out, err := parseServe(t, nil, "--gc-percent", "30"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := debug.SetGCPercent(other); got != 30 {
		t.Errorf("GC percent from --gc-percent 30 = %d, want 30", got)
	}
}

func TestReadBudgetBytes(t *testing.T) {
	for _, c := range []struct {
		v       memoryLimitValue
		goLimit int64
		want    int64
	}{
		{memoryLimitValue{auto: true}, 2 << 30, 256 << 20},
		{memoryLimitValue{auto: true}, math.MaxInt64, 0}, // the server's default
		{memoryLimitValue{bytes: 0}, 2 << 30, -1},        // no bound
		{memoryLimitValue{bytes: 100 << 20}, 2 << 30, 100 << 20},
	} {
		if got := readBudgetBytes(c.v, c.goLimit); got != c.want {
			t.Errorf("readBudgetBytes(%v, %d) = %d, want %d", c.v.String(), c.goLimit, got, c.want)
		}
	}
}
