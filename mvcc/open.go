package mvcc

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/axon-kv/axon/backend"
)

// ErrFormat is wrapped by the error for a store of another storage format.
var ErrFormat = errors.New("mvcc: unsupported storage format")

// checkFormat refuses a store written in another format; fresh reports a
// store that holds nothing yet.
func checkFormat(snap backend.Snapshot) (fresh bool, err error) {
	r := Reader{Snap: snap}
	f, err := r.get(MetaFormat)
	if err != nil {
		return false, err
	}
	if f != nil {
		v, perr := strconv.Atoi(string(f))
		if perr != nil || v != FormatVersion {
			return false, fmt.Errorf("%w: the store is in storage format %q, this axon reads format %d", ErrFormat, f, FormatVersion)
		}
		return false, nil
	}
	// Format 1 had no format key; it always had a revision or latest-state
	// entries once anything was written.
	old := false
	if rev, err := r.get(MetaRevision); err != nil {
		return false, err
	} else if rev != nil {
		old = true
	}
	err = snap.Scan([]byte{prefixLatestV1}, []byte{prefixLatestV1 + 1}, backend.ScanOptions{Limit: 1, KeysOnly: true}, func(_, _ []byte) error {
		old = true
		return nil
	})
	if err != nil {
		return false, err
	}
	if old {
		return false, fmt.Errorf("%w: the store is in storage format 1 (no format record), this axon reads format %d; "+
			"copy it with `axon migrate` from a server of the version that wrote it", ErrFormat, FormatVersion)
	}
	return true, nil
}

// Recover prepares a store for a writer: it refuses another format,
// records the format of a new store, and rolls back the batches of a
// revision that was never committed (a crash in the middle of a revision
// too large for one batch). fence guards the writes as the writer's own.
// It returns how many record chunks it rolled back.
func Recover(be backend.Backend, fence func() []backend.Condition) (int, error) {
	snap, err := be.Snapshot()
	if err != nil {
		return 0, err
	}
	defer snap.Close()
	fresh, err := checkFormat(snap)
	if err != nil {
		return 0, err
	}
	cur, _, err := Reader{Snap: snap}.Meta()
	if err != nil {
		return 0, err
	}
	t := NewWriteTxn(be, WriteOptions{Fence: fence})
	if fresh {
		t.batch.Put(MetaFormat, []byte(strconv.Itoa(FormatVersion)))
	}
	if id, err := (Reader{Snap: snap}).get(MetaStoreID); err != nil {
		return 0, err
	} else if id == nil {
		// Stores created before identities existed get one now.
		t.batch.Put(MetaStoreID, []byte(newStoreID()))
	}
	rolled := 0
	err = snap.Scan(RevisionKey(cur+1), []byte{prefixRevision + 1}, backend.ScanOptions{}, func(k, v []byte) error {
		rec, err := DecodeRecord(v)
		if err != nil {
			return fmt.Errorf("mvcc: unfinished revision record %x: %w", k, err)
		}
		for _, c := range rec.Changes {
			t.batch.Delete(HistoryKey(c.Key, rec.Revision))
		}
		t.batch.Delete(append([]byte(nil), k...))
		rolled++
		if t.batch.Len() >= t.opts.FlushOps {
			return t.write()
		}
		return nil
	})
	if err != nil {
		return rolled, fmt.Errorf("mvcc: rolling back an unfinished revision: %w", err)
	}
	if t.batch.Len() == 0 {
		return rolled, nil
	}
	return rolled, t.write()
}

// Identity returns the store's id and current revision; fresh reports a
// store that holds nothing at all (not even a format record), which is what
// an engine whose files were lost opens as. It writes nothing.
func Identity(be backend.Backend) (id string, rev int64, fresh bool, err error) {
	snap, err := be.Snapshot()
	if err != nil {
		return "", 0, false, err
	}
	defer snap.Close()
	r := Reader{Snap: snap}
	f, err := r.get(MetaFormat)
	if err != nil {
		return "", 0, false, err
	}
	b, err := r.get(MetaRevision)
	if err != nil {
		return "", 0, false, err
	}
	v, err := r.get(MetaStoreID)
	if err != nil {
		return "", 0, false, err
	}
	return string(v), DecodeRev(b), f == nil && b == nil, nil
}

func newStoreID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// LoadIndex checks the store's format and builds the key index from the
// history entries of one snapshot. Entries of an unfinished revision
// (above m/revision) are left out.
func LoadIndex(be backend.Backend) (*Index, error) {
	snap, err := be.Snapshot()
	if err != nil {
		return nil, err
	}
	defer snap.Close()
	if _, err := checkFormat(snap); err != nil {
		return nil, err
	}
	cur, comp, err := Reader{Snap: snap}.Meta()
	if err != nil {
		return nil, err
	}
	x := NewIndex(cur, comp)
	var (
		k      keyIndex
		have   bool
		keyBuf []byte
		prefix []byte
		load   = loader{x: x}
	)
	finish := func() error {
		if !have {
			return nil
		}
		if deadAtTip(&k) {
			k.lease = 0
		}
		have = false
		return load.add(&k)
	}
	start := time.Now()
	err = snap.Scan([]byte{prefixHistory}, []byte{prefixHistory + 1}, backend.ScanOptions{}, func(bk, v []byte) error {
		if len(bk) < 11 {
			return fmt.Errorf("mvcc: malformed history key %x", bk)
		}
		rev := int64(binary.BigEndian.Uint64(bk[len(bk)-8:]))
		if rev > cur {
			return nil // an unfinished revision: not committed
		}
		p := bk[:len(bk)-8]
		if !have || !bytes.Equal(p, prefix) {
			if err := finish(); err != nil {
				return err
			}
			prefix = append(prefix[:0], p...)
			keyBuf = append(keyBuf[:0], userKeyOfHistoryPrefix(p)...)
			k, have = keyIndex{key: str(keyBuf)}, true
		}
		kv, err := decodeMeta(v)
		if err != nil {
			return fmt.Errorf("mvcc: history entry %x: %w", bk, err)
		}
		k.restore(rev, &kv)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := finish(); err != nil {
		return nil, err
	}
	load.flush()
	_ = start
	return x, nil
}

// restore adds a stored state; a key's states come in revision order.
func (k *keyIndex) restore(rev int64, kv *stateMeta) {
	if kv.Deleted {
		if k.last == 0 || k.tomb {
			// A deletion whose creation was compacted away (a compaction
			// interrupted between them): a generation of its own.
			k.begin(rev, 0, 0)
			k.tomb = true
			return
		}
		k.push(rev, true)
		return
	}
	if k.last != 0 && !k.tomb && kv.CreateRevision == rev {
		// Deleted and created again in one transaction: only the new
		// state is stored, the deletion is implied by its create revision.
		k.push(rev, true)
	}
	if k.last == 0 || k.tomb {
		k.begin(rev, kv.CreateRevision, kv.Version)
	} else {
		k.push(rev, false)
	}
	k.lease = kv.Lease
}
