package server_test

// etcdctl parity: the same etcdctl command sequence (put, get --prefix
// --rev, -w json/fields, txn from stdin (interactive and not), watch --rev
// as a subprocess, lease grant/keep-alive --once/timetolive --keys/list/
// revoke, compaction, del) runs against embedded etcd and Axon, and the
// outputs — stdout, stderr and exit status — must be the same once the
// member-specific parts are normalised: cluster_id, member_id, raft_term,
// the generated lease ID, the endpoint URL, timings and the remaining TTL.
//
// It needs etcdctl on PATH (Debian's etcd-client, installed by .ci/run);
// without it the test is skipped.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// ctlTarget is one server as etcdctl sees it.
type ctlTarget struct {
	name     string
	endpoint string // host:port
	lease    int64  // the lease ID granted by the sequence
}

type ctlOut struct {
	Stdout, Stderr string
	Exit           int
}

func (o ctlOut) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", o.Exit, o.Stdout, o.Stderr)
}

func ctlEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCDCTL_") {
			env = append(env, kv)
		}
	}
	return append(env, "ETCDCTL_API=3")
}

func (c *ctlTarget) args(args []string) []string {
	out := []string{"--endpoints=" + c.endpoint, "--dial-timeout=5s", "--command-timeout=10s"}
	for _, a := range args {
		out = append(out, strings.ReplaceAll(a, "{LEASE}", strconv.FormatInt(c.lease, 16)))
	}
	return out
}

// run runs etcdctl to completion.
func (c *ctlTarget) run(t *testing.T, stdin string, args ...string) ctlOut {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "etcdctl", c.args(args)...)
	cmd.Env = ctlEnv()
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := ctlOut{Stdout: stdout.String(), Stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%s: etcdctl %v: %v", c.name, args, err)
		}
		out.Exit = ee.ExitCode()
	}
	return out
}

// watch runs `etcdctl watch ...` and returns its output once it has printed
// wantLines lines, or (wantLines < 0) once it has been quiet for a second,
// or it exits; at most 8 seconds. The process is then killed.
func (c *ctlTarget) watch(t *testing.T, wantLines int, args ...string) ctlOut {
	t.Helper()
	cmd := exec.Command("etcdctl", c.args(append([]string{"watch"}, args...))...)
	cmd.Env = ctlEnv()
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start etcdctl watch: %v", c.name, err)
	}
	lines := make(chan string)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(lines)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var got []string
	deadline := time.After(8 * time.Second)
	exited := false
loop:
	for wantLines < 0 || len(got) < wantLines {
		quiet := time.After(time.Second)
		if wantLines >= 0 {
			quiet = nil
		}
		select {
		case l, ok := <-lines:
			if !ok {
				exited = true
				break loop
			}
			got = append(got, l)
		case <-quiet:
			break loop
		case <-deadline:
			break loop
		}
	}
	if !exited {
		_ = cmd.Process.Kill()
		for range lines {
		}
	}
	wg.Wait()
	err = cmd.Wait()
	out := ctlOut{Stdout: strings.Join(got, "\n") + "\n", Stderr: stderr.String()}
	if exited {
		if ee, ok := err.(*exec.ExitError); ok {
			out.Exit = ee.ExitCode()
		}
	} else {
		out.Exit = -1 // still running: killed
	}
	return out
}

var (
	ctlMemberFields = regexp.MustCompile(`"(cluster_id|member_id|raft_term)":\d+`)
	ctlFieldsHeader = regexp.MustCompile(`(?m)^"(ClusterID|MemberID|RaftTerm)" : \d+$`)
	ctlRemaining    = regexp.MustCompile(`remaining\((\d+)s\)`)
	ctlJSONTTL      = regexp.MustCompile(`"ttl":(\d+)`)
	ctlTook         = regexp.MustCompile(`took = [0-9.]+[µnm]?s`)
	// etcdctl's own client log lines carry a time stamp and a client UUID.
	ctlLogTS    = regexp.MustCompile(`"ts":"[^"]*"`)
	ctlAttached = regexp.MustCompile(`attached keys\(\[([^\]]*)\]\)`)
	ctlJSONKeys = regexp.MustCompile(`"keys":\[([^\]]*)\]`)
	ctlClientID = regexp.MustCompile(`client-[0-9a-f-]{36}`)
)

// norm removes what legitimately differs between two servers.
func (c *ctlTarget) norm(o ctlOut) ctlOut {
	f := func(s string) string {
		s = ctlMemberFields.ReplaceAllString(s, `"$1":0`)
		s = ctlFieldsHeader.ReplaceAllString(s, `"$1" : 0`)
		if c.lease != 0 {
			s = strings.ReplaceAll(s, fmt.Sprintf("%016x", c.lease), "<lease>")
			s = strings.ReplaceAll(s, strconv.FormatInt(c.lease, 16), "<lease>")
			s = strings.ReplaceAll(s, strconv.FormatInt(c.lease, 10), "<lease>")
		}
		s = strings.ReplaceAll(s, c.endpoint, "<endpoint>")
		s = ctlTook.ReplaceAllString(s, "took = <t>")
		s = ctlLogTS.ReplaceAllString(s, `"ts":"<ts>"`)
		s = ctlClientID.ReplaceAllString(s, "client-<id>")
		// A remaining TTL counts down: a second apart is the same answer.
		s = ctlRemaining.ReplaceAllStringFunc(s, func(m string) string {
			n, _ := strconv.Atoi(ctlRemaining.FindStringSubmatch(m)[1])
			return fmt.Sprintf("remaining(%s)", ctlTTLBucket(n))
		})
		// etcd lists a lease's attached keys in no particular order.
		s = ctlAttached.ReplaceAllStringFunc(s, func(m string) string {
			keys := strings.Fields(ctlAttached.FindStringSubmatch(m)[1])
			slices.Sort(keys)
			return "attached keys([" + strings.Join(keys, " ") + "])"
		})
		s = ctlJSONKeys.ReplaceAllStringFunc(s, func(m string) string {
			keys := strings.Split(ctlJSONKeys.FindStringSubmatch(m)[1], ",")
			slices.Sort(keys)
			return `"keys":[` + strings.Join(keys, ",") + "]"
		})
		s = ctlJSONTTL.ReplaceAllStringFunc(s, func(m string) string {
			n, _ := strconv.Atoi(ctlJSONTTL.FindStringSubmatch(m)[1])
			return fmt.Sprintf(`"ttl":"%s"`, ctlTTLBucket(n))
		})
		return s
	}
	return ctlOut{Stdout: f(o.Stdout), Stderr: f(o.Stderr), Exit: o.Exit}
}

// ctlTTLBucket maps a remaining TTL of the 60 s lease to "~60".
func ctlTTLBucket(n int) string {
	if n >= 50 && n <= 61 {
		return "~60"
	}
	return strconv.Itoa(n)
}

var ctlLeaseGranted = regexp.MustCompile(`^lease ([0-9a-f]+) granted with TTL\((\d+)s\)`)

func TestEtcdctlParity(t *testing.T) {
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("etcdctl not on PATH (install Debian's etcd-client, as .ci/run does): skipping the etcdctl parity test")
	}
	ver, err := exec.Command("etcdctl", "version").CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl version: %v\n%s", err, ver)
	}
	t.Logf("%s", strings.ReplaceAll(strings.TrimSpace(string(ver)), "\n", "; "))

	etcd := testenv.StartEtcd(t)
	_, axon := testenv.StartAxon(t, server.Config{})
	targets := []*ctlTarget{
		{name: "etcd", endpoint: strings.TrimPrefix(etcd.Endpoints()[0], "http://")},
		{name: "axon", endpoint: strings.TrimPrefix(axon.Endpoints()[0], "http://")},
	}
	// Both start at revision 1, so revisions in the commands are the same.
	steps := 0
	mismatches := 0
	compare := func(what string, outs [2]ctlOut) {
		t.Helper()
		steps++
		a, b := targets[0].norm(outs[0]), targets[1].norm(outs[1])
		if a != b {
			mismatches++
			t.Errorf("%s: outputs differ\n=== etcd (normalised)\n%s=== axon (normalised)\n%s", what, a, b)
		} else if testing.Verbose() {
			t.Logf("%s: same output (exit %d, %d bytes)", what, a.Exit, len(a.Stdout)+len(a.Stderr))
		}
	}
	step := func(stdin string, args ...string) [2]ctlOut {
		t.Helper()
		var outs [2]ctlOut
		for i, c := range targets {
			outs[i] = c.run(t, stdin, args...)
		}
		compare("etcdctl "+strings.Join(args, " "), outs)
		return outs
	}
	watch := func(args ...string) {
		t.Helper()
		var outs [2]ctlOut
		outs[0] = targets[0].watch(t, -1, args...)
		n := strings.Count(outs[0].Stdout, "\n")
		if outs[0].Stdout == "\n" {
			n = -1
		}
		outs[1] = targets[1].watch(t, n, args...)
		if outs[0].Exit == -1 && outs[1].Exit == -1 {
			outs[0].Exit, outs[1].Exit = 0, 0 // both still watching
		}
		compare("etcdctl watch "+strings.Join(args, " "), outs)
	}

	step("", "put", "foo", "bar")               // revision 2
	step("", "put", "foo/a", "1")               // 3
	step("", "put", "foo/b", "2")               // 4
	step("", "put", "foo", "bar2", "--prev-kv") // 5
	step("", "put", "foo/b", "--ignore-value")  // 6
	step("", "get", "foo", "--prefix")
	step("", "get", "foo", "--prefix", "--rev=3")
	step("", "get", "foo", "-w", "json")
	step("", "get", "foo", "--prefix", "--rev=4", "-w", "json")
	step("", "get", "foo", "-w", "fields")
	step("", "get", "", "--from-key", "--keys-only")
	step("", "get", "foo", "--prefix", "--limit=2", "--sort-by=MODIFY", "--order=DESCEND")
	step("", "get", "foo", "--prefix", "--count-only", "-w", "json")
	step("", "get", "foo/a", "foo/c", "--print-value-only")
	step("", "get", "missing")
	step("", "get", "foo", "--rev=1000")

	// Transactions: compares, blank line, success ops, blank line, failure
	// ops, blank line.
	step("mod(\"foo\") > \"0\"\n\nput foo/c 3\nget foo --prefix\n\nput foo/d 4\n\n", "txn", "--interactive")
	step("value(\"foo\") = \"nope\"\n\nput foo/x 1\n\nput foo/e 5\nget foo/e\n\n", "txn")
	step("version(\"foo/a\") = \"1\"\ncreate(\"foo/b\") = \"4\"\n\ndel foo/x\nput foo/f 6\n\n\n", "txn", "-w", "json")
	step("value(\"foo\") = \"bar2\"\n\n\n\n", "txn")

	// Watches from past revisions, as a subprocess.
	watch("--rev=2", "foo", "--prefix")
	watch("--rev=4", "foo", "--prefix", "--prev-kv")
	// -w json shows the response header: for events a watcher catches up
	// on, etcd sends the store's revision at the time it catches up
	// (storage/mvcc/watchable_store.go syncWatchers: Revision: curRev), so
	// here 9, the revision when the watch starts, not 7, the event's.
	watch("--rev=6", "foo/c", "-w", "json")

	// Leases. The IDs are generated by each server.
	var outs [2]ctlOut
	for i, c := range targets {
		outs[i] = c.run(t, "", "lease", "grant", "60")
		m := ctlLeaseGranted.FindStringSubmatch(outs[i].Stdout)
		if m == nil {
			t.Fatalf("%s: lease grant printed %q", c.name, outs[i].Stdout)
		}
		id, _ := strconv.ParseInt(m[1], 16, 64)
		c.lease = id
	}
	compare("etcdctl lease grant 60", outs)
	step("", "put", "foo/l", "lv", "--lease={LEASE}")
	step("", "put", "foo/m", "mv", "--lease={LEASE}")
	step("", "lease", "keep-alive", "--once", "{LEASE}")
	step("", "lease", "timetolive", "{LEASE}", "--keys")
	step("", "lease", "timetolive", "{LEASE}", "--keys", "-w", "json")
	step("", "lease", "list")
	step("", "get", "foo/l", "-w", "json")
	step("", "lease", "revoke", "{LEASE}")
	step("", "lease", "timetolive", "{LEASE}")
	step("", "lease", "keep-alive", "--once", "{LEASE}")
	step("", "lease", "revoke", "{LEASE}")
	step("", "get", "foo/l")
	step("", "put", "foo/n", "nv", "--lease={LEASE}")
	// A lease nothing else refers to: only its TTL (raised to the minimum,
	// 2s on both) is compared.
	for i, c := range targets {
		outs[i] = c.run(t, "", "lease", "grant", "1")
		outs[i].Stdout = ctlLeaseGranted.ReplaceAllString(outs[i].Stdout, "lease <other> granted with TTL(${2}s)")
	}
	compare("etcdctl lease grant 1", outs)
	watch("--rev=7", "foo/l", "--prev-kv")

	// Compaction.
	step("", "compaction", "5")
	step("", "get", "foo", "--rev=3")
	step("", "get", "foo", "--prefix", "--rev=5")
	step("", "compaction", "4")
	watch("--rev=3", "foo")
	step("", "compaction", "6", "--physical")
	step("", "compaction", "1000")

	// Deletes.
	step("", "del", "foo/a", "--prev-kv")
	step("", "del", "foo/c", "foo/f")
	step("", "del", "foo", "--prefix")
	step("", "del", "nothing")
	step("", "get", "", "--from-key", "-w", "json")
	step("", "endpoint", "health")

	t.Logf("%d etcdctl steps compared, %d differ", steps, mismatches)
}
