package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// --memory-limit sets the Go runtime's soft memory limit
// (debug.SetMemoryLimit). Without one the garbage collector lets the heap
// grow to twice the live data before collecting, so a store whose engine
// keeps ~1 GiB live can reach 2 GiB of heap; with one it collects harder as
// the process nears the limit instead of growing past it. It is soft: the
// process is never refused memory, so a live set above the limit still runs
// (with the GC working continuously), it is not an OOM guard.

// cgroupFraction is the share of a cgroup memory limit the Go runtime
// aims to stay under by default. The rest is headroom for what the runtime
// does not count: the mmapped tables and value log pages the kernel charges
// to the cgroup, thread stacks, and the heap overshooting between cycles.
const cgroupFraction = 0.85

// cgroupUnlimited is the smallest limit read as "no limit": cgroup v1
// reports an unset limit as a huge page-aligned number (0x7ffffffffffff000).
const cgroupUnlimited = 1 << 60

// cgroupRoot is where the cgroup file systems are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// memoryLimitValue is --memory-limit: "auto", "0" (none) or a size such as
// 2GiB, 1536MiB, 2G or plain bytes.
type memoryLimitValue struct {
	auto  bool
	bytes int64
}

func (m *memoryLimitValue) String() string {
	switch {
	case m.auto:
		return "auto"
	case m.bytes == 0:
		return "0"
	}
	return formatBytes(m.bytes)
}

func (m *memoryLimitValue) Type() string { return "size" }

func (m *memoryLimitValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "auto") {
		*m = memoryLimitValue{auto: true}
		return nil
	}
	n, err := parseBytes(s)
	if err != nil {
		return err
	}
	*m = memoryLimitValue{bytes: n}
	return nil
}

// parseBytes reads a non-negative size: an integer number of bytes, or a
// number with a unit: KiB, MiB, GiB, TiB (powers of 1024), KB, MB, GB, TB
// (powers of 1000); K, M, G, T alone mean the binary units, as in GOMEMLIMIT
// and Kubernetes' Mi/Gi.
func parseBytes(s string) (int64, error) {
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	mult := 0.0
	switch strings.ToLower(unit) {
	case "", "b":
		mult = 1
	case "k", "ki", "kib":
		mult = 1 << 10
	case "m", "mi", "mib":
		mult = 1 << 20
	case "g", "gi", "gib":
		mult = 1 << 30
	case "t", "ti", "tib":
		mult = 1 << 40
	case "kb":
		mult = 1e3
	case "mb":
		mult = 1e6
	case "gb":
		mult = 1e9
	case "tb":
		mult = 1e12
	default:
		return 0, fmt.Errorf("unknown unit %q (want auto, 0, or a size such as 2GiB, 512MiB)", unit)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a size (want auto, 0, or a size such as 2GiB, 512MiB)", s)
	}
	v *= mult
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(v), nil
}

func formatBytes(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	if n >= 1<<20 {
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + "MiB"
	}
	return strconv.FormatInt(n, 10)
}

// cgroupMemoryLimit returns the memory limit of the cgroup this process
// runs in, the smallest set on it or any ancestor: cgroup v2's memory.max,
// else v1's memory.limit_in_bytes, found under root along the paths
// procCgroup (the text of /proc/self/cgroup) names. Inside a container
// with its own cgroup namespace those paths are "/" and the files at root
// are the container's; a path that does not exist under root (a container
// without one) falls back to root's files. ok is false when no limit is
// set ("max", or v1's huge "unlimited" number).
func cgroupMemoryLimit(root, procCgroup string) (limit int64, ok bool, err error) {
	var v1, v2 string
	for _, line := range strings.Split(procCgroup, "\n") {
		f := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[0] == "0" && f[1] == "":
			v2 = f[2]
		case slices.Contains(strings.Split(f[1], ","), "memory"):
			v1 = f[2]
		}
	}
	for _, c := range []struct{ dir, path, file string }{
		{root, v2, "memory.max"},
		{filepath.Join(root, "memory"), v1, "memory.limit_in_bytes"},
	} {
		limit, ok, found, err := smallestLimit(c.dir, c.path, c.file)
		if err != nil || found {
			return limit, ok, err
		}
	}
	return 0, false, nil
}

// smallestLimit reads file in dir/path and each of its ancestors up to dir
// and returns the smallest limit set; found is false when dir has no such
// file at all (that cgroup version is not mounted there).
func smallestLimit(dir, path, file string) (limit int64, ok, found bool, err error) {
	path = filepath.Clean("/" + path)
	for {
		n, set, exists, err := readCgroupLimit(filepath.Join(dir, path, file))
		if err != nil {
			return 0, false, false, err
		}
		found = found || exists
		if set && (!ok || n < limit) {
			limit, ok = n, true
		}
		if path == "/" {
			return limit, ok, found, nil
		}
		path = filepath.Dir(path)
	}
}

func readCgroupLimit(p string) (limit int64, set, exists bool, err error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, false, nil
	}
	if err != nil {
		return 0, false, false, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, false, true, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		if u, uerr := strconv.ParseUint(s, 10, 64); uerr == nil && u > math.MaxInt64 {
			return 0, false, true, nil // larger than any machine: unlimited
		}
		return 0, false, false, fmt.Errorf("%s: %q is not a byte count", p, s)
	}
	if n <= 0 || n >= cgroupUnlimited {
		return 0, false, true, nil
	}
	return n, true, true, nil
}

// resolve turns the option into the limit to set and where it came from,
// for the log. A negative limit leaves the runtime's as it is (none, or
// GOMEMLIMIT's); math.MaxInt64 is no limit.
func (m memoryLimitValue) resolve(root, procCgroup string, gomemlimitSet bool) (limit int64, source string, err error) {
	if !m.auto {
		if m.bytes == 0 {
			return math.MaxInt64, "--memory-limit 0", nil
		}
		return m.bytes, "--memory-limit", nil
	}
	if gomemlimitSet {
		// The operator set the runtime's own variable; auto respects it.
		return -1, "GOMEMLIMIT", nil
	}
	cg, ok, err := cgroupMemoryLimit(root, procCgroup)
	if err != nil {
		return 0, "", fmt.Errorf("--memory-limit auto: reading the cgroup memory limit: %w", err)
	}
	if !ok {
		return -1, "no cgroup memory limit", nil
	}
	return int64(float64(cg) * cgroupFraction),
		fmt.Sprintf("%.0f%% of the cgroup memory limit %s", cgroupFraction*100, formatBytes(cg)), nil
}

// applyMemoryLimit resolves and sets the Go soft memory limit and logs the
// outcome.
func applyMemoryLimit(m memoryLimitValue, log *slog.Logger) error {
	current := debug.SetMemoryLimit(-1)
	procCgroup, _ := os.ReadFile("/proc/self/cgroup") // absent off Linux: root's files only
	limit, source, err := m.resolve(cgroupRoot, string(procCgroup), current != math.MaxInt64 && os.Getenv("GOMEMLIMIT") != "")
	if err != nil {
		return err
	}
	if limit >= 0 {
		debug.SetMemoryLimit(limit)
		current = limit
	}
	if current == math.MaxInt64 {
		log.Info("no Go memory limit", "source", source)
		return nil
	}
	log.Info("Go memory limit", "limit", formatBytes(current), "bytes", current, "source", source)
	return nil
}

// defaultGCPercent is --gc-percent's default: Go's own. It was 50 while
// the key index was a million small objects on the heap (at a million keys
// the headroom of 100 was about 300 MiB of resident memory, mostly index
// garbage-in-waiting). The index is now a few pointer-free slices (30
// bytes per key), the live heap is small, and the collections that 50
// cost showed: at 100, creates ran 1.22× etcd instead of 1.04× in the
// same run, and the RSS after a million creates was 298 MiB instead of
// 224 (etcd 734).
const defaultGCPercent = 100

// applyGCPercent sets the collector's target: the flag when given, else
// GOGC when the operator set it, else the default.
func applyGCPercent(percent int, explicit bool, log *slog.Logger) {
	if !explicit {
		if v := os.Getenv("GOGC"); v != "" {
			log.Info("Go GC target", "gogc", v, "source", "GOGC")
			return
		}
	}
	debug.SetGCPercent(percent)
	log.Info("Go GC target", "percent", percent, "source", map[bool]string{true: "--gc-percent", false: "default"}[explicit])
}

// readBudgetBytes resolves --max-read-bytes-in-flight for the server
// config: auto is an eighth of the Go memory limit when one is set (the
// rest is the index, the engine and the collector's headroom), else the
// server's default; 0 means no bound (negative in the config).
func readBudgetBytes(v memoryLimitValue, goLimit int64) int64 {
	switch {
	case v.auto && goLimit != math.MaxInt64:
		return goLimit / 8
	case v.auto:
		return 0 // the server's default
	case v.bytes == 0:
		return -1
	}
	return v.bytes
}
