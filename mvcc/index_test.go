package mvcc_test

import (
	"errors"
	"fmt"
	"math/rand"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/proto/axonpb"
)

// model is the obviously right MVCC store the index is checked against:
// every state of every key, never forgotten.
type model struct {
	states map[string][]modelState // ascending revision
}

type modelState struct {
	rev, create, ver int64
	deleted          bool
	value            string
}

func (m *model) at(key string, rev int64) (modelState, bool) {
	var best *modelState
	for i := range m.states[key] {
		if s := &m.states[key][i]; s.rev <= rev {
			best = s
		}
	}
	if best == nil || best.deleted {
		return modelState{}, false
	}
	return *best, true
}

func (m *model) latest(key string) (modelState, bool) {
	st := m.states[key]
	if len(st) == 0 || st[len(st)-1].deleted {
		return modelState{}, false
	}
	return st[len(st)-1], true
}

// store writes one revision through mvcc as the writer does and applies it
// to the index and the model.
type harness struct {
	t    *testing.T
	be   backend.Backend
	idx  *mvcc.Index
	m    *model
	rev  int64
	comp int64
	keys []string
}

func newHarness(t *testing.T) *harness {
	be, err := badger.Open(badger.Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	if _, err := mvcc.Recover(be, nil); err != nil {
		t.Fatal(err)
	}
	idx, err := mvcc.LoadIndex(be)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, be: be, idx: idx, m: &model{states: map[string][]modelState{}}, rev: 1}
	for i := range 40 { // more than LoadMany reads one by one
		h.keys = append(h.keys, fmt.Sprintf("k%02d", i))
	}
	return h
}

// manyKeys returns n keys, all starting with "k" (the range check reads),
// of the shapes that exercise the index's leaves: Kubernetes-like keys
// sharing long prefixes, short keys, keys that are prefixes of others,
// and keys long enough that a leaf splits on bytes before it has
// leafMax keys.
func manyKeys(n int, r *rand.Rand) []string {
	seen := map[string]bool{}
	var keys []string
	for len(keys) < n {
		var k string
		switch r.Intn(5) {
		case 0:
			k = fmt.Sprintf("k/registry/pods/ns-%d/web-%x", r.Intn(4), r.Intn(1<<20))
		case 1:
			k = fmt.Sprintf("k%d", r.Intn(5000))
		case 2:
			k = fmt.Sprintf("k/registry/pods/ns-%d", r.Intn(4)) // a prefix of case 0's
		case 3:
			k = fmt.Sprintf("k/long/%d/%s", r.Intn(100), strings.Repeat("x", 200+r.Intn(400)))
		default:
			k = fmt.Sprintf("k/registry/configmaps/%s", strings.Repeat("a", r.Intn(8)))
		}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

type op struct {
	key string
	del bool
}

// flipOps deletes a random key and creates it again, or creates and
// deletes it, in one revision.
func (h *harness) flipOps(r *rand.Rand) []op {
	k := h.keys[r.Intn(len(h.keys))]
	first := r.Intn(2) == 0
	return []op{{key: k, del: first}, {key: k, del: !first}}
}

// revision commits ops as one revision (a key may appear twice: deleted
// and created again, or created and deleted, in one transaction).
func (h *harness) revision(ops []op, flushOps int) {
	rev := h.rev + 1
	tx := mvcc.NewWriteTxn(h.be, mvcc.WriteOptions{FlushOps: flushOps})
	rec := &axonpb.RevisionRecord{Revision: rev}
	for _, o := range ops {
		cur, live := h.m.latest(o.key)
		if n := len(h.m.states[o.key]); n > 0 && h.m.states[o.key][n-1].rev == rev {
			cur, live = h.m.states[o.key][n-1], !h.m.states[o.key][n-1].deleted
		}
		if o.del {
			if !live {
				continue
			}
			if err := tx.Delete([]byte(o.key), rev); err != nil {
				h.t.Fatal(err)
			}
			rec.Changes = append(rec.Changes, &axonpb.Change{Delete: true, Key: []byte(o.key), Kv: &axonpb.KeyValue{ModRevision: rev}})
			h.m.states[o.key] = append(h.m.states[o.key], modelState{rev: rev, deleted: true})
			continue
		}
		kv := &axonpb.KeyValue{Value: []byte(fmt.Sprintf("v%d", rev)), ModRevision: rev, CreateRevision: rev, Version: 1}
		if live {
			kv.CreateRevision, kv.Version = cur.create, cur.ver+1
		}
		if err := tx.Put([]byte(o.key), kv); err != nil {
			h.t.Fatal(err)
		}
		rec.Changes = append(rec.Changes, &axonpb.Change{Key: []byte(o.key), Kv: kv})
		h.m.states[o.key] = append(h.m.states[o.key], modelState{rev: rev, create: kv.CreateRevision, ver: kv.Version, value: string(kv.Value)})
	}
	if len(rec.Changes) == 0 {
		return
	}
	tx.EndRevision()
	if err := tx.Commit(rev, true); err != nil {
		h.t.Fatal(err)
	}
	h.idx.Apply(rev, rec)
	h.rev = rev
}

func (h *harness) compact(rev int64) {
	h.idx.SetCompacted(rev)
	if err := mvcc.CompactHistory(h.be, h.idx, rev, 3, nil); err != nil {
		h.t.Fatal(err)
	}
	h.comp = rev
}

// checkRebuilt rebuilds an index from the store and checks it against the
// model and the live index.
func (h *harness) checkRebuilt() {
	h.t.Helper()
	rebuilt, err := mvcc.LoadIndex(h.be)
	if err != nil {
		h.t.Fatal(err)
	}
	rebuilt.SetCompacted(h.comp)
	h.check(rebuilt, "rebuilt index")
	if rebuilt.Live() != h.idx.Live() || rebuilt.Len() != h.idx.Len() {
		h.t.Fatalf("rebuilt: %d live of %d keys; live index: %d of %d", rebuilt.Live(), rebuilt.Len(), h.idx.Live(), h.idx.Len())
	}
}

// check compares idx with the model at every readable revision, and reads
// every state the index names from the store.
func (h *harness) check(idx *mvcc.Index, what string) {
	h.t.Helper()
	snap, err := h.be.Snapshot()
	if err != nil {
		h.t.Fatal(err)
	}
	defer snap.Close()
	src := mvcc.IndexSource{Idx: idx, Snap: snap}
	for rev := max(h.comp, 1); rev <= h.rev; rev++ {
		var want []string
		for _, k := range h.keys {
			if s, ok := h.m.at(k, rev); ok {
				want = append(want, fmt.Sprintf("%s c=%d m=%d v=%d %s", k, s.create, s.rev, s.ver, s.value))
			}
		}
		es, n, err := src.Entries([]byte("k"), []byte("l"), rev, -1)
		if err != nil {
			h.t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			kv, err := src.Load(e)
			if err != nil {
				h.t.Fatalf("%s: rev %d: load %s@%d: %v", what, rev, e.Key, e.Mod, err)
			}
			got = append(got, fmt.Sprintf("%s c=%d m=%d v=%d %s", e.Key, e.Create, e.Mod, e.Version, kv.Value))
		}
		// Size counts what Range returns, without building it.
		for _, lim := range []int{-1, 0, 3} {
			for _, r := range [][2]string{{"k", "l"}, {"k03", ""}, {"k02", "k07"}} {
				es, _ := idx.Range([]byte(r[0]), []byte(r[1]), rev, lim)
				var kb int64
				for _, e := range es {
					kb += int64(len(e.Key))
				}
				if n, b := idx.Size([]byte(r[0]), []byte(r[1]), rev, lim); n != len(es) || b != kb {
					h.t.Fatalf("%s: Size(%q, %q, %d, %d) = %d keys, %d bytes; Range has %d, %d", what, r[0], r[1], rev, lim, n, b, len(es), kb)
				}
			}
		}
		// An empty range (end before start) holds nothing, as in etcd.
		if es, n, _ := src.Entries([]byte("k05"), []byte("k02"), rev, -1); n != 0 || len(es) != 0 {
			h.t.Fatalf("%s: range [k05, k02) at %d: %d entries, count %d", what, rev, len(es), n)
		}
		// LoadMany (one scan for many entries) reads the same states.
		var many []string
		if err := src.LoadMany(es, func(i int, kv *axonpb.KeyValue) error {
			e := es[i]
			many = append(many, fmt.Sprintf("%s c=%d m=%d v=%d %s", e.Key, e.Create, e.Mod, e.Version, kv.Value))
			return nil
		}); err != nil {
			h.t.Fatalf("%s: rev %d: LoadMany: %v", what, rev, err)
		}
		if strings.Join(many, "\n") != strings.Join(got, "\n") {
			h.t.Fatalf("%s: at revision %d LoadMany read\n%s\nLoad read\n%s", what, rev, strings.Join(many, "\n"), strings.Join(got, "\n"))
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") || n != int64(len(want)) {
			h.t.Fatalf("%s: at revision %d (compacted %d) count %d\ngot:\n%s\nwant:\n%s", what, rev, h.comp, n, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// historyModes runs a test with keys' histories kept in their leaves up to
// the default length, and with every history out of line.
func historyModes(t *testing.T, run func(t *testing.T)) {
	t.Run("histories=default", run)
	t.Run("histories=out-of-line", func(t *testing.T) {
		defer mvcc.SetRestInline(0, 0)()
		run(t)
	})
}

// The index answers like the model at every revision above the compacted
// one, through deletions and re-creations within one revision, partial
// batches, compactions, and a rebuild from the store.
func TestIndexMatchesModel(t *testing.T) { historyModes(t, testIndexMatchesModel) }

func testIndexMatchesModel(t *testing.T) {
	for seed := int64(1); seed <= 5; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			h := newHarness(t)
			r := rand.New(rand.NewSource(seed))
			for step := 0; step < 400; step++ {
				var ops []op
				switch x := r.Intn(10); {
				case x < 6:
					ops = []op{{key: h.keys[r.Intn(len(h.keys))], del: r.Intn(4) == 0}}
				case x < 8:
					ops = h.flipOps(r)
				default: // many keys in one revision
					for _, k := range h.keys {
						if r.Intn(2) == 0 {
							ops = append(ops, op{key: k, del: r.Intn(3) == 0})
						}
					}
				}
				h.revision(ops, 1+r.Intn(4))
				if r.Intn(25) == 0 && h.rev > h.comp {
					h.compact(h.comp + 1 + r.Int63n(h.rev-h.comp))
				}
				if step%40 == 0 {
					h.check(h.idx, "live index")
				}
			}
			h.check(h.idx, "live index")
			h.checkRebuilt()
			// Compacting everything leaves one state per live key.
			h.compact(h.rev)
			h.check(h.idx, "after full compaction")
			n := 0
			snap, _ := h.be.Snapshot()
			defer snap.Close()
			snap.Scan([]byte("h"), []byte("i"), backend.ScanOptions{KeysOnly: true}, func(_, _ []byte) error { n++; return nil })
			if int64(n) != h.idx.Live() {
				t.Fatalf("%d history entries after full compaction, want %d (one per live key)", n, h.idx.Live())
			}
		})
	}
}

// With hundreds of keys the index's leaves split (on key count and on
// bytes), shrink and merge as keys are created, deleted and compacted
// away; through all of it the index answers like the model.
func TestIndexLeavesMatchModel(t *testing.T) { historyModes(t, testIndexLeavesMatchModel) }

func testIndexLeavesMatchModel(t *testing.T) {
	for seed := int64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			h := newHarness(t)
			r := rand.New(rand.NewSource(seed))
			h.keys = manyKeys(700, r)
			for step := 0; step < 160; step++ {
				var ops []op
				switch x := r.Intn(10); {
				case x < 3:
					ops = []op{{key: h.keys[r.Intn(len(h.keys))], del: r.Intn(3) == 0}}
				case x < 5:
					ops = h.flipOps(r)
				default: // a run of neighbouring keys in one revision, mostly
					// created early on and mostly deleted later, so leaves fill
					// up and then empty out
					i, n := r.Intn(len(h.keys)), 1+r.Intn(150)
					del := r.Intn(160) < step
					for _, k := range h.keys[i:min(i+n, len(h.keys))] {
						ops = append(ops, op{key: k, del: del != (r.Intn(8) == 0)})
					}
				}
				h.revision(ops, 1+r.Intn(40))
				if r.Intn(12) == 0 && h.rev > h.comp {
					h.compact(h.comp + 1 + r.Int63n(h.rev-h.comp))
				}
				if step%40 == 39 {
					h.check(h.idx, "live index")
				}
			}
			h.checkRebuilt()
			h.compact(h.rev)
			h.check(h.idx, "after full compaction")
			if int64(h.idx.Len()) != h.idx.Live() {
				t.Fatalf("after full compaction the index holds %d keys, %d of them alive", h.idx.Len(), h.idx.Live())
			}
			// Deleting everything and compacting leaves an empty index that
			// takes keys again.
			var all []op
			for _, k := range h.keys {
				all = append(all, op{key: k, del: true})
			}
			h.revision(all, 50)
			h.compact(h.rev)
			if h.idx.Len() != 0 || h.idx.Live() != 0 {
				t.Fatalf("after deleting and compacting everything: %d keys, %d alive", h.idx.Len(), h.idx.Live())
			}
			h.revision([]op{{key: h.keys[len(h.keys)/2]}, {key: h.keys[0]}}, 1)
			h.check(h.idx, "emptied and written again")
		})
	}
}

// A revision written in several batches and never committed is invisible
// and rolled back at open.
func TestUnfinishedRevisionRolledBack(t *testing.T) {
	h := newHarness(t)
	h.revision([]op{{key: "k00"}, {key: "k01"}}, 100)
	tx := mvcc.NewWriteTxn(h.be, mvcc.WriteOptions{FlushOps: 2})
	for i := range 9 {
		kv := &axonpb.KeyValue{Value: []byte("x"), ModRevision: 3, CreateRevision: 3, Version: 1}
		if err := tx.Put([]byte(fmt.Sprintf("p%02d", i)), kv); err != nil {
			t.Fatal(err)
		}
	}
	if !tx.Flushed() {
		t.Fatal("nothing flushed ahead of the commit")
	}
	// Crash: no Commit. A rebuilt index does not see revision 3.
	idx, err := mvcc.LoadIndex(h.be)
	if err != nil {
		t.Fatal(err)
	}
	if rev, _ := idx.Rev(); rev != 2 || idx.Len() != 2 {
		t.Fatalf("index after crash: rev %d, %d keys; want 2, 2", rev, idx.Len())
	}
	if _, err := mvcc.Recover(h.be, nil); err != nil {
		t.Fatal(err)
	}
	snap, _ := h.be.Snapshot()
	defer snap.Close()
	var left []string
	snap.Scan(nil, nil, backend.ScanOptions{KeysOnly: true}, func(k, _ []byte) error {
		if k[0] == 'h' || k[0] == 'r' {
			left = append(left, fmt.Sprintf("%q", k))
		}
		return nil
	})
	sort.Strings(left)
	if len(left) != 3 { // k00, k01 and the record of revision 2
		t.Fatalf("after rollback the store holds %d entries: %v", len(left), left)
	}
}

// A store of another format is refused with both versions named.
func TestFormatRefused(t *testing.T) {
	for name, setup := range map[string]func(b *backend.Batch){
		"format 1": func(b *backend.Batch) {
			b.Put(mvcc.MetaRevision, mvcc.EncodeRev(7))
			b.Put([]byte("k/registry/pods/a"), []byte{})
		},
		"format 1 latest keys only": func(b *backend.Batch) { b.Put([]byte("kfoo"), []byte{}) },
		"format 3":                  func(b *backend.Batch) { b.Put(mvcc.MetaFormat, []byte("3")) },
	} {
		t.Run(name, func(t *testing.T) {
			be, err := badger.Open(badger.Options{InMemory: true})
			if err != nil {
				t.Fatal(err)
			}
			defer be.Close()
			var b backend.Batch
			setup(&b)
			if err := be.Commit(&b); err != nil {
				t.Fatal(err)
			}
			_, err = mvcc.LoadIndex(be)
			if !errors.Is(err, mvcc.ErrFormat) || !strings.Contains(err.Error(), "format 2") {
				t.Fatalf("LoadIndex = %v, want a format error naming format 2", err)
			}
			if name != "format 3" && !strings.Contains(err.Error(), "format 1") {
				t.Fatalf("error %q does not name format 1", err)
			}
			if _, err := mvcc.Recover(be, nil); !errors.Is(err, mvcc.ErrFormat) {
				t.Fatalf("Recover = %v, want a format error", err)
			}
		})
	}
}

// BenchmarkIndexMemory reports the index's bytes per key for 1,000,000
// 70-byte keys created once (the memory target's shape), for three key
// shapes: axon bench's (objects spread over 100 namespaces, zero-padded
// names), names padded with spaces, and names of random hex digits (the
// least a leaf's shared prefixes save).
func BenchmarkIndexMemory(b *testing.B) {
	const n = 1_000_000
	r := rand.New(rand.NewSource(1))
	shapes := []struct {
		name string
		key  func(i int) string
	}{
		{"bench", func(i int) string {
			return fmt.Sprintf("/registry/configmaps/ns-%04d/obj-%042d", i%100, i)
		}},
		{"padded", func(i int) string {
			return fmt.Sprintf("/registry/configmaps/benchmark-namespace/object-%-30d", i)[:70]
		}},
		{"random", func(int) string {
			return fmt.Sprintf("/registry/pods/ns-%02d/%016x%016x%016x%016x", r.Intn(50), r.Uint64(), r.Uint64(), r.Uint64(), r.Uint64())[:70]
		}},
	}
	for _, shape := range shapes {
		b.Run(shape.name, func(b *testing.B) {
			for range b.N {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				idx := mvcc.NewIndex(1, 0)
				recs := make([]*axonpb.RevisionRecord, 0, 1000)
				for i := range n {
					key := shape.key(i)
					rev := int64(i + 2)
					recs = append(recs, &axonpb.RevisionRecord{Revision: rev, Changes: []*axonpb.Change{{Key: []byte(key), Kv: &axonpb.KeyValue{ModRevision: rev}}}})
					if len(recs) == cap(recs) {
						idx.Apply(rev, recs...)
						recs = recs[:0]
					}
				}
				recs = nil
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/key")
				b.ReportMetric(float64(idx.MemoryBytes())/n, "estimated-bytes/key")
				runtime.KeepAlive(idx)
			}
		})
	}
}

// BenchmarkIndexHotKey updates one key b.N times without a compaction: the
// time per update must not grow with the key's history (its revisions
// are appended out of line, not re-encoded in its leaf), nor a lookup's.
func BenchmarkIndexHotKey(b *testing.B) {
	idx := mvcc.NewIndex(1, 0)
	for i := range 1000 { // neighbours in the hot key's leaf
		idx.Apply(int64(i+2), &axonpb.RevisionRecord{Revision: int64(i + 2), Changes: []*axonpb.Change{{Key: []byte(fmt.Sprintf("/registry/leases/kube-system/holder-%04d", i)), Kv: &axonpb.KeyValue{}}}})
	}
	hot := []byte("/registry/leases/kube-system/holder-0500")
	rev := int64(2000)
	rec := &axonpb.RevisionRecord{Changes: []*axonpb.Change{{Key: hot, Kv: &axonpb.KeyValue{}}}}
	b.ResetTimer()
	for range b.N {
		rev++
		rec.Revision = rev
		idx.Apply(rev, rec)
		if _, ok := idx.Get(hot, rev); !ok {
			b.Fatal("the hot key is missing")
		}
	}
}

// TestRangeWhileWriting reads big ranges (many lock batches each) at a
// fixed revision while the writer keeps creating keys inside and around
// the range and deleting keys of it:
// every Range and every Page walk must still answer exactly the keys alive
// at that revision, with the count of them.
func TestRangeWhileWriting(t *testing.T) {
	idx := mvcc.NewIndex(0, 0)
	key := func(i int) string { return fmt.Sprintf("/r/%06d", i) }
	put := func(rev int64, k string) {
		idx.Apply(rev, &axonpb.RevisionRecord{Revision: rev, Changes: []*axonpb.Change{{Key: []byte(k), Kv: &axonpb.KeyValue{ModRevision: rev, CreateRevision: rev, Version: 1}}}})
	}
	const n = 5000 // about ten batches
	rev := int64(0)
	for i := 0; i < n; i += 2 { // even keys exist at the read revision
		rev++
		put(rev, key(i))
	}
	readRev := rev
	want := make([]string, 0, n/2)
	for i := 0; i < n; i += 2 {
		want = append(want, key(i))
	}

	done := make(chan struct{})
	go func() { // the writer
		defer close(done)
		r := readRev
		for i := 1; i < n; i += 2 { // odd keys, created after readRev, and keys past the range
			r++
			put(r, key(i))
			r++
			put(r, "/s/"+key(i))
			if i%7 == 1 { // delete an even key after readRev
				r++
				k := key(i - 1)
				idx.Apply(r, &axonpb.RevisionRecord{Revision: r, Changes: []*axonpb.Change{{Delete: true, Key: []byte(k), Kv: &axonpb.KeyValue{ModRevision: r}}}})
			}
		}
	}()
	for round := 0; ; round++ {
		es, count := idx.Range([]byte("/r/"), []byte("/r0"), readRev, -1)
		if got := keysOf(es); count != int64(len(want)) || strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("round %d: Range at %d: count %d, %d keys, want %d", round, readRev, count, len(got), len(want))
		}
		var paged []string
		start := []byte("/r/")
		for start != nil {
			var page []mvcc.Entry
			page, start = idx.Page(start, []byte("/r0"), readRev, 333)
			paged = append(paged, keysOf(page)...)
		}
		if strings.Join(paged, ",") != strings.Join(want, ",") {
			t.Fatalf("round %d: pages at %d: %d keys, want %d", round, readRev, len(paged), len(want))
		}
		select {
		case <-done:
			if round == 0 {
				t.Log("the writer finished before the first read: the reads did not overlap writes")
			}
			return
		default:
		}
	}
}

func keysOf(es []mvcc.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Key
	}
	return out
}

// BenchmarkIndexGet looks up random keys of 1,000,000 (axon bench's
// shape), as a Txn compare does; BenchmarkIndexCreate adds keys at random
// places, as creates do.
func BenchmarkIndexGet(b *testing.B) {
	const n = 1_000_000
	idx := mvcc.NewIndex(1, 0)
	key := func(i int) []byte { return fmt.Appendf(nil, "/registry/configmaps/ns-%04d/obj-%042d", i%100, i) }
	for i := range n {
		rev := int64(i + 2)
		idx.Apply(rev, &axonpb.RevisionRecord{Revision: rev, Changes: []*axonpb.Change{{Key: key(i), Kv: &axonpb.KeyValue{}}}})
	}
	keys := make([][]byte, 4096)
	r := rand.New(rand.NewSource(1))
	for i := range keys {
		keys[i] = key(r.Intn(n))
	}
	b.ResetTimer()
	for i := range b.N {
		if _, ok := idx.Get(keys[i%len(keys)], n+2); !ok {
			b.Fatal("missing")
		}
	}
}

func BenchmarkIndexCreate(b *testing.B) {
	idx := mvcc.NewIndex(1, 0)
	r := rand.New(rand.NewSource(1))
	rec := &axonpb.RevisionRecord{Changes: []*axonpb.Change{{Kv: &axonpb.KeyValue{}}}}
	keys := make([][]byte, b.N)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "/registry/configmaps/ns-%04d/obj-%042d", r.Intn(100), r.Int63())
	}
	b.ResetTimer()
	for i := range b.N {
		rec.Revision = int64(i + 2)
		rec.Changes[0].Key = keys[i]
		idx.Apply(rec.Revision, rec)
	}
}
