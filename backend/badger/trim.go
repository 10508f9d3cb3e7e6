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

	// Value logs trimmed, pruned to those still on disk.
	vlogs map[uint64]bool
	// Value-log GC rewrites not yet seen completed: the number of files
	// rewritten, and the files that were on disk before each rewrite (the
	// rewritten ones are among them). See trimValueLogs.
	gcRewrites int
	gcBefore   map[uint64]bool
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
	for _, m := range fileMappings(maps, dir, ".sst") {
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

// Value logs are written the same way, by copying into a shared mapping
// of the file, and when a file is full Badger shrinks that mapping with
// mremap, which keeps every page it wrote mapped: 632 MiB after a million
// creates. trimValueLogs drops the pages of each finished value log once,
// as trimTables does for tables; the file being written is left alone.
//
// The guard differs, since no iterator holds a value log. A finished file
// is unmapped only when it is deleted, and only value-log GC deletes one:
// GC runs on the background goroutine, as this does, so it never runs
// during a trim, except that a file rewritten while a reader had an
// iterator open is deleted later, when the last iterator closes, from
// whichever goroutine closes it. So after GC rewrote files, value logs are
// not trimmed until as many of the files that were on disk before it have
// gone (Badger unmaps a file before it removes it). A file's mremap when
// it is finished happens before the next file is created, so every file
// older than the newest file on disk has its final mapping.
func (d *DB) trimValueLogs() (int64, error) {
	if d.inMemory || !canTrim {
		return 0, nil
	}
	dir, err := filepath.Abs(d.dir)
	if err != nil {
		return 0, err
	}
	onDisk, err := valueLogIDs(dir)
	if err != nil {
		return 0, err
	}
	if d.trim.gcRewrites > 0 {
		gone := 0
		for id := range d.trim.gcBefore {
			if !onDisk[id] {
				gone++
			}
		}
		if gone < d.trim.gcRewrites {
			return 0, nil // a rewritten file may still be unmapped at any moment
		}
		d.trim.gcRewrites, d.trim.gcBefore = 0, nil
	}
	var newest uint64
	for id := range onDisk {
		newest = max(newest, id)
	}
	for id := range d.trim.vlogs {
		if !onDisk[id] {
			delete(d.trim.vlogs, id)
		}
	}
	fresh := false
	for id := range onDisk {
		if id < newest && !d.trim.vlogs[id] {
			fresh = true
			break
		}
	}
	if !fresh {
		return 0, nil
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	var n int64
	for _, m := range fileMappings(maps, dir, ".vlog") {
		if m.id >= newest || !onDisk[m.id] || d.trim.vlogs[m.id] {
			continue
		}
		if err := madviseDontNeed(m.start, m.end-m.start); err != nil {
			return n, fmt.Errorf("trimming value log %d: %w", m.id, err)
		}
		d.trim.vlogs[m.id] = true
		n += int64(m.end - m.start)
	}
	return n, nil
}

// ReleaseMappedReads drops from this process's mappings the pages of
// finished value logs that reads touched, as trimValueLogs drops written
// ones; they stay in the page cache. The server calls it once the key index
// is built at start: that reads every value once, and would otherwise leave
// the whole value log mapped (a million objects' server used 845 MiB after
// a restart, 441 MiB when values were inline) though nothing may read most
// of it again.
func (d *DB) ReleaseMappedReads() {
	d.inBackground(func() {
		clear(d.trim.vlogs)
		if n, err := d.trimValueLogs(); err != nil {
			d.log.Warn("dropping read value-log pages from memory", "err", err)
		} else if n > 0 {
			d.log.Debug("dropped read value-log pages from memory", "bytes", n)
		}
	})
}

// noteValueLogGC records that value-log GC rewrote n files that were among
// before (see trimValueLogs).
func (t *trimmer) noteValueLogGC(n int, before map[uint64]bool) {
	if n == 0 {
		return
	}
	t.gcRewrites += n
	if t.gcBefore == nil {
		t.gcBefore = map[uint64]bool{}
	}
	for id := range before {
		t.gcBefore[id] = true
	}
}

// valueLogIDs lists the value logs (NNNNNN.vlog) in dir.
func valueLogIDs(dir string) (map[uint64]bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	ids := map[uint64]bool{}
	for _, e := range entries {
		if id, ok := fileID(filepath.Join(dir, e.Name()), dir, ".vlog"); ok {
			ids[id] = true
		}
	}
	return ids, nil
}

func tableIDs(tables []badgerdb.TableInfo) map[uint64]bool {
	ids := make(map[uint64]bool, len(tables))
	for _, t := range tables {
		ids[t.ID] = true
	}
	return ids
}

// fileID is the number of path when it names a file NNNNNN<ext> directly
// inside dir (a table: .sst, a value log: .vlog).
func fileID(path, dir, ext string) (uint64, bool) {
	if filepath.Dir(path) != dir || !strings.HasSuffix(path, ext) {
		return 0, false
	}
	id, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(path), ext), 10, 64)
	return id, err == nil
}

type fileMapping struct {
	start, end uintptr
	id         uint64
}

// fileMappings returns the shared mappings of the files NNNNNN<ext>
// directly inside dir, from the text of /proc/self/maps.
func fileMappings(maps []byte, dir, ext string) []fileMapping {
	var out []fileMapping
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
		id, ok := fileID(path, dir, ext)
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
		out = append(out, fileMapping{start: uintptr(start), end: uintptr(end), id: id})
	}
	return out
}
