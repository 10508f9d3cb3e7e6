package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/axon-kv/axon/benchmark"
	"github.com/axon-kv/axon/benchmark/nullserver"
)

func execute(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := NewCommand("bench")
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

func TestWorkloadCommandJSONAndHTML(t *testing.T) {
	s, err := nullserver.Start("127.0.0.1:0", nullserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	html := filepath.Join(t.TempDir(), "r.html")
	out, errOut, err := execute(t, "update", "--endpoints", s.Addr(), "--total", "30", "--clients", "3",
		"--key-space", "10", "--json", "--html", html)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	var res benchmark.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out)
	}
	if p := res.Primary(); res.Workload != "update" || p.Ops != 30 || p.Errors != 0 || res.Clients != 3 {
		t.Fatalf("result %+v", res)
	}
	page, err := os.ReadFile(html)
	if err != nil || !bytes.Contains(page, []byte("<svg")) {
		t.Fatalf("html report: %v", err)
	}
	// Progress went to stderr as plain lines (not a terminal).
	if !strings.Contains(errOut, "[update]") || strings.Contains(errOut, "\r") {
		t.Fatalf("progress output %q", errOut)
	}
}

func TestCompareCommand(t *testing.T) {
	a, _ := nullserver.Start("127.0.0.1:0", nullserver.Options{})
	b, _ := nullserver.Start("127.0.0.1:0", nullserver.Options{})
	defer a.Stop()
	defer b.Stop()
	dir := t.TempDir()
	out, errOut, err := execute(t, "compare", "--quiet",
		"--target", "etcd="+a.Addr(), "--target", "null="+b.Addr()+",pid="+strconv.Itoa(os.Getpid()),
		"--suite", "quick", "--steps", "get-ser,memory", "--duration", "1s", "--objects", "1000",
		"--html", filepath.Join(dir, "r.html"), "--json", filepath.Join(dir, "r.json"))
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	for _, want := range []string{"get-ser", "memory", "etcd/null", "RSS MiB", "HTML report"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "r.json")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := execute(t, "compare", "--target", "x"); err == nil {
		t.Fatal("bad target accepted")
	}
}
