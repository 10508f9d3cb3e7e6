package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/server"
	"github.com/axon-kv/axon/witness"
)

// dumpStore reads every stored pair of a stopped data dir.
func dumpStore(t *testing.T, dataDir string) string {
	t.Helper()
	db, err := badger.Open(badger.Options{Dir: filepath.Join(dataDir, "badger")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	snap, err := db.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	var b strings.Builder
	err = snap.Scan([]byte{}, nil, backend.ScanOptions{}, func(k, v []byte) error {
		fmt.Fprintf(&b, "%x=%x\n", k, v)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// damage commits b's writes straight into a stopped data dir.
func damage(t *testing.T, dataDir string, fn func(b *backend.Batch)) {
	t.Helper()
	db, err := badger.Open(badger.Options{Dir: filepath.Join(dataDir, "badger")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b backend.Batch
	fn(&b)
	if err := db.Commit(&b); err != nil {
		t.Fatal(err)
	}
}

// TestCheckCommand runs `axon check` on the data dir of a real server:
// refused while the server runs, clean once it stopped (and the data
// untouched), failing with the problem named once a history entry is
// gone, and failing on a table whose bytes were flipped.
func TestCheckCommand(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	s, c := testenv.StartAxon(t, server.Config{Backend: "badger", DataDir: dataDir})
	w := testenv.WriteWorkload(t, c)

	out, err := runAxon(t, "check", dataDir)
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("check of a running member's dir: err %v\n%s", err, out)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	before := dumpStore(t, dataDir)
	out, err = runAxon(t, "check", dataDir)
	if err != nil {
		t.Fatalf("check of a sound store: %v\n%s", err, out)
	}
	t.Logf("axon check:\n%s", out)
	for _, want := range []string{
		dataDir + ": OK",
		fmt.Sprintf("revision:           %d\n", w.Revision),
		fmt.Sprintf("compacted revision: %d (physically compacted to %d)", w.Compacted, w.Compacted),
		fmt.Sprintf("(%d live,", w.LiveKeys),
		fmt.Sprintf("leases:             %d\n", w.Leases),
		"problems:           0",
		"entries read", // progress
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if after := dumpStore(t, dataDir); after != before {
		t.Error("check changed the stored data")
	}

	t.Run("missing history entry", func(t *testing.T) {
		dir := testenv.CopyDir(t, dataDir)
		var victim []byte
		db, err := badger.Open(badger.Options{Dir: filepath.Join(dir, "badger")})
		if err != nil {
			t.Fatal(err)
		}
		snap, _ := db.Snapshot()
		start, end := mvcc.HistoryRange([]byte("/reg/a/"), []byte("/reg/a0"))
		snap.Scan(start, end, backend.ScanOptions{KeysOnly: true}, func(k, _ []byte) error {
			if _, rev, _ := mvcc.SplitHistoryKey(k); rev > w.Compacted {
				victim = append([]byte(nil), k...)
				return backend.ErrStop
			}
			return nil
		})
		snap.Close()
		db.Close()
		if victim == nil {
			t.Fatal("no history entry past the compaction")
		}
		key, rev, _ := mvcc.SplitHistoryKey(victim)
		damage(t, dir, func(b *backend.Batch) { b.Delete(victim) })
		out, err := runAxon(t, "check", dir)
		if err == nil {
			t.Fatalf("check passed a store missing %q@%d:\n%s", key, rev, out)
		}
		want := fmt.Sprintf("problem: missing-history: revision %d changed %q but its history entry is missing", rev, key)
		if !strings.Contains(out, dir+": FAILED") || !strings.Contains(out, want) {
			t.Errorf("output lacks FAILED and %q:\n%s", want, out)
		}
	})

	t.Run("older than its witness", func(t *testing.T) {
		dir := testenv.CopyDir(t, dataDir)
		rec, ok, err := witness.Read(dir)
		if err != nil || !ok {
			t.Fatalf("no witness after a clean stop: ok=%v err=%v", ok, err)
		}
		if rec.Revision != w.Revision {
			t.Errorf("witness at revision %d, store at %d", rec.Revision, w.Revision)
		}
		rec.Revision += 5
		ww, err := witness.Create(dir, rec, nil)
		if err != nil {
			t.Fatal(err)
		}
		ww.Close()
		out, err := runAxon(t, "check", dir)
		if err == nil || !strings.Contains(out, "was durably committed (witness)") {
			t.Errorf("check of a store older than its witness: err %v\n%s", err, out)
		}
	})

	t.Run("flipped table bytes", func(t *testing.T) {
		dir := testenv.CopyDir(t, dataDir)
		tables, _ := filepath.Glob(filepath.Join(dir, "badger", "*.sst"))
		var biggest string
		var size int64
		for _, p := range tables {
			if fi, err := os.Stat(p); err == nil && fi.Size() > size {
				biggest, size = p, fi.Size()
			}
		}
		if size < 16<<10 {
			t.Fatalf("no table of several blocks to damage: %v", tables)
		}
		b, err := os.ReadFile(biggest)
		if err != nil {
			t.Fatal(err)
		}
		// Inside the first block: not the last one (open reads the
		// table's biggest key there) nor the index (checked at open).
		orig := bytes.Clone(b[100:108])
		for i := 100; i < 108; i++ {
			b[i] ^= 0xff
		}
		if bytes.Equal(orig, b[100:108]) {
			t.Fatal("bytes not flipped")
		}
		if err := os.WriteFile(biggest, b, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runAxon(t, "check", dir)
		if err == nil {
			t.Fatalf("check passed a store with a damaged table:\n%s", out)
		}
		t.Logf("axon check:\n%s", out)
		if !strings.Contains(out, "FAILED") || !strings.Contains(out, "checksum") || !strings.Contains(out, filepath.Base(biggest)) {
			t.Errorf("output does not report %s's checksum:\n%s", filepath.Base(biggest), out)
		}
	})

	t.Run("no database", func(t *testing.T) {
		empty := t.TempDir()
		if out, err := runAxon(t, "check", empty); err == nil || !strings.Contains(err.Error(), "no Axon Badger database") {
			t.Errorf("check of an empty dir: %v\n%s", err, out)
		}
		if entries, _ := os.ReadDir(empty); len(entries) != 0 {
			t.Errorf("check created %v in an empty dir", entries)
		}
	})
}
