// Package storage_test runs kube-apiserver's storage tests — the exported
// generic tests of k8s.io/apiserver/pkg/storage/testing over the etcd3 store
// — against Axon, and the same against a real etcd as the control.
//
// TestStorageSuite runs each target in a child process (this test binary,
// TestStorageTarget), so feature-gate and feature-support state never mixes
// between targets and a crash or hang of one case only loses that case. Any
// case that fails on Axon but passes on etcd is a finding and fails the
// suite.
package storage_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/grpclog"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/component-base/featuregate"
	featuregatetesting "k8s.io/component-base/featuregate/testing"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

const (
	envTarget = "E2E_STORAGE_TARGET" // set in the child: axon or etcd
	envCases  = "E2E_STORAGE_CASES"  // comma-separated case names (child); a regexp filter (parent)
	envDir    = "E2E_STORAGE_DIR"
	// envTargets limits the parent to some targets, e.g. "axon".
	envTargets = "E2E_STORAGE_TARGETS"
	// caseTimeout bounds one case; a case past it is reported as hung.
	caseTimeout = 4 * time.Minute
)

func init() {
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
}

func setGate(t *testing.T, f featuregate.Feature, v bool) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, f, v)
}

// orderedCases puts the compacting cases last.
func orderedCases() []storageCase {
	var first, last []storageCase
	for _, c := range storageCases() {
		if c.compacts {
			last = append(last, c)
		} else {
			first = append(first, c)
		}
	}
	return append(first, last...)
}

// TestStorageTarget is the child: it runs the selected cases, in order,
// against one target.
func TestStorageTarget(t *testing.T) {
	kind := harness.Kind(os.Getenv(envTarget))
	if kind == "" {
		t.Skip("run by TestStorageSuite")
	}
	dir := os.Getenv(envDir)
	if dir == "" {
		dir = harness.WorkDir(t, "storage-"+string(kind))
	}
	tg := &target{kind: kind, dir: dir}
	tg.shared = tg.newServer(t, "shared")
	for _, c := range selectCases(orderedCases(), os.Getenv(envCases)) {
		name := c.name
		timer := time.AfterFunc(caseTimeout, func() {
			fmt.Printf("E2E CASE TIMEOUT %s after %s\n", name, caseTimeout)
			os.Exit(3)
		})
		skipped := false
		start := time.Now()
		ok := t.Run(c.name, func(t *testing.T) {
			defer func() { skipped = t.Skipped() }()
			gateSet(t, c.gates)
			c.run(t, tg.newEnv(t, c.opts))
		})
		timer.Stop()
		status := map[bool]string{true: "pass", false: "fail"}[ok]
		if skipped {
			status = "skip"
		}
		// go test -v prints subtest results only when the parent ends; this
		// marker lets the parent attribute results even if the child dies.
		fmt.Printf("E2E CASE RESULT %s %s %s\n", name, status, time.Since(start).Round(time.Millisecond))
	}
}

type caseResult struct {
	status string // pass, fail, skip, crash, timeout, notrun
	dur    string
	text   []string
}

var (
	runLine    = regexp.MustCompile(`^=== RUN\s+TestStorageTarget/([^/\s]+)$`)
	resultLine = regexp.MustCompile(`^E2E CASE RESULT (\S+) (pass|fail|skip) (\S+)`)
	timeoutRe  = regexp.MustCompile(`^E2E CASE TIMEOUT (\S+)`)
)

// runTarget runs every case against kind, restarting the child after a
// crash or a hang, and returns the result of each case.
func runTarget(t *testing.T, kind harness.Kind, names []string, dir string) map[string]*caseResult {
	results := map[string]*caseResult{}
	logPath := filepath.Join(dir, "storage-"+string(kind)+".log")
	remaining := names
	for round := 1; len(remaining) > 0; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStorageTarget$", "-test.v", "-test.count=1", "-test.timeout=60m")
		cmd.Env = append(os.Environ(),
			envTarget+"="+string(kind),
			envCases+"="+strings.Join(remaining, ","),
			envDir+"="+filepath.Join(dir, fmt.Sprintf("%s-%d", kind, round)),
		)
		os.MkdirAll(filepath.Join(dir, fmt.Sprintf("%s-%d", kind, round)), 0o700)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = cmd.Stdout
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var current string
		var block []string
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if m := runLine.FindStringSubmatch(line); m != nil {
				current, block = m[1], nil
				continue
			}
			if m := resultLine.FindStringSubmatch(line); m != nil {
				results[m[1]] = &caseResult{status: m[2], dur: m[3], text: block}
				current, block = "", nil
				continue
			}
			if m := timeoutRe.FindStringSubmatch(line); m != nil {
				results[m[1]] = &caseResult{status: "timeout", text: append(block, line)}
				current = ""
				continue
			}
			if current != "" {
				block = append(block, line)
			}
		}
		waitErr := cmd.Wait()
		logf.Close()
		if current != "" {
			if _, ok := results[current]; !ok {
				results[current] = &caseResult{status: "crash", text: lastN(block, 40)}
			}
		}
		var next []string
		progressed := false
		for _, n := range remaining {
			if _, ok := results[n]; ok {
				progressed = true
				continue
			}
			next = append(next, n)
		}
		if len(next) > 0 && !progressed {
			for _, n := range next {
				results[n] = &caseResult{status: "notrun", text: []string{fmt.Sprintf("child exited (%v) before running it; see %s", waitErr, logPath)}}
			}
			next = nil
		}
		remaining = next
	}
	return results
}

func lastN(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// failureText is the case's output without the test runner's markers.
func failureText(r *caseResult) string {
	var keep []string
	for _, l := range r.text {
		tl := strings.TrimSpace(l)
		if tl == "" || strings.HasPrefix(tl, "=== ") {
			continue
		}
		if len(l) > 600 {
			l = l[:600] + " …"
		}
		keep = append(keep, l)
	}
	return strings.Join(lastN(keep, 40), "\n")
}

// TestStorageSuite runs the suite against etcd (control) and Axon and
// compares.
func TestStorageSuite(t *testing.T) {
	if os.Getenv(envTarget) != "" {
		t.Skip("child process")
	}
	var names []string
	filter := os.Getenv(envCases)
	var re *regexp.Regexp
	if filter != "" {
		re = regexp.MustCompile(filter)
	}
	for _, c := range orderedCases() {
		if re == nil || re.MatchString(c.name) {
			names = append(names, c.name)
		}
	}
	targets := []harness.Kind{harness.KindEtcd, harness.KindAxon}
	if s := os.Getenv(envTargets); s != "" {
		targets = nil
		for _, k := range strings.Split(s, ",") {
			targets = append(targets, harness.Kind(strings.TrimSpace(k)))
		}
	}
	// Build the binaries here, once, rather than in each child.
	for _, k := range targets {
		os.Setenv(map[harness.Kind]string{harness.KindAxon: harness.EnvAxonBin, harness.KindEtcd: harness.EnvEtcdBin}[k], harness.ServerBin(t, k))
	}
	dir := harness.WorkDir(t, "storage")
	all := map[harness.Kind]map[string]*caseResult{}
	for _, k := range targets {
		start := time.Now()
		res := runTarget(t, k, names, dir)
		all[k] = res
		counts := map[string]int{}
		var bad []string
		for _, n := range names {
			counts[res[n].status]++
			if res[n].status != "pass" && res[n].status != "skip" {
				bad = append(bad, n+"("+res[n].status+")")
			}
		}
		harness.Summary("storage-"+string(k), "%d cases in %s: %d passed, %d failed, %d skipped, %d crashed/hung/not run%s",
			len(names), time.Since(start).Round(time.Second), counts["pass"], counts["fail"], counts["skip"],
			counts["crash"]+counts["timeout"]+counts["notrun"], listIfAny(" — not passing: ", bad))
	}
	axon, etcd := all[harness.KindAxon], all[harness.KindEtcd]
	if axon == nil || etcd == nil {
		for k, res := range all {
			for _, n := range names {
				if r := res[n]; r.status != "pass" && r.status != "skip" {
					t.Errorf("%s: %s %s:\n%s", k, n, r.status, failureText(r))
				}
			}
		}
		return
	}
	var findings, both []string
	for _, n := range names {
		a, e := axon[n], etcd[n]
		aok := a.status == "pass" || a.status == "skip"
		eok := e.status == "pass" || e.status == "skip"
		switch {
		case !aok && eok:
			findings = append(findings, n)
			t.Errorf("FINDING: %s fails on Axon (%s) and passes on etcd:\n%s", n, a.status, failureText(a))
		case !aok && !eok:
			both = append(both, n)
			t.Logf("%s fails on both (axon %s, etcd %s); etcd:\n%s", n, a.status, e.status, failureText(e))
		case aok && !eok:
			t.Logf("%s passes on Axon but fails on etcd (%s):\n%s", n, e.status, failureText(e))
		}
	}
	sort.Strings(findings)
	harness.Summary("storage", "%d cases: %d findings (fail on Axon, pass on etcd)%s; %d fail on both%s",
		len(names), len(findings), listIfAny(": ", findings), len(both), listIfAny(": ", both))
}

func listIfAny(prefix string, s []string) string {
	if len(s) == 0 {
		return ""
	}
	return prefix + strings.Join(s, ", ")
}
