package mvcc_test

import (
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/proto/axonpb"
	"github.com/axon-kv/axon/server"
)

// buildStore writes testenv.WriteWorkload through a real server on Badger,
// stops it, and returns its database dir.
func buildStore(t *testing.T) (string, testenv.Workload) {
	t.Helper()
	dataDir := t.TempDir()
	s, c := testenv.StartAxon(t, server.Config{Backend: "badger", DataDir: dataDir})
	w := testenv.WriteWorkload(t, c)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dataDir, "badger"), w
}

func openDB(t *testing.T, dir string) *badger.DB {
	t.Helper()
	db, err := badger.Open(badger.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func check(t *testing.T, be backend.Backend) *mvcc.CheckReport {
	t.Helper()
	calls := 0
	rep, err := mvcc.Check(be, mvcc.CheckOptions{ProgressEvery: 100, Progress: func(mvcc.CheckProgress) { calls++ }})
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if calls == 0 {
		t.Error("check never reported progress")
	}
	return rep
}

type histEntry struct {
	key []byte
	rev int64
	kv  *axonpb.KeyValue
}

// history reads every history entry of the store.
func history(t *testing.T, be backend.Backend) []histEntry {
	t.Helper()
	snap, err := be.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	var out []histEntry
	start, end := mvcc.HistoryRange(nil, []byte{0})
	err = snap.Scan(start, end, backend.ScanOptions{}, func(k, v []byte) error {
		key, rev, ok := mvcc.SplitHistoryKey(k)
		if !ok {
			t.Fatalf("bad history key %x", k)
		}
		kv, err := mvcc.DecodeKV(v)
		if err != nil {
			return err
		}
		out = append(out, histEntry{key: key, rev: rev, kv: kv})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func commit(t *testing.T, be backend.Backend, fn func(b *backend.Batch)) {
	t.Helper()
	var b backend.Batch
	fn(&b)
	if err := be.Commit(&b); err != nil {
		t.Fatal(err)
	}
}

func dump(t *testing.T, rep *mvcc.CheckReport) {
	t.Helper()
	for _, n := range rep.Notes {
		t.Logf("note: %s", n)
	}
	for _, p := range rep.Problems {
		t.Logf("problem: %s", p)
	}
}

// TestCheckSound: a store written by a real server checks clean, and the
// report's counts agree with what the client saw.
func TestCheckSound(t *testing.T) {
	dir, w := buildStore(t)
	db := openDB(t, dir)
	rep := check(t, db)
	dump(t, rep)
	if !rep.OK() {
		t.Fatalf("a sound store has %d problems", rep.ProblemCount)
	}
	if rep.Revision != w.Revision || rep.Compacted != w.Compacted || rep.CompactDone != w.Compacted {
		t.Errorf("revision/compacted/done %d/%d/%d, want %d/%d/%d", rep.Revision, rep.Compacted, rep.CompactDone, w.Revision, w.Compacted, w.Compacted)
	}
	// Every revision from the compacted one (its record survives) on.
	if want := w.Revision - w.Compacted + 1; rep.Records != want {
		t.Errorf("%d revision records, want %d", rep.Records, want)
	}
	if rep.Chunks <= rep.Records {
		t.Errorf("%d chunks for %d records: the big revision %d should have several", rep.Chunks, rep.Records, w.BigRevision)
	}
	if rep.LiveKeys != int64(w.LiveKeys) || rep.Leases != int64(w.Leases) {
		t.Errorf("live keys %d, leases %d; the client saw %d, %d", rep.LiveKeys, rep.Leases, w.LiveKeys, w.Leases)
	}
	if rep.LeasedKeys == 0 || rep.Keys < rep.LiveKeys || rep.History < rep.Keys || rep.Changes == 0 {
		t.Errorf("implausible counts: %+v", rep)
	}
	if len(rep.Unfinished) != 0 {
		t.Errorf("unfinished revisions %v in a cleanly stopped store", rep.Unfinished)
	}
}

// TestCheckFindsDamage damages copies of a sound store at the mvcc level
// and expects each damage to be reported as its kind of problem.
func TestCheckFindsDamage(t *testing.T) {
	dir, w := buildStore(t)

	// latest picks, from a sound copy, the newest state of a key that is
	// alive, past the compaction and not its key's first version.
	type target struct {
		key   []byte
		rev   int64
		kv    *axonpb.KeyValue
		lease int64
	}
	var updated, leased target
	{
		db := openDB(t, testenv.CopyDir(t, dir))
		for _, e := range history(t, db) {
			if e.rev > w.Compacted && !e.kv.Deleted && e.kv.Version > 1 {
				updated = target{e.key, e.rev, e.kv, 0}
			}
			if e.rev > w.Compacted && !e.kv.Deleted && e.kv.Lease != 0 {
				leased = target{e.key, e.rev, e.kv, e.kv.Lease}
			}
		}
		if updated.key == nil || leased.key == nil {
			t.Fatal("the workload left no updated or leased key past the compaction")
		}
	}
	ghost := []byte("/reg/ghost")
	ghostKV := &axonpb.KeyValue{Value: []byte("boo"), CreateRevision: w.Revision + 1, ModRevision: w.Revision + 1, Version: 1}

	cases := []struct {
		name   string
		damage func(t *testing.T, b *backend.Batch)
		want   []mvcc.ProblemKind // none: the store must check clean
		after  func(t *testing.T, be backend.Backend, rep *mvcc.CheckReport)
	}{
		{
			name:   "history entry deleted",
			damage: func(t *testing.T, b *backend.Batch) { b.Delete(mvcc.HistoryKey(updated.key, updated.rev)) },
			want:   []mvcc.ProblemKind{mvcc.ProblemMissingHistory},
		},
		{
			name:   "single-chunk record deleted",
			damage: func(t *testing.T, b *backend.Batch) { b.Delete(mvcc.RevisionKey(updated.rev)) },
			want:   []mvcc.ProblemKind{mvcc.ProblemMissingRecord, mvcc.ProblemUnlisted},
		},
		{
			name:   "first chunk of a big record deleted",
			damage: func(t *testing.T, b *backend.Batch) { b.Delete(mvcc.RevisionChunkKey(w.BigRevision, 0)) },
			want:   []mvcc.ProblemKind{mvcc.ProblemChunks, mvcc.ProblemUnlisted},
		},
		{
			name: "mod_revision changed",
			damage: func(t *testing.T, b *backend.Batch) {
				kv := proto.Clone(updated.kv).(*axonpb.KeyValue)
				kv.ModRevision++
				b.Put(mvcc.HistoryKey(updated.key, updated.rev), mvcc.EncodeKV(kv))
			},
			want: []mvcc.ProblemKind{mvcc.ProblemMismatch},
		},
		{
			name: "version skips",
			damage: func(t *testing.T, b *backend.Batch) {
				kv := proto.Clone(updated.kv).(*axonpb.KeyValue)
				kv.Version += 2
				b.Put(mvcc.HistoryKey(updated.key, updated.rev), mvcc.EncodeKV(kv))
			},
			want: []mvcc.ProblemKind{mvcc.ProblemVersion, mvcc.ProblemMismatch},
		},
		{
			name: "entry above m/revision",
			damage: func(t *testing.T, b *backend.Batch) {
				b.Put(mvcc.HistoryKey(ghost, w.Revision+1), mvcc.EncodeKV(ghostKV))
			},
			want: []mvcc.ProblemKind{mvcc.ProblemFuture},
		},
		{
			name:   "m/revision removed",
			damage: func(t *testing.T, b *backend.Batch) { b.Delete(mvcc.MetaRevision) },
			want:   []mvcc.ProblemKind{mvcc.ProblemMeta},
		},
		{
			name:   "lease of a live key removed",
			damage: func(t *testing.T, b *backend.Batch) { b.Delete(mvcc.LeaseKey(leased.lease)) },
			want:   []mvcc.ProblemKind{mvcc.ProblemLease},
		},
		{
			name: "record below compact-done",
			damage: func(t *testing.T, b *backend.Batch) {
				rec := &axonpb.RevisionRecord{Revision: w.Compacted - 3, Changes: []*axonpb.Change{{Delete: true, Key: ghost, Kv: &axonpb.KeyValue{ModRevision: w.Compacted - 3}}}}
				b.Put(mvcc.RevisionKey(w.Compacted-3), mvcc.EncodeRecord(rec))
			},
			want: []mvcc.ProblemKind{mvcc.ProblemStaleRecord},
		},
		{
			name: "tombstone below compact-done",
			damage: func(t *testing.T, b *backend.Batch) {
				b.Put(mvcc.HistoryKey(ghost, w.Compacted-3), mvcc.EncodeKV(&axonpb.KeyValue{ModRevision: w.Compacted - 3, Deleted: true}))
			},
			want: []mvcc.ProblemKind{mvcc.ProblemUncompacted},
		},
		{
			// A crash in the middle of a large revision: not corruption,
			// open rolls it back.
			name: "unfinished revision",
			damage: func(t *testing.T, b *backend.Batch) {
				b.Put(mvcc.HistoryKey(ghost, w.Revision+1), mvcc.EncodeKV(ghostKV))
				rec := &axonpb.RevisionRecord{Revision: w.Revision + 1, Changes: []*axonpb.Change{{Key: ghost, Kv: ghostKV}}}
				b.Put(mvcc.RevisionKey(w.Revision+1), mvcc.EncodeRecord(rec))
			},
			after: func(t *testing.T, be backend.Backend, rep *mvcc.CheckReport) {
				if !slices.Equal(rep.Unfinished, []int64{w.Revision + 1}) {
					t.Errorf("unfinished %v, want [%d]", rep.Unfinished, w.Revision+1)
				}
				if n, err := mvcc.Recover(be, nil); err != nil || n != 1 {
					t.Fatalf("recover rolled back %d chunks: %v", n, err)
				}
				if rep := check(t, be); !rep.OK() || len(rep.Unfinished) != 0 {
					dump(t, rep)
					t.Errorf("after Recover: %d problems, unfinished %v", rep.ProblemCount, rep.Unfinished)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := openDB(t, testenv.CopyDir(t, dir))
			commit(t, db, func(b *backend.Batch) { tc.damage(t, b) })
			rep := check(t, db)
			dump(t, rep)
			if len(tc.want) == 0 && !rep.OK() {
				t.Errorf("%d problems, want none", rep.ProblemCount)
			}
			for _, k := range tc.want {
				if !rep.Has(k) {
					t.Errorf("no %q problem reported", k)
				}
			}
			if tc.after != nil {
				tc.after(t, db, rep)
			}
		})
	}
}

// TestCheckEmptyStore: a store that never committed anything is sound.
func TestCheckEmptyStore(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "badger"))
	if rep := check(t, db); !rep.OK() {
		dump(t, rep)
		t.Fatal("an empty store has problems")
	}
	commit(t, db, func(b *backend.Batch) { b.Put([]byte("x/unknown"), []byte("?")) })
	if rep := check(t, db); rep.OK() || !rep.Has(mvcc.ProblemUnknownKey) {
		dump(t, rep)
		t.Fatal("a key outside the layout was not reported")
	}
}
