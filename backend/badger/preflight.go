package badger

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	badgerdb "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"

	"github.com/axon-kv/axon/internal/durable"
)

// ErrDamaged is wrapped by every refusal to open a data dir whose files are
// damaged.
var ErrDamaged = errors.New("badger: data dir is damaged")

// RescuePrefix names the directories, inside the engine's dir, that keep
// what Badger would otherwise delete or cut at open.
const RescuePrefix = "rescue-"

// preflight inspects dir before Badger opens it, because Badger's open
// repairs by deleting: it removes every table file its MANIFEST does not
// list (so a truncated or missing MANIFEST silently empties the store and
// then the tables are gone for good), cuts the write-ahead logs at the first
// entry it cannot read, and panics in a background goroutine on a table
// whose footer is unreadable. preflight refuses what cannot be the result of
// a crash (a MANIFEST missing beside table files, a listed table missing or
// damaged) and, when Badger is about to delete or cut something, first
// moves the unlisted tables and copies the logs and the MANIFEST into a
// rescue directory (logs only when Badger would cut data from them, see
// validLogEnd). The caller decides, once the store is open and checked
// against what it acknowledged before, whether that copy was garbage left by
// a crash (Discard) or the only copy of the data (keep it and refuse).
func preflight(dir string, bo badgerdb.Options, log *slog.Logger) (rescue string, err error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("badger: read data dir: %w", err)
	}
	tables := map[uint64]string{}
	var (
		wals      []string
		vlogs     []string
		lastVlog  string
		lastVlogN = -1
	)
	hasManifest := false
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == "MANIFEST":
			hasManifest = true
		case strings.HasSuffix(name, ".sst"):
			if id, ok := table.ParseFileID(name); ok {
				tables[id] = filepath.Join(dir, name)
			}
		case strings.HasSuffix(name, ".mem"):
			if fi, err := e.Info(); err == nil && fi.Size() > 0 {
				wals = append(wals, filepath.Join(dir, name))
			}
		case strings.HasSuffix(name, ".vlog"):
			if n, err := strconv.Atoi(strings.TrimSuffix(name, ".vlog")); err == nil {
				vlogs = append(vlogs, filepath.Join(dir, name))
				if n > lastVlogN {
					lastVlog, lastVlogN = filepath.Join(dir, name), n
				}
			}
		}
	}
	if !hasManifest {
		if len(tables) > 0 || len(wals) > 0 {
			return "", fmt.Errorf("%w: %s has %d table files and %d log files but no MANIFEST; "+
				"refusing to open it (the engine would start empty and delete them)", ErrDamaged, dir, len(tables), len(wals))
		}
		return "", nil
	}

	mf, manifestSize, truncAt, err := readManifest(dir, bo)
	if err != nil {
		return "", fmt.Errorf("%w: %s: MANIFEST unreadable: %v", ErrDamaged, dir, err)
	}
	var missing []string
	for id := range mf.Tables {
		if _, ok := tables[id]; !ok {
			missing = append(missing, table.IDToFilename(id))
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return "", fmt.Errorf("%w: %s: %d table files listed in the MANIFEST are missing (%s)",
			ErrDamaged, dir, len(missing), strings.Join(first(missing, 5), ", "))
	}
	if err := verifyTables(mf, tables); err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrDamaged, dir, err)
	}
	if err := verifyValueLogs(vlogs, lastVlog); err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrDamaged, dir, err)
	}

	var orphans []string
	for id, path := range tables {
		if _, ok := mf.Tables[id]; !ok {
			orphans = append(orphans, path)
		}
	}
	// Badger cuts every write-ahead log, and the newest value log, at the
	// first record it cannot read: keep a copy of those that hold data
	// past that point.
	var cut []string
	if lastVlog != "" {
		wals = append(wals, lastVlog)
	}
	for _, p := range wals {
		valid, data, err := validLogEnd(p)
		if err != nil {
			return "", fmt.Errorf("badger: read %s: %w", filepath.Base(p), err)
		}
		if data > valid {
			cut = append(cut, p)
		}
	}
	if len(orphans) == 0 && len(cut) == 0 && truncAt == manifestSize {
		return "", nil
	}
	// Keep everything Badger's open may delete or cut. Unlisted tables are
	// moved (a crash leaves them in the middle of a flush or compaction and
	// Badger would delete them anyway); logs and the MANIFEST are copied,
	// since Badger reads them.
	rescue = filepath.Join(dir, fmt.Sprintf("%s%d", RescuePrefix, time.Now().UnixNano()))
	if err := os.Mkdir(rescue, 0o700); err != nil {
		return "", fmt.Errorf("badger: create rescue dir: %w", err)
	}
	for _, p := range orphans {
		if err := os.Rename(p, filepath.Join(rescue, filepath.Base(p))); err != nil {
			return rescue, fmt.Errorf("badger: move unlisted table aside: %w", err)
		}
	}
	for _, p := range append(cut, filepath.Join(dir, "MANIFEST")) {
		if err := copyFile(p, filepath.Join(rescue, filepath.Base(p))); err != nil {
			return rescue, fmt.Errorf("badger: copy %s aside: %w", filepath.Base(p), err)
		}
	}
	if err := durable.SyncDir(rescue); err != nil {
		return rescue, fmt.Errorf("badger: %w", err)
	}
	if err := durable.SyncDir(dir); err != nil {
		return rescue, fmt.Errorf("badger: %w", err)
	}
	log.Info("kept a copy of what opening the store may delete or cut, until the store is verified",
		"rescue-dir", rescue, "unlisted-tables", len(orphans), "logs-to-cut", len(cut),
		"manifest-tail-bytes", manifestSize-truncAt)
	return rescue, nil
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// readManifest replays the MANIFEST read-only; truncAt is where Badger
// would cut it (its size unless a partial entry ends it).
func readManifest(dir string, bo badgerdb.Options) (badgerdb.Manifest, int64, int64, error) {
	f, err := os.Open(filepath.Join(dir, "MANIFEST"))
	if err != nil {
		return badgerdb.Manifest{}, 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return badgerdb.Manifest{}, 0, 0, err
	}
	mf, truncAt, err := badgerdb.ReplayManifestFile(f, bo.ExternalMagicVersion, bo)
	return mf, fi.Size(), truncAt, err
}

// verifyTables opens every listed table read-only and verifies its
// checksums, block by block. A table reaches the MANIFEST only after it is
// written and synced, so any damage here is not a crash's doing.
func verifyTables(mf badgerdb.Manifest, files map[uint64]string) error {
	ids := make([]uint64, 0, len(mf.Tables))
	for id := range mf.Tables {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return forEach(ids, func(id uint64) error { return verifyTable(files[id], mf.Tables[id]) })
}

// forEach runs check on every item, one worker per CPU, and returns the
// error of the first item (in order) that failed.
func forEach[T any](items []T, check func(T) error) error {
	errs := make([]error, len(items))
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < max(1, runtime.GOMAXPROCS(0)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				errs[i] = check(items[i])
			}
		}()
	}
	for i := range items {
		work <- i
	}
	close(work)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// verifyValueLogs reads every finished value log (all but the newest)
// record by record. Badger opens only the newest one and reads the others
// when a value is asked for, so without this a damaged record in an older
// file would surface as a failed read long after the store was served. A
// log is synced before the next one is started, so a record that does not
// read back there is damage, not a crash's torn tail (which only the
// newest log can have, and which the cut check above handles).
func verifyValueLogs(vlogs []string, newest string) error {
	return forEach(vlogs, func(p string) error {
		if p == newest {
			return nil
		}
		valid, data, err := validLogEnd(p)
		if err != nil {
			return fmt.Errorf("value log %s unreadable: %v", filepath.Base(p), err)
		}
		if valid < data {
			return fmt.Errorf("value log %s is damaged: its records stop reading back at byte %d of %d",
				filepath.Base(p), valid, data)
		}
		return nil
	})
}

func verifyTable(path string, tm badgerdb.TableManifest) (err error) {
	name := filepath.Base(path)
	if tm.KeyID != 0 {
		return nil // encrypted tables are not written by axon
	}
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("table %s unreadable: %v", name, err)
	}
	closed := false
	defer func() {
		// Badger panics on a footer it cannot parse.
		if r := recover(); r != nil {
			err = fmt.Errorf("table %s is damaged: its index cannot be read (the file is cut short or overwritten)", name)
		}
		if !closed {
			_ = mf.Close(-1)
		}
	}()
	t, err := table.OpenTable(mf, table.Options{
		ChkMode:     options.OnTableRead,
		BlockSize:   4 << 10,
		Compression: tm.Compression,
		AllocPool:   z.NewAllocatorPool(1),
	})
	if err != nil {
		closed = true // OpenTable closes the file on its errors
		return fmt.Errorf("table %s is damaged: %v", name, err)
	}
	// Not DecrRef: dropping the last reference deletes the file.
	closed = true
	return t.MmapFile.Close(-1)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Rescue is the directory preflight filled before this open, or "".
func (d *DB) Rescue() string { return d.rescue }

// DiscardRescue deletes the rescue directory once the caller has verified
// the opened store holds everything it acknowledged: what was set aside was
// then only a crash's leftovers.
func (d *DB) DiscardRescue() error {
	if d.rescue == "" {
		return nil
	}
	if err := os.RemoveAll(d.rescue); err != nil {
		return err
	}
	d.rescue = ""
	return nil
}
