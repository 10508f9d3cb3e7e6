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
7f10a0c00000-7f10a0c21000 rw-p 00000000 00:00 0 
7ffd1c3a0000-7ffd1c3c1000 rw-p 00000000 00:00 0                          [stack]
`)
	got := tableMappings(maps, "/data/my store/badger")
	want := []tableMapping{
		{start: 0x7f10a0000000, end: 0x7f10a0200000, id: 12},
		{start: 0x7f10a0a00000, end: 0x7f10a0c00000, id: 16},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("tableMappings = %+v, want %+v", got, want)
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
	for i := 0; i < n; i += 5000 {
		var b backend.Batch
		for j := i; j < i+5000; j++ {
			b.Put(fmt.Appendf(nil, "key/%06d", j), val(j))
		}
		if err := d.Commit(&b); err != nil {
			t.Fatal(err)
		}
	}
	compactAll(t, d) // flushes every memtable and rewrites level 0: all built by copying into mappings

	if _, err := d.trimTables(); err != nil {
		t.Fatal(err)
	}
	mapped, resident := tableResidency(t, dir)
	if mapped < n*size/2 {
		t.Fatalf("only %d bytes of tables mapped after writing %d bytes: no tables to trim", mapped, n*size)
	}
	if resident > mapped/8 {
		t.Errorf("%d of %d mapped table bytes still resident after trimming", resident, mapped)
	}
	if again, err := d.trimTables(); err != nil || again != 0 {
		t.Errorf("second trim: %d bytes, %v; want each table trimmed once", again, err)
	}

	wantScan(t, d, n, func(i int) string { return fmt.Sprintf("key/%06d", i) }, val)
}

// tableResidency sums the size and the resident part of this process's
// mappings of dir's table files, from /proc/self/smaps.
func tableResidency(t *testing.T, dir string) (mapped, resident int) {
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
				_, in = tableFileID(line[i+1:], dir)
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
