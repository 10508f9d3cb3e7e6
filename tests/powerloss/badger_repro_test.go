package powerloss

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	badgerdb "github.com/dgraph-io/badger/v4"

	"github.com/axon-kv/axon/internal/lazyfs"
)

// TestBadgerFlushPowerLoss is the minimal reproduction of what the strict
// run of TestPowerLoss finds, on Badger alone: a memtable flush creates a
// table file, syncs its data, and records it in the MANIFEST (synced), but
// never fsyncs the directory, so the table's name is not durable. A power
// cut then leaves a MANIFEST naming a table that does not exist, and
// Badger cannot open: every write acknowledged before the flush is out of
// reach. (z.OpenMmapFileUsing in ristretto means to sync the directory of
// a new file, but tests fileSize == 0 after setting fileSize to the new
// size, so it never does; Badger's compaction syncs the directory after
// building tables, its memtable flush does not.)
//
// With ordered metadata (ext4, XFS: the MANIFEST fsync also commits the
// earlier creation of the table) the same sequence is safe, and that
// subtest must pass. The strict subtest fails on Badger v4.9.6 and runs
// only with POWERLOSS_STRICT=1.
func TestBadgerFlushPowerLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts FUSE and runs a child process; skipped with -short")
	}
	if err := lazyfs.Usable(); err != nil {
		t.Skipf("FUSE not usable here: %v", err)
	}
	for _, strict := range []bool{false, true} {
		name := "ordered"
		if strict {
			name = "strict"
		}
		t.Run(name, func(t *testing.T) {
			if strict && os.Getenv("POWERLOSS_STRICT") != "1" {
				t.Skip("fails on Badger v4.9.6 (the flushed table's directory entry is never fsynced); run with POWERLOSS_STRICT=1")
			}
			badgerFlushPowerLoss(t, lazyfs.Options{OrderedMetadata: !strict})
		})
	}
}

func badgerFlushPowerLoss(t *testing.T, opts lazyfs.Options) {
	root := t.TempDir()
	backing, mnt := filepath.Join(root, "backing"), filepath.Join(root, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fs, err := lazyfs.Mount(backing, mnt, opts)
	if err != nil {
		t.Skipf("FUSE mount refused here: %v", err)
	}
	t.Cleanup(func() { fs.CutPower(); _ = fs.Unmount() })

	// Badger runs in a child process, so that it can be killed at the cut
	// like a machine losing power.
	cmd := exec.Command(os.Args[0], "-test.run=^TestBadgerReproChild$", "-test.v")
	cmd.Env = append(os.Environ(), "BADGER_REPRO_DIR="+mnt)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	acked := -1
	var said []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "ACKED %d", &acked); err == nil {
			break
		}
		said = append(said, sc.Text())
	}
	if acked < 0 {
		t.Fatalf("the child never reported its acknowledged writes: %v\n%s", cmd.Wait(), strings.Join(said, "\n"))
	}
	pending := fs.Pending()
	fs.CutPower()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err := fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	t.Logf("power cut after %d acknowledged writes (SyncWrites) and one memtable flush; not durable at the cut:\n%s", acked, strings.Join(pending, "\n"))

	db, err := badgerdb.Open(badgerdb.DefaultOptions(backing).WithLogger(nil))
	if err != nil {
		t.Fatalf("Badger does not open after the power cut, %d acknowledged writes out of reach: %v", acked, err)
	}
	defer db.Close()
	missing := 0
	err = db.View(func(txn *badgerdb.Txn) error {
		for i := range acked {
			if _, err := txn.Get(reproKey(i)); err != nil {
				missing++
			}
		}
		return nil
	})
	if err != nil || missing > 0 {
		t.Fatalf("%d of %d acknowledged writes missing after the power cut (%v)", missing, acked, err)
	}
}

func reproKey(i int) []byte { return fmt.Appendf(nil, "key-%06d", i) }

// TestBadgerReproChild is the child of TestBadgerFlushPowerLoss: it writes
// with SyncWrites through the mount until a memtable flush has finished
// (a table file exists and the flushed memtable's WAL is deleted), prints
// how many writes were acknowledged, and waits to be killed.
func TestBadgerReproChild(t *testing.T) {
	dir := os.Getenv("BADGER_REPRO_DIR")
	if dir == "" {
		t.Skip("child process of TestBadgerFlushPowerLoss")
	}
	db, err := badgerdb.Open(badgerdb.DefaultOptions(dir).WithSyncWrites(true).
		WithMemTableSize(1 << 20).WithValueThreshold(1 << 10).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	val := []byte(strings.Repeat("v", 512))
	flushed := func() bool {
		_, memErr := os.Stat(filepath.Join(dir, "00001.mem"))
		ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
		return len(ssts) > 0 && os.IsNotExist(memErr)
	}
	n := 0
	for ; n < 1_000_000 && !flushed(); n++ {
		if err := db.Update(func(txn *badgerdb.Txn) error { return txn.Set(reproKey(n), val) }); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Printf("ACKED %d\n", n)
	select {} // killed by the parent at the power cut
}
