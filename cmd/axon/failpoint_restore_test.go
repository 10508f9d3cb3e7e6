//go:build failpoints

// Needs the failpoints compiled in: run by `make failpoints-test`.

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	gofail "go.etcd.io/gofail/runtime"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// TestFailpointSnapshotRestore fails a restore after its records are
// loaded but before the last batch is written (snapshotRestoreBeforeFlush):
// the command fails and leaves no store behind that `axon serve` would
// open as a whole one; the same restore then succeeds.
func TestFailpointSnapshotRestore(t *testing.T) {
	_, c := testenv.StartAxon(t, server.Config{Backend: "badger"})
	ctx := context.Background()
	for i := 0; i < 3000; i++ {
		if _, err := c.Put(ctx, fmt.Sprintf("/registry/pods/p%05d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "axon.snap")
	if out, err := runAxon(t, "snapshot", "save", file, "--endpoints", c.Endpoints()[0]); err != nil {
		t.Fatalf("snapshot save: %v\n%s", err, out)
	}
	if err := gofail.Enable("snapshotRestoreBeforeFlush", "return"); err != nil {
		t.Fatalf("enable: %v (is the tree gofail-enabled?)", err)
	}
	dataDir := filepath.Join(dir, "restored")
	if _, err := runAxon(t, "snapshot", "restore", file, "--data-dir", dataDir); err == nil {
		t.Fatal("restore succeeded through the failpoint")
	}
	if _, n, _ := gofail.Status("snapshotRestoreBeforeFlush"); n == 0 {
		t.Fatal("the failpoint did not fire")
	}
	if _, err := os.Stat(filepath.Join(dataDir, "badger")); err == nil {
		t.Fatal("a failed restore left a store behind")
	}
	gofail.Disable("snapshotRestoreBeforeFlush")

	// A restore that crashes there (a real process, killed by the
	// failpoint's panic) leaves only its partial copy, never a store.
	bin := testenv.BuildAxon(t) // this tree has the failpoints enabled
	crashed := filepath.Join(dir, "crashed")
	cmd := exec.Command(bin, "snapshot", "restore", file, "--data-dir", crashed)
	cmd.Env = append(os.Environ(), `GOFAIL_FAILPOINTS=snapshotRestoreBeforeFlush=panic("restore crash")`)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "restore crash") {
		t.Fatalf("restore did not crash at the failpoint: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(crashed, "badger")); err == nil {
		t.Fatal("a restore killed midway left a store axon serve would open")
	}

	if out, err := runAxon(t, "snapshot", "restore", file, "--data-dir", dataDir); err != nil {
		t.Fatalf("restore after the failure: %v\n%s", err, out)
	}
}
