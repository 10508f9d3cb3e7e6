package badger

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	badgerdb "github.com/dgraph-io/badger/v4"
)

// Badger writes each table by copying it into a shared memory mapping of
// the new file (table.CreateTable) and keeps that mapping to read the table
// afterwards. Every page it wrote therefore stays mapped into this process
// and counts in its resident memory until the kernel needs the memory back:
// after a million creates, about 700 MiB, the whole size of the tables,
// although nothing reads most of it. bbolt (etcd) writes its file with
// pwrite, so written pages sit in the page cache without being mapped.
//
// trimTables gives each table the same shape once: it drops the pages of
// tables it has not seen before from this process's mapping
// (MADV_DONTNEED). For a shared file mapping that loses nothing: the pages
// stay in the page cache (dirty ones are still written back), and a later
// read maps them again from there, so what stays resident is what is read,
// as with bbolt's mapping. Each table is trimmed once; pages read later
// stay.
//
// MADV_DONTNEED is only harmless on a shared file mapping. An address
// range read from /proc/self/maps could be unmapped (the table deleted
// after a compaction) and reused for other memory before the madvise, so
// a range is only trimmed while a Badger iterator holds a reference to its
// table: tables listed in the levels both before and after the iterator was
// created were in them when it was, so it holds them, and Badger unmaps a
// table only once its last reference is dropped.
type trimmer struct {
	trimmed map[uint64]bool // table IDs trimmed, pruned to those still listed
}

// trimTables drops written pages of tables not trimmed yet (see trimmer);
// it returns how many bytes of mappings it trimmed.
func (d *DB) trimTables() (int64, error) {
	if d.inMemory || !canTrim {
		return 0, nil
	}
	before := tableIDs(d.db.Tables())
	fresh := false
	for id := range before {
		if !d.trim.trimmed[id] {
			fresh = true
			break
		}
	}
	if !fresh {
		// Nothing written since the last pass: no iterator, no maps.
		return 0, nil
	}
	txn := d.db.NewTransactionAt(0, false)
	defer txn.Discard()
	it := txn.NewIterator(badgerdb.IteratorOptions{}) // references every table in the levels
	defer it.Close()
	after := tableIDs(d.db.Tables())

	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	dir, err := filepath.Abs(d.dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, m := range tableMappings(maps, dir) {
		if d.trim.trimmed[m.id] || !before[m.id] || !after[m.id] {
			continue
		}
		if err := madviseDontNeed(m.start, m.end-m.start); err != nil {
			return n, fmt.Errorf("trimming table %d: %w", m.id, err)
		}
		d.trim.trimmed[m.id] = true
		n += int64(m.end - m.start)
	}
	for id := range d.trim.trimmed {
		if !after[id] {
			delete(d.trim.trimmed, id)
		}
	}
	return n, nil
}

func tableIDs(tables []badgerdb.TableInfo) map[uint64]bool {
	ids := make(map[uint64]bool, len(tables))
	for _, t := range tables {
		ids[t.ID] = true
	}
	return ids
}

// tableFileID is the table ID of path when it names a table file
// (NNNNNN.sst) directly inside dir.
func tableFileID(path, dir string) (uint64, bool) {
	if filepath.Dir(path) != dir || !strings.HasSuffix(path, ".sst") {
		return 0, false
	}
	id, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(path), ".sst"), 10, 64)
	return id, err == nil
}

type tableMapping struct {
	start, end uintptr
	id         uint64
}

// tableMappings returns the shared mappings of table files (NNNNNN.sst)
// directly inside dir, from the text of /proc/self/maps.
func tableMappings(maps []byte, dir string) []tableMapping {
	var out []tableMapping
	sc := bufio.NewScanner(bytes.NewReader(maps))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// address perms offset dev inode pathname (which may hold spaces)
		line := sc.Text()
		i := strings.Index(line, " /")
		if i < 0 {
			continue
		}
		f, path := strings.Fields(line[:i]), line[i+1:]
		if len(f) != 5 || len(f[1]) != 4 || f[1][3] != 's' {
			continue
		}
		id, ok := tableFileID(path, dir)
		if !ok {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		out = append(out, tableMapping{start: uintptr(start), end: uintptr(end), id: id})
	}
	return out
}
