// Package badger owns the Badger engine behind backend.Backend: opening,
// tuning, durability, value-log garbage collection and logging. It must not
// know MVCC: keys and values are opaque bytes here, and everything about
// revisions lives above the backend seam so every engine shares it.
package badger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	badgerdb "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/internal/durable"
)

const (
	// Memory: Badger builds every table (a memtable flush, each output of a
	// compaction) wholly in memory, in a ristretto z.Allocator sized from
	// what goes in; finished builders' allocators are kept in a pool of up
	// to eight and reused without shrinking, so each grows to the biggest
	// table it ever built. Those pooled buffers were most of the heap
	// (984 of 1,046 MiB after 500k creates, issue 10), and the options
	// below are chosen mainly to keep them small.

	// A memtable's size also caps one transaction: Badger refuses batches
	// over 15% of it (~2.4 MiB of inline entries at 16 MiB; values at or
	// over valueThreshold count only as a pointer). Writers above keep
	// their batches under 1 MiB plus one request (mvcc.WriteOptions,
	// mvcc.Loader, compaction steps), so 16 MiB holds them. It also sizes
	// the flush builder: a level-0 table is a whole memtable, and Badger
	// pools up to eight builders' buffers at the largest size they ever
	// reached (288 MiB of pooled buffers at 32 MiB after a million
	// creates); halving the memtable halves that.
	memTableSize = 16 << 20
	// Memtables waiting to be flushed are whole arenas of resident memory
	// (~21 MiB each here); three absorbs a write burst while one flushes,
	// without the default five's footprint.
	numMemtables = 3
	// Values of this size or more go to the value log, and the LSM tree
	// holds a 12-byte pointer in their place. A revision's value is stored
	// once (format 2), in its history entry, and a history entry is written
	// once and later only deleted; kept inline, every such entry was copied
	// again by the memtable flush and by each compaction that passed over
	// it, and those copies were the largest share of the write path's CPU
	// and of the table builders' memory. In the value log it is written
	// once, read in place from the mapped file, and its space comes back
	// through value-log GC once MVCC compaction deleted it. Measured in one
	// run, same machine, against the 4 KiB threshold before: updates under
	// four unpaginated LISTs 3,876 vs 2,616/s (p99 82 vs 295 ms), the 1M
	// load 9,702 vs 7,100/s and its process memory 352 vs 491 MiB; a
	// paginated LIST page costs a value-log read per object (1,040 vs
	// 1,333 pages/s). Every Kubernetes object is bigger than 128 bytes;
	// what stays inline are revision records of small changes, tombstones
	// and meta records.
	valueThreshold = 128
	// Two compactors is Badger's minimum (compactor 0 favours level 0).
	// Each compaction keeps several table builders in flight, and every
	// builder that ever ran concurrently can end up pooled at full size, so
	// the default four mostly bought memory on a two-core node; throughput
	// did not measurably change with four.
	numCompactors = 2

	// In-memory Badger has no value log, yet still routes values at or
	// above ValueThreshold there and panics (dgraph-io/badger#1234). So
	// in memory everything is kept inline at the highest threshold Badger
	// allows, and bigger values are refused in Commit.
	inMemoryMaxValue = 1 << 20

	// Value-log GC rewrites the live values of a file, so it runs in the
	// background; 0.5 means a file is rewritten once half of it is garbage.
	// With values in the value log it is what returns the space MVCC
	// compaction frees, and a 64 MiB file is cheap to rewrite, so it runs
	// every minute.
	gcInterval     = time.Minute
	gcDiscardRatio = 0.5

	// Size is read on hot paths (quota checks), but walking the directory
	// costs a syscall per file, so a recent answer is reused.
	sizeTTL = time.Second

	// How often compaction is told which old versions no snapshot can
	// read any more (see advanceDiscardTs). It only bounds how long such a
	// version survives the compactions that pass over it; the call is cheap.
	discardInterval = time.Second
)

// A value-log file is memory-mapped and written by copying into the
// mapping, so the pages written stay resident in the process until the file
// is finished and remapped: with Badger's 1 GiB files, a million 512-byte
// objects kept 749 MiB of written pages mapped. At 64 MiB that is bounded
// by one file, value-log GC works on smaller units, and a fresh data dir's
// preallocated (sparse) log is 128 MiB instead of 2 GiB. A variable so
// that tests can fill several files quickly.
var valueLogFileSize int64 = 64 << 20

// Options configure Open.
type Options struct {
	// Dir holds the data. Required unless InMemory.
	Dir string
	// InMemory keeps everything in RAM and loses it on Close; for tests.
	// Values must be under 1 MiB in this mode.
	InMemory bool
	// Logger receives Badger's warnings and errors; its info and debug
	// chatter is logged at slog.LevelDebug and below. Nil means slog.Default.
	Logger *slog.Logger
}

// DB is a backend.Backend stored in Badger. It is safe for concurrent use.
//
// Badger runs in managed mode: DB, not Badger, hands out timestamps. In
// Badger's own mode every new transaction, read-only ones included, first
// waits for all commits in flight, fsync and all, so under write load every
// Snapshot cost a sync. Here each commit takes the next number of a counter
// and is written at it; a number is published as readable once its batch
// and every earlier one have been written and synced, and a Snapshot just
// reads at the newest published number without waiting for anything.
type DB struct {
	db       *badgerdb.DB
	dir      string
	inMemory bool
	log      *slog.Logger
	rescue   string // see preflight
	gate     gate

	// Conflict detection is off, so a batch's conditions only hold if no
	// other commit lands between checking them and writing. Conditional
	// commits therefore run alone; unconditional ones need not.
	commitMu sync.RWMutex

	// seqMu hands out commit timestamps and is held while the batch is
	// queued, so Badger writes batches in timestamp order. lastTs is the
	// newest handed out; after Open it is the newest stored version, which
	// is how the counter survives restarts without being stored itself.
	seqMu  sync.Mutex
	lastTs uint64
	// published is the newest timestamp readers may use.
	published watermark
	// pins holds the read timestamps of open snapshots.
	pins pins

	// afterWrite, if set (by tests), runs once a batch is written and
	// synced but before its timestamp is published.
	afterWrite func(ts uint64)

	stop   chan struct{}
	run    chan func() // see inBackground
	bgDone chan struct{}

	dirMu     sync.Mutex
	dirSynced time.Time // the directory's modification time at its last sync

	sizeMu sync.Mutex
	sizeAt time.Time
	size   int64

	trim trimmer // used by the background loop only
}

var _ backend.Backend = (*DB)(nil)

// Open opens (creating if needed) the store described by opts.
func Open(opts Options) (*DB, error) {
	switch {
	case opts.InMemory && opts.Dir != "":
		return nil, errors.New("badger: Dir must be empty when InMemory is set")
	case !opts.InMemory && opts.Dir == "":
		return nil, errors.New("badger: Dir is required")
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("engine", "badger")

	bo := badgerdb.DefaultOptions(opts.Dir).
		WithInMemory(opts.InMemory).
		// An acknowledged Commit is a promise to the etcd client (and to
		// Kubernetes controllers acting on it); it must survive kill -9 or
		// power loss, so the WAL is fsynced before Commit returns.
		WithSyncWrites(true).
		// One writer sits above us and conditions are checked under
		// commitMu, so Badger's per-key conflict tracking is pure overhead.
		WithDetectConflicts(false).
		// MVCC history is kept as distinct keys above the seam; Badger's own
		// versions are only needed by open snapshots. Compaction keeps every
		// version above the discard timestamp, which advanceDiscardTs holds
		// at the oldest open snapshot, and one per key at or below it.
		WithNumVersionsToKeep(1).
		WithMemTableSize(memTableSize).
		WithNumMemtables(numMemtables).
		WithValueThreshold(valueThreshold).
		WithValueLogFileSize(valueLogFileSize).
		// No block compression. A compressing builder keeps every block
		// twice until the table is written (the plain block and a
		// compressed copy allocated at its worst-case size), which roughly
		// doubled the pooled builder memory; ZSTD allocates the same way.
		// Tables get bigger on disk (as bbolt's pages are in etcd, which
		// does not compress either). Tables written compressed by earlier
		// versions stay readable: the manifest records each table's
		// compression, and compaction rewrites them uncompressed.
		WithCompression(options.None).
		WithNumCompactors(numCompactors).
		// Level 0 (5 tables start a compaction, 15 stall writes), block size
		// (4 KiB) and base table size (2 MiB) keep Badger's defaults:
		// level-0 tables are mmapped files, not heap, and compaction
		// builders are already sized from the small base table size.
		//
		// No block cache. Uncompressed blocks are read in place from the
		// mmapped tables, so the page cache already holds them (counted
		// once, and reclaimable); a cache would only add Block headers and
		// ristretto's bookkeeping on top. There is no index cache for the
		// same reason: unencrypted table indexes are read in place too, so
		// Badger would never consult it.
		WithBlockCacheSize(0).
		WithIndexCacheSize(0).
		// Size is computed here (see Size); Badger's expvar metrics are
		// process-global and would only duplicate it.
		WithMetricsEnabled(false).
		// Value-log records are checked as tables are: every record of
		// every log when the store is opened (preflight), not again on each
		// read. Checking each read cost a sixth of a paginated LIST's CPU
		// (CRC-32C over every value); table blocks were never checked per
		// read either.
		WithVerifyValueChecksum(false).
		WithLogger(slogAdapter{logger})

	// Every level's tables are the base size (2 MiB) instead of doubling
	// at each level below the base. A compaction runs up to eight table
	// builders at once, and each starts with a buffer twice its table's
	// size that grows to hold the whole table, so 8 MiB tables at the
	// deepest level held about 150 MiB of builders after a million
	// creates; at 2 MiB, about 50. More, smaller tables at the bottom
	// level cost file handles and mappings, not throughput (measured in
	// the same scale run).
	bo.TableSizeMultiplier = 1

	if opts.InMemory {
		bo = bo.WithValueThreshold(inMemoryMaxValue)
	}

	var rescue string
	if !opts.InMemory {
		var err error
		if rescue, err = preflight(opts.Dir, bo, logger); err != nil {
			return nil, err
		}
	}
	db, err := openManaged(bo)
	if err != nil {
		return nil, fmt.Errorf("badger: open %q: %w", opts.Dir, err)
	}
	d := &DB{db: db, dir: opts.Dir, inMemory: opts.InMemory, log: logger, rescue: rescue}
	// Every commit is stored at its timestamp (in the WAL, memtables and
	// tables alike, and value-log GC rewrites keep versions), so the newest
	// stored version is the newest acknowledged commit or a later one that
	// reached the WAL before a crash. Continuing from it keeps new writes
	// above everything already stored. A store written by Badger's own mode
	// continues the same way.
	d.lastTs = db.MaxVersion()
	d.published.init(d.lastTs)
	d.pins.init()
	d.advanceDiscardTs()
	d.trim.trimmed = make(map[uint64]bool)
	d.trim.vlogs = make(map[uint64]bool)
	d.stop = make(chan struct{})
	d.run = make(chan func())
	d.bgDone = make(chan struct{})
	go d.background()
	return d, nil
}

// openManaged turns a panic inside Badger's open into an error: a store
// that cannot be opened must be refused with a message, not a stack trace.
func openManaged(bo badgerdb.Options) (db *badgerdb.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: the engine failed to open it: %v", ErrDamaged, firstLine(fmt.Sprint(r)))
		}
	}()
	return badgerdb.OpenManaged(bo)
}

// Snapshot implements backend.Backend. It reads at the newest published
// timestamp, which covers every Commit that has returned, and never waits
// for commits in flight.
func (d *DB) Snapshot() (backend.Snapshot, error) {
	if !d.gate.Enter() {
		return nil, backend.ErrClosed
	}
	defer d.gate.Exit()
	ts := d.pins.pin(&d.published)
	return &snapshot{d: d, ts: ts, txn: d.db.NewTransactionAt(ts, false)}, nil
}

// Commit implements backend.Backend. A batch larger than Badger's
// transaction limit fails with an error wrapping badger.ErrTxnTooBig and
// writes nothing; callers are expected to keep batches small.
func (d *DB) Commit(b *backend.Batch) error {
	if !d.gate.Enter() {
		return backend.ErrClosed
	}
	defer d.gate.Exit()
	if len(b.Conditions) > 0 {
		d.commitMu.Lock()
		defer d.commitMu.Unlock()
	} else {
		d.commitMu.RLock()
		defer d.commitMu.RUnlock()
	}

	if d.inMemory {
		for i, op := range b.Ops {
			if !op.Delete && len(op.Value) >= inMemoryMaxValue {
				return fmt.Errorf("badger: op %d: in-memory mode stores values under %d bytes, got %d",
					i, inMemoryMaxValue, len(op.Value))
			}
		}
	}

	// Conditions read at the newest published timestamp. A conditional
	// commit holds commitMu exclusively, so no commit is in flight and that
	// timestamp covers every commit so far.
	txn := d.db.NewTransactionAt(d.published.ts(), true)
	defer txn.Discard()
	for _, c := range b.Conditions {
		ok, err := holds(txn, c)
		if err != nil {
			return fmt.Errorf("badger: condition on %q: %w", c.Key, err)
		}
		if !ok {
			return backend.ErrConditionFailed
		}
	}
	for i, op := range b.Ops {
		var err error
		if op.Delete {
			err = txn.Delete(op.Key)
		} else {
			err = txn.Set(op.Key, op.Value)
		}
		if err != nil {
			return fmt.Errorf("badger: op %d of %d (batch ~%d bytes): %w", i, len(b.Ops), b.Bytes(), err)
		}
	}
	if len(b.Ops) == 0 {
		return nil
	}
	return d.commitAt(txn)
}

// commitAt writes txn at the next timestamp and returns once it is synced
// and published.
func (d *DB) commitAt(txn *badgerdb.Txn) error {
	written := make(chan error, 1)
	d.seqMu.Lock()
	d.lastTs++
	ts := d.lastTs
	// With a callback CommitAt returns once the batch is queued (or
	// refused, calling back at once), not when it is written: holding
	// seqMu only that long keeps the queue in timestamp order while
	// concurrent commits still travel through Badger's writer together.
	txn.CommitAt(ts, func(err error) { written <- err })
	d.seqMu.Unlock()
	err := <-written
	if err == nil {
		err = d.syncDirIfChanged()
	}
	if d.afterWrite != nil {
		d.afterWrite(ts)
	}
	// Published even on failure, or later timestamps would wait forever.
	// A failed batch is not acknowledged; as in Badger's own mode, where a
	// failed commit's timestamp is marked done too, Badger normally applies
	// nothing of it.
	d.published.done(ts)
	if err != nil {
		return fmt.Errorf("badger: commit: %w", err)
	}
	return nil
}

func holds(txn *badgerdb.Txn, c backend.Condition) (bool, error) {
	item, err := txn.Get(c.Key)
	if errors.Is(err, badgerdb.ErrKeyNotFound) {
		return c.Value == nil, nil
	}
	if err != nil {
		return false, err
	}
	if c.Value == nil {
		return false, nil
	}
	var eq bool
	err = item.Value(func(v []byte) error {
		eq = bytes.Equal(v, c.Value)
		return nil
	})
	return eq, err
}

// Size implements backend.Backend: the bytes the LSM tree, value log and
// WAL occupy on disk (for InMemory, the flushed tables only). It may lag
// writes by up to a second.
func (d *DB) Size() int64 {
	if !d.gate.Enter() {
		return 0
	}
	defer d.gate.Exit()
	d.sizeMu.Lock()
	defer d.sizeMu.Unlock()
	if now := time.Now(); now.Sub(d.sizeAt) >= sizeTTL {
		d.size, d.sizeAt = d.computeSize(), now
	}
	return d.size
}

func (d *DB) computeSize() int64 {
	var n int64
	if d.inMemory {
		for _, t := range d.db.Tables() {
			n += int64(t.OnDiskSize)
		}
		return n
	}
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		d.log.Warn("size: reading data dir", "dir", d.dir, "err", err)
		return 0
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed by a compaction since ReadDir
		}
		n += allocated(fi)
	}
	return n
}

// allocated returns the bytes a file really occupies. Badger preallocates
// the active value log and memtable WALs as sparse files of twice their
// nominal size (2 GiB for the value log), so the apparent size would report
// an empty store as gigabytes and trip any quota. The block count lives in
// the platform's stat struct; reading it by name keeps this file portable.
func allocated(fi os.FileInfo) int64 {
	if v := reflect.ValueOf(fi.Sys()); v.Kind() == reflect.Pointer && !v.IsNil() {
		if st := v.Elem(); st.Kind() == reflect.Struct {
			if blocks := st.FieldByName("Blocks"); blocks.IsValid() && blocks.CanInt() {
				return blocks.Int() * 512 // st_blocks is in 512-byte units
			}
		}
	}
	return fi.Size()
}

// Close implements backend.Backend. It waits for calls in progress, then
// closes Badger. Snapshots still open stop working; closing them is safe.
func (d *DB) Close() error {
	if !d.gate.Shut(nil) {
		return backend.ErrClosed
	}
	close(d.stop)
	<-d.bgDone
	if err := d.db.Close(); err != nil {
		return fmt.Errorf("badger: close: %w", err)
	}
	return nil
}

// inBackground runs f on the background goroutine, which alone trims
// mappings and runs value-log GC (see trimValueLogs), and waits for it. It
// reports false when the store is closed.
func (d *DB) inBackground(f func()) bool {
	done := make(chan struct{})
	select {
	case d.run <- func() { defer close(done); f() }:
		<-done
		return true
	case <-d.bgDone:
		return false
	}
}

func (d *DB) background() {
	defer close(d.bgDone)
	discard := time.NewTicker(discardInterval)
	defer discard.Stop()
	var gc <-chan time.Time
	if !d.inMemory {
		t := time.NewTicker(gcInterval)
		defer t.Stop()
		gc = t.C
	}
	for {
		select {
		case <-d.stop:
			return
		case f := <-d.run:
			f()
		case <-discard.C:
			d.advanceDiscardTs()
			if err := d.syncDirIfChanged(); err != nil {
				d.log.Warn("syncing the data dir", "err", err)
			}
			if n, err := d.trimTables(); err != nil {
				d.log.Warn("dropping written table pages from memory", "err", err)
			} else if n > 0 {
				d.log.Debug("dropped written table pages from memory", "bytes", n)
			}
			if n, err := d.trimValueLogs(); err != nil {
				d.log.Warn("dropping written value-log pages from memory", "err", err)
			} else if n > 0 {
				d.log.Debug("dropped written value-log pages from memory", "bytes", n)
			}
		case <-gc:
			d.collectValueLog()
		}
	}
}

// syncDirIfChanged fsyncs the engine's directory when a file was created,
// renamed or removed in it since the last sync. Badger v4.9 does not: a
// memtable flush adds a table to the MANIFEST and a memtable switch starts
// a new write-ahead log without ever syncing the directory (ristretto's
// OpenMmapFileUsing means to, but its check never fires), so on a
// filesystem that does not order metadata (strict POSIX) a power cut could
// lose the name of a log holding acknowledged writes, or of a table the
// MANIFEST lists. Commit calls it before returning, so every name a write
// may depend on is durable before the write is acknowledged; the
// background loop calls it too, for flushes and compactions between
// commits. The directory's modification time tells a change; a stat is
// cheap.
func (d *DB) syncDirIfChanged() error {
	if d.inMemory {
		return nil
	}
	fi, err := os.Stat(d.dir)
	if err != nil {
		return fmt.Errorf("badger: stat data dir: %w", err)
	}
	d.dirMu.Lock()
	defer d.dirMu.Unlock()
	if fi.ModTime().Equal(d.dirSynced) {
		return nil
	}
	if err := durable.SyncDir(d.dir); err != nil {
		return fmt.Errorf("badger: %w", err)
	}
	d.dirSynced = fi.ModTime() // a change after the stat is synced too, and synced again next time
	return nil
}

// advanceDiscardTs tells compaction it may drop versions that were
// overwritten or deleted at or below the oldest open snapshot's timestamp
// (the newest published one when none is open): nobody can read them any
// more. It returns that timestamp.
func (d *DB) advanceDiscardTs() uint64 {
	ts := d.pins.oldest(&d.published)
	d.db.SetDiscardTs(ts)
	return ts
}

// collectValueLog reclaims value-log space freed by deletes (MVCC
// compaction). Each successful RunValueLogGC rewrites a single file, so it
// repeats until Badger finds nothing worth rewriting.
func (d *DB) collectValueLog() {
	d.advanceDiscardTs()
	before, err := valueLogIDs(d.dir)
	if err != nil {
		d.log.Warn("value log GC: listing the data dir", "err", err)
		return
	}
	rewrites := 0
	defer func() { d.trim.noteValueLogGC(rewrites, before) }()
	for {
		select {
		case <-d.stop:
			return
		default:
		}
		err := d.db.RunValueLogGC(gcDiscardRatio)
		switch {
		case err == nil:
			rewrites++
			continue
		case errors.Is(err, badgerdb.ErrNoRewrite), errors.Is(err, badgerdb.ErrRejected):
		default:
			d.log.Warn("value log GC failed", "err", err)
		}
		return
	}
}

// Badger hands an empty stored value to Value callbacks as nil, which a
// caller would mistake for KeysOnly's "no value".
var emptyValue = []byte{}

type snapshot struct {
	d      *DB
	ts     uint64
	txn    *badgerdb.Txn
	closed atomic.Bool
}

// Get implements backend.Snapshot.
func (s *snapshot) Get(key []byte) ([]byte, error) {
	if s.closed.Load() || !s.d.gate.Enter() {
		return nil, backend.ErrClosed
	}
	defer s.d.gate.Exit()
	item, err := s.txn.Get(key)
	if errors.Is(err, badgerdb.ErrKeyNotFound) {
		return nil, backend.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("badger: get %q: %w", key, err)
	}
	v, err := item.ValueCopy(nil)
	if err == nil {
		err = checkRead(item, v)
	}
	if err != nil {
		return nil, fmt.Errorf("badger: get %q: %w", key, err)
	}
	return v, nil
}

// Scan implements backend.Snapshot.
func (s *snapshot) Scan(start, end []byte, opts backend.ScanOptions, fn func(key, value []byte) error) error {
	if s.closed.Load() || !s.d.gate.Enter() {
		return backend.ErrClosed
	}
	defer s.d.gate.Exit()
	if end != nil && bytes.Compare(start, end) >= 0 {
		return nil
	}

	it := s.txn.NewIterator(badgerdb.IteratorOptions{
		Reverse: opts.Reverse,
		// Badger prefetches by spawning a goroutine and copying each value;
		// with values mostly inline that costs more than reading them in
		// place, and KeysOnly must not touch values at all.
		PrefetchValues: false,
		// Every key in [start, end) shares their common prefix; telling
		// Badger lets it skip tables that cannot hold any of them.
		Prefix: commonPrefix(start, end),
	})
	defer it.Close()

	switch {
	case !opts.Reverse:
		it.Seek(start)
	case end == nil:
		it.Rewind()
	default:
		// A reverse Seek lands on the largest key <= end; end itself is
		// excluded below.
		it.Seek(end)
	}

	n := 0
	for ; it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if opts.Reverse {
			if end != nil && bytes.Compare(k, end) >= 0 {
				continue
			}
			if bytes.Compare(k, start) < 0 {
				break
			}
		} else if end != nil && bytes.Compare(k, end) >= 0 {
			break
		}

		var err error
		if opts.KeysOnly {
			err = fn(k, nil)
		} else {
			err = item.Value(func(v []byte) error {
				if err := checkRead(item, v); err != nil {
					return err
				}
				if v == nil {
					v = emptyValue
				}
				return fn(k, v)
			})
		}
		if err != nil {
			if errors.Is(err, backend.ErrStop) {
				return nil
			}
			return err
		}
		if n++; opts.Limit > 0 && n >= opts.Limit {
			break
		}
	}
	return nil
}

// checkRead turns a value Badger could not read into an error. Badger
// only logs a value-log read that fails (a damaged or cut value log, or a
// checksum mismatch) and hands back an empty value, which would be served as
// a key with no value.
func checkRead(item *badgerdb.Item, v []byte) error {
	if len(v) == 0 && item.ValueSize() > 0 {
		return fmt.Errorf("%w: the value of %q at version %d cannot be read from the value log", ErrDamaged, item.Key(), item.Version())
	}
	return nil
}

// Close implements backend.Snapshot.
func (s *snapshot) Close() {
	if s.closed.Swap(true) {
		return
	}
	// In managed mode Discard only marks the transaction, so it is safe
	// even once the DB is closed.
	s.txn.Discard()
	s.d.pins.unpin(s.ts)
}

// commonPrefix returns the longest prefix of start and end; nil if end is
// unbounded.
func commonPrefix(start, end []byte) []byte {
	if end == nil {
		return nil
	}
	n := min(len(start), len(end))
	i := 0
	for i < n && start[i] == end[i] {
		i++
	}
	return start[:i:i]
}

// watermark publishes commit timestamps in order. Batches may finish
// writing out of order, but a timestamp becomes readable only once it and
// every earlier one are done; otherwise a snapshot at a later timestamp
// could miss an earlier batch and then see it appear underneath it.
type watermark struct {
	mu      sync.Mutex
	cond    sync.Cond
	visible atomic.Uint64
	early   map[uint64]struct{} // done, but above a timestamp still in flight
}

func (w *watermark) init(ts uint64) {
	w.cond.L = &w.mu
	w.visible.Store(ts)
	w.early = make(map[uint64]struct{})
}

// ts returns the newest published timestamp.
func (w *watermark) ts() uint64 { return w.visible.Load() }

// done marks ts finished and returns once it is published. Timestamps are
// handed out one by one, and each must be marked done exactly once.
func (w *watermark) done(ts uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if v := w.visible.Load(); ts != v+1 {
		w.early[ts] = struct{}{}
		for w.visible.Load() < ts {
			w.cond.Wait()
		}
		return
	}
	v := ts
	for {
		if _, ok := w.early[v+1]; !ok {
			break
		}
		delete(w.early, v+1)
		v++
	}
	w.visible.Store(v)
	w.cond.Broadcast()
}

// pins counts open snapshots by read timestamp, so compaction keeps the
// versions the oldest of them reads.
type pins struct {
	mu sync.Mutex
	n  map[uint64]int
}

func (p *pins) init() { p.n = make(map[uint64]int) }

// pin returns the newest published timestamp, held until unpin. Reading it
// under the lock orders it against oldest: a snapshot pinned after oldest
// returns can only get a timestamp at or above what oldest returned.
func (p *pins) pin(w *watermark) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	ts := w.ts()
	p.n[ts]++
	return ts
}

func (p *pins) unpin(ts uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[ts]--; p.n[ts] <= 0 {
		delete(p.n, ts)
	}
}

// oldest returns the smallest pinned timestamp, or the newest published
// one when nothing is pinned. It walks the distinct pinned timestamps,
// which it only does once a second.
func (p *pins) oldest(w *watermark) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	ts := w.ts()
	for t := range p.n {
		ts = min(ts, t)
	}
	return ts
}

// gate is the engine's close gate.
type gate = backend.CloseGate

// slogAdapter routes Badger's logger to slog. Badger logs every flush and
// compaction at info, which is noise for an operator, so info and debug
// are demoted below slog's default level: only warnings and errors show
// unless debug logging is enabled.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Errorf(f string, args ...any)   { a.log(slog.LevelError, f, args) }
func (a slogAdapter) Warningf(f string, args ...any) { a.log(slog.LevelWarn, f, args) }
func (a slogAdapter) Infof(f string, args ...any)    { a.log(slog.LevelDebug, f, args) }
func (a slogAdapter) Debugf(f string, args ...any)   { a.log(slog.LevelDebug-4, f, args) }

func (a slogAdapter) log(level slog.Level, f string, args []any) {
	ctx := context.Background()
	if !a.l.Enabled(ctx, level) {
		return
	}
	a.l.Log(ctx, level, strings.TrimSpace(fmt.Sprintf(f, args...)))
}
