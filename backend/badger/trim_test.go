package badger

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/axon-kv/axon/backend"
)

func TestTableMappings(t *testing.T) {
	maps := []byte(`00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/axon
7f10a0000000-7f10a0200000 rw-s 00000000 fd:01 123 /data/my store/badger/000012.sst
7f10a0200000-7f10a0400000 rw-s 00000000 fd:01 124 /data/my store/badger/000013.sst (deleted)
7f10a0400000-7f10a0600000 rw-p 00000000 fd:01 125 /data/my store/badger/000014.sst
7f10a0600000-7f10a0800000 rw-s 00000000 fd:01 126 /data/my store/badger/00001.mem
7f10a0800000-7f10a0a00000 r--s 00000000 fd:01 127 /data/other/000015.sst
7f10a0a00000-7f10a0c00000 r--s 00000000 fd:01 128 /data/my store/badger/000016.sst
7f10a0c21000-7f10a0c41000 rw-s 00000000 fd:01 129 /data/my store/badger/000003.vlog
7f10a0c00000-7f10a0c21000 rw-p 00000000 00:00 0 
7ffd1c3a0000-7ffd1c3c1000 rw-p 00000000 00:00 0                          [stack]
`)
	got := fileMappings(maps, "/data/my store/badger", ".sst")
	want := []fileMapping{
		{start: 0x7f10a0000000, end: 0x7f10a0200000, id: 12},
		{start: 0x7f10a0a00000, end: 0x7f10a0c00000, id: 16},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("table mappings = %+v, want %+v", got, want)
	}
	got = fileMappings(maps, "/data/my store/badger", ".vlog")
	want = []fileMapping{{start: 0x7f10a0c21000, end: 0x7f10a0c41000, id: 3}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("value-log mappings = %+v, want %+v", got, want)
	}
}

// TestTrimTablesDropsWrittenPages writes enough to make Badger build tables
// (copied into shared mappings of the new files), trims them, and checks
// that their pages are no longer resident in this process while every
// value still reads back: the pages were dropped from the mapping, not
// from the file.
func TestTrimTablesDropsWrittenPages(t *testing.T) {
	if !canTrim {
		t.Skip("trimming needs Linux")
	}
	dir := t.TempDir()
	d := open(t, Options{Dir: dir})
	// 24 MB, more than a memtable; values under the value threshold stay
	// in the tables.
	const n, size = 240000, valueThreshold - 28
	val := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, size) }
	putKeys(t, d, n, 5000, val)
	compactAll(t, d) // flushes every memtable and rewrites level 0: all built by copying into mappings

	if _, err := trimOnce(t, d, d.trimTables); err != nil {
		t.Fatal(err)
	}
	mapped, resident := residency(t, dir, ".sst")
	if mapped < n*size/2 {
		t.Fatalf("only %d bytes of tables mapped after writing %d bytes: no tables to trim", mapped, n*size)
	}
	if resident > mapped/8 {
		t.Errorf("%d of %d mapped table bytes still resident after trimming", resident, mapped)
	}
	if again, err := trimOnce(t, d, d.trimTables); err != nil || again != 0 {
		t.Errorf("second trim: %d bytes, %v; want each table trimmed once", again, err)
	}

	wantScan(t, d, n, func(i int) string { return fmt.Sprintf("key/%06d", i) }, val)
}

// residency sums the size and the resident part of this process's
// mappings of dir's files NNNNNN<ext>, from /proc/self/smaps.
func residency(t *testing.T, dir, ext string) (mapped, resident int) {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir, _ = filepath.Abs(dir)
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") { // a mapping's header line
			in = false
			if i := strings.Index(line, " /"); i >= 0 {
				_, in = fileID(line[i+1:], dir, ext)
			}
			continue
		}
		if !in || len(fields) < 3 {
			continue
		}
		kb, _ := strconv.Atoi(fields[1])
		switch fields[0] {
		case "Size:":
			mapped += kb << 10
		case "Rss:":
			resident += kb << 10
		}
	}
	return mapped, resident
}

// TestTrimValueLogsDropsWrittenPages fills several value logs (written by
// copying into shared mappings, which Badger keeps when it finishes a file)
// and checks that trimming leaves the finished ones' pages unmapped, the
// file being written untouched, and every value readable; and that after a
// value-log GC rewrite nothing is trimmed until the rewritten file is gone.
func TestTrimValueLogsDropsWrittenPages(t *testing.T) {
	if !canTrim {
		t.Skip("trimming needs Linux")
	}
	defer func(n int64) { valueLogFileSize = n }(valueLogFileSize)
	valueLogFileSize = 1 << 20
	dir := t.TempDir()
	d := open(t, Options{Dir: dir})
	const n, size = 6000, 1000 // 6 MB: several 1 MiB value logs
	val := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, size) }
	putKeys(t, d, n, 500, val)
	mappedBefore, residentBefore := residency(t, dir, ".vlog")
	if residentBefore < n*size/2 {
		t.Fatalf("only %d of %d written value-log bytes resident before trimming: nothing to test", residentBefore, n*size)
	}

	// A GC rewrite not seen completed holds trimming off.
	ids, err := valueLogIDs(dir)
	if err != nil {
		t.Fatal(err)
	}
	inBackground(t, d, func() { d.trim.noteValueLogGC(1, ids) })
	if got, err := trimOnce(t, d, d.trimValueLogs); err != nil || got != 0 {
		t.Fatalf("trimmed %d bytes (%v) while a rewritten file may still be unmapped", got, err)
	}
	inBackground(t, d, func() { d.trim.gcRewrites, d.trim.gcBefore = 0, nil })

	trimmed, err := trimOnce(t, d, d.trimValueLogs)
	if err != nil {
		t.Fatal(err)
	}
	_, resident := residency(t, dir, ".vlog")
	t.Logf("value logs: %d bytes mapped, %d resident before, %d trimmed, %d resident after", mappedBefore, residentBefore, trimmed, resident)
	if resident > (1<<20)+(256<<10) {
		t.Errorf("%d bytes of value logs still resident; want at most the file being written", resident)
	}
	if again, err := trimOnce(t, d, d.trimValueLogs); err != nil || again != 0 {
		t.Errorf("second trim: %d bytes, %v; want each file trimmed once", again, err)
	}
	wantScan(t, d, n, func(i int) string { return fmt.Sprintf("key/%06d", i) }, val)

	// Reading every value mapped the pages back; releasing drops them again.
	if _, resident := residency(t, dir, ".vlog"); resident < n*size/2 {
		t.Fatalf("only %d value-log bytes resident after reading every value: nothing to release", resident)
	}
	d.ReleaseMappedReads()
	if _, resident := residency(t, dir, ".vlog"); resident > (1<<20)+(256<<10) {
		t.Errorf("%d bytes of value logs still resident after ReleaseMappedReads", resident)
	}
	wantScan(t, d, n, func(i int) string { return fmt.Sprintf("key/%06d", i) }, val)
}

// inBackground runs f where the store's own trims and value-log GC run, so
// a test's call never races them.
func inBackground(t *testing.T, d *DB, f func()) {
	t.Helper()
	if !d.inBackground(f) {
		t.Fatal("store closed")
	}
}

func trimOnce(t *testing.T, d *DB, trim func() (int64, error)) (n int64, err error) {
	t.Helper()
	inBackground(t, d, func() { n, err = trim() })
	return n, err
}

// putKeys commits key/000000 ... key/<n-1> holding val(i), per Commit of
// batch keys.
func putKeys(t *testing.T, d *DB, n, batch int, val func(int) []byte) {
	t.Helper()
	for i := 0; i < n; i += batch {
		var b backend.Batch
		for j := i; j < min(i+batch, n); j++ {
			b.Put(fmt.Appendf(nil, "key/%06d", j), val(j))
		}
		if err := d.Commit(&b); err != nil {
			t.Fatal(err)
		}
	}
}
