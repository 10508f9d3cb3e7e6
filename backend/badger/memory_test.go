package badger

import (
	"bytes"
	"fmt"
	"testing"

	badgerdb "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/axon-kv/axon/backend"
)

func TestAllocatorBytes(t *testing.T) {
	for report, want := range map[string]int64{
		"":                                     0,
		"Tag: Builder Num: 3 Size: 124 MiB . ": 124 << 20,
		"Tag: Builder Num: 1 Size: 4.0 MiB . Tag: TableBuilder Num: 2 Size: 512 KiB . ": 4<<20 + 512<<10,
		"Tag: x Num: 1 Size: 1.5 GiB . ":                                                3 << 29,
		"Tag: x Num: 1 Size: 9 B . ":                                                    9,
	} {
		if got := allocatorBytes(report); got != want {
			t.Errorf("allocatorBytes(%q) = %d, want %d", report, got, want)
		}
	}
}

func TestMemoryStats(t *testing.T) {
	d, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var b backend.Batch
	b.Put([]byte("k"), []byte("v"))
	if err := d.Commit(&b); err != nil {
		t.Fatal(err)
	}
	st := d.MemoryStats()
	if st.AllocatorBytes < 0 || st.CallocBytes < 0 || st.BlockCacheBytes < 0 {
		t.Errorf("negative figures: %+v", st)
	}
}

// TestReadsSnappyTablesFromEarlierVersions opens a store whose tables were
// written Snappy-compressed (the options before compression was turned off)
// and reads them: Badger records each table's compression in its manifest,
// so old tables stay readable, without a block cache, and new ones are
// written uncompressed.
func TestReadsSnappyTablesFromEarlierVersions(t *testing.T) {
	dir := t.TempDir()
	old, err := badgerdb.OpenManaged(badgerdb.DefaultOptions(dir).
		WithCompression(options.Snappy).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	val := func(i int) []byte { return bytes.Repeat(fmt.Appendf(nil, "value %d ", i), 40) }
	for i := range n {
		txn := old.NewTransactionAt(uint64(i), true)
		if err := txn.Set(fmt.Appendf(nil, "key/%05d", i), val(i)); err != nil {
			t.Fatal(err)
		}
		if err := txn.CommitAt(uint64(i+1), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.Close(); err != nil { // flushes the memtable to a table
		t.Fatal(err)
	}

	d, err := Open(Options{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	compressed := 0
	for _, ti := range d.db.Tables() {
		// The values repeat themselves, so Snappy shrinks them a lot.
		if uint64(ti.OnDiskSize) < uint64(ti.UncompressedSize)/2 {
			compressed++
		}
	}
	if compressed == 0 {
		t.Fatalf("no compressed table written by the old options: %+v", d.db.Tables())
	}
	wantScan(t, d, n, func(i int) string { return fmt.Sprintf("key/%05d", i) }, val)
}

// wantScan checks that d holds exactly n keys under key/, key(i) holding
// val(i), read with one scan of a snapshot.
func wantScan(t *testing.T, d *DB, n int, key func(int) string, val func(int) []byte) {
	t.Helper()
	s, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	i := 0
	err = s.Scan([]byte("key/"), []byte("key0"), backend.ScanOptions{}, func(k, v []byte) error {
		if want := key(i); string(k) != want || !bytes.Equal(v, val(i)) {
			return fmt.Errorf("entry %d: key %q, %d value bytes (%.20q...)", i, k, len(v), v)
		}
		i++
		return nil
	})
	if err != nil || i != n {
		t.Fatalf("scan: %d entries, %v; want %d", i, err, n)
	}
}
