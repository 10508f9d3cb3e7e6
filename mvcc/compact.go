package mvcc

import (
	"errors"

	"github.com/axon-kv/axon/backend"
)

// ErrInterrupted is returned by CompactHistory when quit closed.
var ErrInterrupted = errors.New("mvcc: compaction interrupted by shutdown")

// CompactHistory removes what a compaction at rev made unreadable, in
// batches of about batch deletions so it never holds up the writer for
// long: for every key the versions at or below rev but the newest (and that
// one too when it is a deletion), as the index names them, then the
// revision records below rev. It records its progress last, so a crash
// makes the next start run it again; every step is idempotent.
//
// The writer never writes at or below the compacted revision again, so
// these batches need not go through it.
func CompactHistory(be backend.Backend, idx *Index, rev int64, batch int, quit <-chan struct{}) error {
	var (
		b     backend.Batch
		after string
		first = true
	)
	flush := func() error {
		if b.Len() == 0 {
			return nil
		}
		// gofail: var compactBeforeBatch struct{}
		// return errors.New("failpoint compactBeforeBatch")
		err := be.Commit(&b)
		b = backend.Batch{}
		if err != nil {
			return err
		}
		// The batch is durable, the compaction's progress mark is not.
		// gofail: var compactAfterBatch struct{}
		// return errors.New("failpoint compactAfterBatch")
		return nil
	}
	for {
		select {
		case <-quit:
			return ErrInterrupted
		default:
		}
		var (
			more bool
			keys [][]byte
		)
		after, more = idx.CompactStep(rev, after, first, batch, func(c Compacted) {
			keys = append(keys, c.Key)
			for _, r := range c.Revs {
				b.Delete(HistoryKey(c.Key, r))
			}
		})
		first = false
		if err := flush(); err != nil {
			// The index still names every state of the failed batch, so
			// the next compaction removes them.
			return err
		}
		idx.Trim(rev, keys)
		if !more {
			break
		}
	}
	snap, err := be.Snapshot()
	if err != nil {
		return err
	}
	defer snap.Close()
	if err := persistSubs(be, snap, rev); err != nil {
		return err
	}
	err = snap.Scan(RevisionKey(0), RevisionKey(rev), backend.ScanOptions{KeysOnly: true}, func(k, _ []byte) error {
		b.Delete(append([]byte(nil), k...))
		if b.Len() >= batch {
			return flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.Put(MetaCompactDone, EncodeRev(rev))
	return flush()
}

// CompactIndex trims the index for a compaction at rev without touching
// the store: a follower's index, whose store the leader compacts.
func CompactIndex(idx *Index, rev int64) {
	idx.SetCompacted(rev)
	after, first := "", true
	for {
		var (
			more bool
			keys [][]byte
		)
		after, more = idx.CompactStep(rev, after, first, 10000, func(c Compacted) { keys = append(keys, c.Key) })
		first = false
		idx.Trim(rev, keys)
		if !more {
			return
		}
	}
}

// CompactionPending returns the compacted revision when a physical
// compaction of it has not finished (a crash interrupted it), else 0.
func CompactionPending(be backend.Backend) (int64, error) {
	snap, err := be.Snapshot()
	if err != nil {
		return 0, err
	}
	defer snap.Close()
	r := Reader{Snap: snap}
	_, comp, err := r.Meta()
	if err != nil {
		return 0, err
	}
	done, err := r.get(MetaCompactDone)
	if err != nil {
		return 0, err
	}
	if comp > DecodeRev(done) {
		return comp, nil
	}
	return 0, nil
}
