package mvcc_test

import (
	"errors"
	"fmt"
	"math/rand"
	"testing"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/mvcc"
)

// failingBackend lets the first ok commits through and refuses the rest,
// as a compaction batch that fails (an engine error, the
// compactBeforeBatch=return failpoint) or a crash after ok batches does.
type failingBackend struct {
	backend.Backend
	ok int
}

var errInjected = errors.New("injected commit failure")

func (f *failingBackend) Commit(b *backend.Batch) error {
	if f.ok <= 0 {
		return errInjected
	}
	f.ok--
	return f.Backend.Commit(b)
}

// churn writes n random revisions over the harness's keys: updates,
// deletions, and deletions and creations within one revision, so keys
// have several generations.
func (h *harness) churn(r *rand.Rand, n int) {
	for range n {
		var ops []op
		switch x := r.Intn(10); {
		case x < 6:
			ops = []op{{key: h.keys[r.Intn(len(h.keys))], del: r.Intn(3) == 0}}
		case x < 8:
			k := h.keys[r.Intn(len(h.keys))]
			first := r.Intn(2) == 0
			ops = []op{{key: k, del: first}, {key: k, del: !first}}
		default:
			for _, k := range h.keys {
				if r.Intn(3) == 0 {
					ops = append(ops, op{key: k, del: r.Intn(3) == 0})
				}
			}
		}
		h.revision(ops, 100)
	}
}

// markCompacted records the compacted revision in the store as the writer
// does before it schedules a physical compaction.
func (h *harness) markCompacted(rev int64) {
	h.t.Helper()
	b := backend.Batch{}
	b.Put(mvcc.MetaCompacted, mvcc.EncodeRev(rev))
	if err := h.be.Commit(&b); err != nil {
		h.t.Fatal(err)
	}
	h.idx.SetCompacted(rev)
	h.comp = rev
}

// fullyCompacted compacts everything and checks that one history entry per
// live key is left: a state the index no longer names (an orphan) would
// survive it.
func (h *harness) fullyCompacted(idx *mvcc.Index) {
	h.t.Helper()
	h.markCompacted(h.rev)
	if err := mvcc.CompactHistory(h.be, idx, h.rev, 3, nil); err != nil {
		h.t.Fatal(err)
	}
	h.check(idx, "after full compaction")
	snap, err := h.be.Snapshot()
	if err != nil {
		h.t.Fatal(err)
	}
	defer snap.Close()
	var left []string
	snap.Scan([]byte("h"), []byte("i"), backend.ScanOptions{KeysOnly: true}, func(k, _ []byte) error {
		key, rev, _ := mvcc.SplitHistoryKey(k)
		left = append(left, fmt.Sprintf("%s@%d", key, rev))
		return nil
	})
	if int64(len(left)) != idx.Live() {
		h.t.Fatalf("%d history entries after full compaction, want %d (one per live key): %v", len(left), idx.Live(), left)
	}
}

// A compaction batch that fails leaves the store as it was, so the index
// must still name every state of it: a later compaction has to remove
// them, and an index rebuilt from the store has to agree with the one the
// process kept. (Trimming the index ahead of the store left the failed
// batch's states behind, named by nothing; a later compaction then removed
// the deletion and creation around them, and the rebuilt index merged
// them into the key's next generation: deleted keys came back, with old
// create revisions and wrong versions.)
func TestCompactionBatchFailureKeepsIndexAndStore(t *testing.T) {
	for seed := int64(1); seed <= 4; seed++ {
		for ok := 0; ok < 6; ok++ {
			t.Run(fmt.Sprintf("seed=%d/batches=%d", seed, ok), func(t *testing.T) {
				h := newHarness(t)
				r := rand.New(rand.NewSource(seed))
				h.churn(r, 150)
				h.markCompacted(h.rev - 20)
				err := mvcc.CompactHistory(&failingBackend{Backend: h.be, ok: ok}, h.idx, h.comp, 3, nil)
				if !errors.Is(err, errInjected) {
					t.Fatalf("compaction with %d good batches: %v, want the injected failure", ok, err)
				}
				h.check(h.idx, "live index after a failed compaction")
				// The process goes on: more generations, then a later
				// compaction that succeeds.
				h.churn(r, 150)
				h.markCompacted(h.rev - 20)
				if err := mvcc.CompactHistory(h.be, h.idx, h.comp, 3, nil); err != nil {
					t.Fatal(err)
				}
				h.check(h.idx, "live index after the next compaction")
				rebuilt, err := mvcc.LoadIndex(h.be)
				if err != nil {
					t.Fatal(err)
				}
				h.check(rebuilt, "rebuilt index")
				if rebuilt.Live() != h.idx.Live() {
					t.Fatalf("live keys: rebuilt %d, live %d", rebuilt.Live(), h.idx.Live())
				}
				h.fullyCompacted(h.idx)
			})
		}
	}
}

// A crash after some batches of a compaction leaves a store whose rebuilt
// index agrees with the model; the compaction is pending and, resumed on
// that index, finishes.
func TestCompactionCrashResumes(t *testing.T) {
	for seed := int64(1); seed <= 4; seed++ {
		for ok := 0; ok < 8; ok++ {
			t.Run(fmt.Sprintf("seed=%d/batches=%d", seed, ok), func(t *testing.T) {
				h := newHarness(t)
				r := rand.New(rand.NewSource(seed))
				h.churn(r, 150)
				h.markCompacted(h.rev - 20)
				if err := mvcc.CompactHistory(&failingBackend{Backend: h.be, ok: ok}, h.idx, h.comp, 3, nil); !errors.Is(err, errInjected) {
					t.Fatalf("compaction with %d good batches: %v, want the injected failure", ok, err)
				}
				// Crash: the process's index is gone, the store is what is left.
				idx, err := mvcc.LoadIndex(h.be)
				if err != nil {
					t.Fatal(err)
				}
				h.check(idx, "index rebuilt after the crash")
				if p, err := mvcc.CompactionPending(h.be); err != nil || p != h.comp {
					t.Fatalf("pending compaction %d (%v), want %d", p, err, h.comp)
				}
				h.idx = idx
				if err := mvcc.CompactHistory(h.be, idx, h.comp, 3, nil); err != nil {
					t.Fatal(err)
				}
				if p, err := mvcc.CompactionPending(h.be); err != nil || p != 0 {
					t.Fatalf("pending compaction %d (%v) after resuming, want none", p, err)
				}
				h.check(idx, "index after the resumed compaction")
				h.churn(r, 50)
				rebuilt, err := mvcc.LoadIndex(h.be)
				if err != nil {
					t.Fatal(err)
				}
				h.check(rebuilt, "rebuilt again")
				h.fullyCompacted(h.idx)
			})
		}
	}
}
