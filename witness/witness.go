// Package witness keeps a record, outside the storage engine's files, of
// which store a data dir holds and the newest revision that store durably
// committed. The engine repairs itself at open by cutting what it cannot
// read, so a damaged MANIFEST or log makes it open older or emptier without
// a word; comparing what it opened with the witness turns that into a
// refusal. The package knows files only: not the engine, not the storage
// format, not the server.
package witness

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/axon-kv/axon/internal/durable"
)

// FileName is the witness file inside a data dir.
const FileName = "axon.witness"

// ErrDamaged is returned by Read when the file exists but neither of its
// slots is readable.
var ErrDamaged = errors.New("witness: file damaged")

const (
	slotSize = 512
	magic    = "AXW1"
	maxID    = 128
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is what a witness holds.
type Record struct {
	// StoreID identifies the store (kept in the store too).
	StoreID string
	// Revision is a revision the store had durably committed; the store
	// must open at this revision or later.
	Revision int64
	seq      uint64
}

// The file has two slots written in turn, each with a sequence number and
// a checksum: a write torn by a crash spoils at most the slot being
// written, and the other still holds the previous record.
func encode(r Record) []byte {
	b := make([]byte, slotSize)
	copy(b, magic)
	binary.BigEndian.PutUint64(b[4:], r.seq)
	binary.BigEndian.PutUint64(b[12:], uint64(r.Revision))
	binary.BigEndian.PutUint16(b[20:], uint16(len(r.StoreID)))
	n := copy(b[22:22+maxID], r.StoreID)
	binary.BigEndian.PutUint32(b[22+n:], crc32.Checksum(b[:22+n], castagnoli))
	return b
}

func decode(b []byte) (Record, bool) {
	if len(b) < slotSize || string(b[:4]) != magic {
		return Record{}, false
	}
	n := int(binary.BigEndian.Uint16(b[20:]))
	if n > maxID {
		return Record{}, false
	}
	if crc32.Checksum(b[:22+n], castagnoli) != binary.BigEndian.Uint32(b[22+n:]) {
		return Record{}, false
	}
	return Record{
		seq:      binary.BigEndian.Uint64(b[4:]),
		Revision: int64(binary.BigEndian.Uint64(b[12:])),
		StoreID:  string(b[22 : 22+n]),
	}, true
}

// Read returns the record in dir; ok is false when there is no witness
// file. A file with no readable slot gives ErrDamaged.
func Read(dir string) (rec Record, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	if errors.Is(err, os.ErrNotExist) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, err
	}
	found := false
	for i := 0; i+slotSize <= len(data) && i < 2*slotSize; i += slotSize {
		if r, good := decode(data[i : i+slotSize]); good && (!found || r.seq > rec.seq) {
			rec, found = r, true
		}
	}
	if !found {
		return Record{}, false, fmt.Errorf("%w: %s has no readable record", ErrDamaged, filepath.Join(dir, FileName))
	}
	return rec, true, nil
}

// Writer keeps the witness of one data dir current. Advance is cheap and
// never blocks the caller: one goroutine writes the newest revision it was
// given and syncs, then the next, so the record trails the store by about
// one sync and costs at most one sync at a time.
type Writer struct {
	f   *os.File
	log *slog.Logger

	mu      sync.Mutex
	cond    *sync.Cond
	rec     Record // last written
	want    int64  // newest revision asked for
	closed  bool
	done    chan struct{}
	lastErr error
}

// Create writes rec as the witness of dir, replacing any earlier one, and
// syncs it before returning; Advance then moves it forward.
func Create(dir string, rec Record, log *slog.Logger) (*Writer, error) {
	if len(rec.StoreID) > maxID {
		return nil, fmt.Errorf("witness: store id longer than %d bytes", maxID)
	}
	path := filepath.Join(dir, FileName)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	rec.seq = 1
	buf := append(encode(rec), encode(Record{})...) // second slot: unreadable until first written
	if _, err := f.WriteAt(buf, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("witness: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("witness: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		f.Close()
		return nil, fmt.Errorf("witness: %w", err)
	}
	if err := durable.SyncDir(dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("witness: %w", err)
	}
	w := &Writer{f: f, log: log, rec: rec, want: rec.Revision, done: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	go w.run()
	return w, nil
}

// Advance records that rev is durably committed.
func (w *Writer) Advance(rev int64) {
	w.mu.Lock()
	if rev > w.want {
		w.want = rev
		w.cond.Signal()
	}
	w.mu.Unlock()
}

// Revision is the revision the witness durably holds.
func (w *Writer) Revision() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rec.Revision
}

func (w *Writer) run() {
	defer close(w.done)
	w.mu.Lock()
	failed := int64(0) // a revision whose write failed: retried only for a newer one, or at Close
	for {
		for !w.closed && w.want <= max(w.rec.Revision, failed) {
			w.cond.Wait()
		}
		if w.want <= w.rec.Revision || (w.closed && w.want <= failed) {
			w.mu.Unlock()
			return
		}
		next := w.rec
		next.Revision = w.want
		next.seq++
		w.mu.Unlock()
		err := w.write(next)
		w.mu.Lock()
		if err != nil {
			if w.lastErr == nil && w.log != nil {
				w.log.Error("cannot update the witness file; damage to the store may go undetected at the next start", "err", err)
			}
			w.lastErr = err
			failed = next.Revision
			continue
		}
		w.lastErr = nil
		w.rec = next
	}
}

func (w *Writer) write(r Record) error {
	off := int64(((r.seq - 1) % 2) * slotSize)
	if _, err := w.f.WriteAt(encode(r), off); err != nil {
		return err
	}
	return w.f.Sync()
}

// Close writes the newest revision it was given, syncs and closes.
func (w *Writer) Close() error {
	w.mu.Lock()
	w.closed = true
	w.cond.Signal()
	w.mu.Unlock()
	<-w.done
	w.mu.Lock()
	err := w.lastErr
	w.mu.Unlock()
	return errors.Join(err, w.f.Close())
}
