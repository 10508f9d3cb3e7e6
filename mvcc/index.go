package mvcc

import (
	"runtime"
	"slices"
	"sync"

	"github.com/google/btree"

	"github.com/axon-kv/axon/proto/axonpb"
)

// Index is the in-memory index of every key's revisions since the
// compacted revision, as etcd's treeIndex: counts, keys_only answers,
// limit/more and Txn compares come from it, and values are read by point
// lookups of the one stored copy at the revision it names. The writer
// applies committed revisions to it (a follower the revisions it tails);
// readers see only what was committed.
//
// A key with one revision (any key once compacted, most keys of a store)
// is one 64-byte entry plus its bytes (see BenchmarkIndexMemory); its other
// revisions and older generations hang off a pointer that is nil then.
type Index struct {
	mu        sync.RWMutex
	tree      *btree.BTreeG[*keyIndex]
	rev       int64 // newest revision applied
	compacted int64 // reads below it fail
	live      int64 // keys alive at rev
	keyBytes  int64 // bytes of the keys held
}

type keyIndex struct {
	key string
	// The newest generation: its newest revision, creation, the version
	// of its first revision, and whether a deletion at last ended it
	// (last is 0 when nothing is left of it).
	last    int64
	created int64
	ver     int64
	tomb    bool
	// lease of the newest state; the lease table is rebuilt from it.
	lease int64
	rest  *keyRest
}

// keyRest is what a key with more than one revision since the compacted
// revision needs besides its entry.
type keyRest struct {
	revs []int64      // the newest generation's revisions before last, ascending
	old  []generation // older generations, oldest first
}

// generation is one life of a key, from its creation to its deletion.
type generation struct {
	created int64   // create revision
	ver     int64   // version at revs[0]
	revs    []int64 // ascending; with tomb, the last one deleted the key
	tomb    bool
}

func (k *keyIndex) older() []generation {
	if k.rest == nil {
		return nil
	}
	return k.rest.old
}

func (k *keyIndex) earlier() []int64 {
	if k.rest == nil {
		return nil
	}
	return k.rest.revs
}

// cur returns the newest generation as a whole (a copy).
func (k *keyIndex) cur() generation {
	if k.last == 0 {
		return generation{}
	}
	revs := append(append(make([]int64, 0, len(k.earlier())+1), k.earlier()...), k.last)
	return generation{created: k.created, ver: k.ver, revs: revs, tomb: k.tomb}
}

// setCur replaces the newest generation.
func (k *keyIndex) setCur(g generation) {
	if len(g.revs) == 0 {
		k.last, k.created, k.ver, k.tomb = 0, 0, 0, false
		k.setRest(nil, k.older())
		return
	}
	n := len(g.revs)
	k.last, k.created, k.ver, k.tomb = g.revs[n-1], g.created, g.ver, g.tomb
	var earlier []int64
	if n > 1 {
		earlier = append([]int64(nil), g.revs[:n-1]...)
	}
	k.setRest(earlier, k.older())
}

func (k *keyIndex) setRest(revs []int64, old []generation) {
	if len(revs) == 0 && len(old) == 0 {
		k.rest = nil
		return
	}
	k.rest = &keyRest{revs: revs, old: old}
}

// push adds rev to the newest generation (tomb: a deletion ending it).
func (k *keyIndex) push(rev int64, tomb bool) {
	if k.rest == nil {
		k.rest = &keyRest{}
	}
	k.rest.revs = append(k.rest.revs, k.last)
	k.last, k.tomb = rev, tomb
}

// begin starts a new generation at rev, keeping the newest one as old.
func (k *keyIndex) begin(rev, created, ver int64) {
	if k.last != 0 {
		old := append(k.older(), k.cur())
		k.setRest(nil, old)
	}
	k.last, k.created, k.ver, k.tomb = rev, created, ver, false
}

// Entry is a key's state at a revision as the index knows it: everything
// but the value and the lease.
type Entry struct {
	Key                  string
	Mod, Create, Version int64
	loaded               *axonpb.KeyValue // set when the state is known in full
}

func lessKey(a, b *keyIndex) bool { return a.key < b.key }

// NewIndex returns an empty index at revision rev.
func NewIndex(rev, compacted int64) *Index {
	return &Index{tree: btree.NewG(32, lessKey), rev: rev, compacted: compacted}
}

// Rev returns the newest applied and the compacted revision.
func (x *Index) Rev() (rev, compacted int64) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.rev, x.compacted
}

// Live is the number of keys alive at the newest revision.
func (x *Index) Live() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.live
}

// at returns the state of k at rev.
func (k *keyIndex) at(rev int64) (Entry, bool) {
	if k.last != 0 && rev >= k.last {
		if k.tomb {
			return Entry{}, false
		}
		return Entry{Key: k.key, Mod: k.last, Create: k.created, Version: k.ver + int64(len(k.earlier()))}, true
	}
	cur := k.cur()
	g := &cur
	if len(g.revs) == 0 || g.revs[0] > rev {
		g = nil
		old := k.older()
		for i := len(old) - 1; i >= 0; i-- {
			if o := &old[i]; len(o.revs) > 0 && o.revs[0] <= rev {
				g = o
				break
			}
		}
		if g == nil {
			return Entry{}, false
		}
	}
	// newest revision <= rev
	i := len(g.revs) - 1
	for i >= 0 && g.revs[i] > rev {
		i--
	}
	if i < 0 || (g.tomb && i == len(g.revs)-1) {
		return Entry{}, false
	}
	return Entry{Key: k.key, Mod: g.revs[i], Create: g.created, Version: g.ver + int64(i)}, true
}

// Get returns key's state at rev.
func (x *Index) Get(key []byte, rev int64) (Entry, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	k, ok := x.tree.Get(&keyIndex{key: string(key)})
	if !ok {
		return Entry{}, false
	}
	return k.at(rev)
}

// Range visits the keys of [start, end) (etcd's conventions, see InRange)
// alive at rev in key order. It returns the first max entries (all when
// max < 0) and how many keys the range holds at rev.
func (x *Index) Range(start, end []byte, rev int64, max int) ([]Entry, int64) {
	var (
		out   []Entry
		count int64
	)
	if len(end) == 0 {
		x.mu.RLock()
		defer x.mu.RUnlock()
		if k, ok := x.tree.Get(&keyIndex{key: string(start)}); ok {
			if e, ok := k.at(rev); ok {
				count = 1
				if max != 0 {
					out = append(out, e)
				}
			}
		}
		return out, count
	}
	x.walk(start, end, rev, func(e Entry) bool {
		count++
		if max < 0 || len(out) < max {
			out = append(out, e)
		}
		return true
	})
	return out, count
}

// Size returns how many keys of [start, end) are alive at rev, up to max
// (all when max < 0), and the bytes of those keys, without building
// entries: what a read's memory is estimated from before it runs.
func (x *Index) Size(start, end []byte, rev int64, max int) (n int, keyBytes int64) {
	if len(end) == 0 {
		x.mu.RLock()
		defer x.mu.RUnlock()
		if k, ok := x.tree.Get(&keyIndex{key: string(start)}); ok && max != 0 {
			if _, ok := k.at(rev); ok {
				return 1, int64(len(k.key))
			}
		}
		return 0, 0
	}
	if max == 0 {
		return 0, 0
	}
	x.walk(start, end, rev, func(e Entry) bool {
		n++
		keyBytes += int64(len(e.Key))
		return max < 0 || n < max
	})
	return n, keyBytes
}

// Page returns up to max entries (max > 0) of the keys of [start, end)
// alive at rev, in key order, and the key to pass as start for the next
// page (nil when the range is exhausted). It does not count the range: a
// stream reads a big range page by page without holding it all.
func (x *Index) Page(start, end []byte, rev int64, max int) ([]Entry, []byte) {
	if len(end) == 0 {
		es, _ := x.Range(start, end, rev, max)
		return es, nil
	}
	out := make([]Entry, 0, max)
	var next []byte
	x.walk(start, end, rev, func(e Entry) bool {
		if len(out) == max {
			next = []byte(e.Key)
			return false
		}
		out = append(out, e)
		return true
	})
	return out, next
}

// walkBatch is how many keys a walk visits per hold of the read lock. An
// unpaginated LIST of 100,000 keys held it for milliseconds, and the writer
// applying a committed group waits for the lock (and Go's RWMutex makes new
// readers wait behind a waiting writer), so every write acknowledged in
// that time waited for the LIST.
const walkBatch = 512

// walk calls fn, with the read lock held, for each key of [start, end)
// (end non-empty; "\x00" means to the end) alive at rev, in key order,
// until fn returns false. It releases the lock every walkBatch keys and
// goes on from the key after the last one visited: keys added meanwhile
// were created after rev, so they have no state at rev and are skipped,
// and a compaction keeps every key's state at revisions it does not
// reach, which the caller checked rev against.
func (x *Index) walk(start, end []byte, rev int64, fn func(Entry) bool) {
	toEnd := len(end) == 1 && end[0] == 0
	if !toEnd && string(end) <= string(start) {
		return
	}
	from := string(start)
	for {
		x.mu.RLock()
		// The first key past the range is found again in each batch (it
		// may have been compacted away meanwhile); the walk then stops at
		// that item without comparing keys, so it never reads the keys'
		// bytes, only the index entries (a cache miss fewer per key).
		var stop *keyIndex
		if !toEnd {
			x.tree.AscendGreaterOrEqual(&keyIndex{key: string(end)}, func(k *keyIndex) bool {
				stop = k
				return false
			})
		}
		n, done := 0, true
		var last string
		x.tree.AscendGreaterOrEqual(&keyIndex{key: from}, func(k *keyIndex) bool {
			if k == stop {
				return false
			}
			if n == walkBatch {
				done = false
				return false
			}
			n++
			last = k.key
			if e, ok := k.at(rev); ok && !fn(e) {
				return false // done stays true
			}
			return true
		})
		x.mu.RUnlock()
		if done {
			return
		}
		runtime.Gosched() // as loads do, see yieldEvery
		from = last + "\x00"
	}
}

// Apply adds committed revision records, in order, and moves the index to
// rev (which may be past the last record: revisions without key changes).
func (x *Index) Apply(rev int64, recs ...*axonpb.RevisionRecord) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, r := range recs {
		for _, c := range r.Changes {
			x.change(r.Revision, c)
		}
	}
	if rev > x.rev {
		x.rev = rev
	}
}

func (x *Index) change(rev int64, c *axonpb.Change) {
	probe := &keyIndex{key: string(c.Key)}
	k, ok := x.tree.Get(probe)
	if c.Delete {
		if !ok || x.deadAtTip(k) {
			return // nothing to delete (cannot happen for a committed record)
		}
		k.push(rev, true)
		k.lease = 0
		x.live--
		return
	}
	var lease int64
	if c.Kv != nil {
		lease = c.Kv.Lease
	}
	if !ok {
		k = &keyIndex{key: probe.key, last: rev, created: rev, ver: 1, lease: lease}
		x.tree.ReplaceOrInsert(k)
		x.keyBytes += int64(len(k.key))
		x.live++
		return
	}
	k.lease = lease
	if x.deadAtTip(k) {
		k.begin(rev, rev, 1)
		x.live++
		return
	}
	k.push(rev, false)
}

// deadAtTip reports whether k does not exist at the newest revision.
func (x *Index) deadAtTip(k *keyIndex) bool { return k.tomb || k.last == 0 }

// SetCompacted records that reads below rev fail from now on.
func (x *Index) SetCompacted(rev int64) {
	x.mu.Lock()
	if rev > x.compacted {
		x.compacted = rev
	}
	x.mu.Unlock()
}

// Compacted is what a compaction removes of one key: the revisions whose
// stored states go (possibly none: the key's entry still changes, e.g. a
// generation whose states stay with the next one).
type Compacted struct {
	Key  []byte
	Revs []int64
}

// CompactStep plans, for about max keys and revisions from after, what a
// compaction at rev removes (for each key the versions at or below rev but
// the newest, and that one too when it is a deletion) and calls fn for
// every key it changes. It returns the last key visited and whether keys
// remain.
//
// It changes nothing: the caller removes the stored states first and only
// then calls Trim with the same keys. The index must not forget a state
// the store still holds: were the removal to fail (an engine error), the
// state would stay in the store named by no index, no later compaction
// would remove it, and an index rebuilt from the store would take it for
// part of the key's next generation once the deletion and creation around
// it were compacted away (a deleted key back alive, old create revisions,
// wrong versions). Until Trim the index names states already removed, all
// below rev, which reads at or above the compacted revision never load.
func (x *Index) CompactStep(rev int64, after string, first bool, max int, fn func(Compacted)) (string, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var (
		last string
		n    int
		more bool
	)
	visit := func(k *keyIndex) bool {
		if !first && k.key == after {
			return true
		}
		if n >= max {
			more = true
			return false
		}
		n++
		last = k.key
		if !k.compactable(rev) {
			return true
		}
		// The plan is made on a copy: compact replaces the entry's
		// slices and never writes into the ones it shares.
		c := *k
		var revs []int64
		c.compact(rev, func(d Compacted) { revs = d.Revs })
		// The budget counts revisions dropped too, so one step's batch of
		// deletions stays small however many versions a key had.
		n += len(revs)
		fn(Compacted{Key: []byte(k.key), Revs: revs})
		return true
	}
	x.tree.AscendGreaterOrEqual(&keyIndex{key: after}, visit)
	return last, more
}

// Trim applies a compaction at rev to keys, as CompactStep planned it,
// once the states it removes are gone from the store. The writer only adds
// revisions above rev meanwhile, so the key's revisions at or below rev,
// and what the compaction drops of them, are what CompactStep saw; a key
// created again since is kept.
func (x *Index) Trim(rev int64, keys [][]byte) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, key := range keys {
		k, ok := x.tree.Get(&keyIndex{key: string(key)})
		if !ok || !k.compactable(rev) {
			continue
		}
		if gone := k.compact(rev, func(Compacted) {}); gone {
			x.tree.Delete(k)
			x.keyBytes -= int64(len(k.key))
		}
	}
}

// compactable reports whether a compaction at rev changes k: not when it
// has one revision that a read at rev still needs.
func (k *keyIndex) compactable(rev int64) bool {
	return k.rest != nil || (k.last <= rev && k.tomb)
}

// compact trims k for a compaction at rev and reports whether nothing of
// it remains.
func (k *keyIndex) compact(rev int64, fn func(Compacted)) bool {
	if !k.compactable(rev) {
		return false // one revision, still needed: nothing to drop
	}
	var dropped []int64
	var keep []generation
	for _, g := range k.older() {
		if g.revs[len(g.revs)-1] <= rev { // whole generation ended by rev (old ones are closed)
			dropped = append(dropped, g.revs...)
			continue
		}
		g, d := g.trim(rev)
		dropped = append(dropped, d...)
		keep = append(keep, g)
	}
	cur := k.cur()
	gone := false
	if n := len(cur.revs); n > 0 && cur.tomb && cur.revs[n-1] <= rev {
		dropped = append(dropped, cur.revs...)
		cur = generation{}
		gone = len(keep) == 0
	} else if n > 0 {
		var d []int64
		cur, d = cur.trim(rev)
		dropped = append(dropped, d...)
	}
	k.setRest(nil, keep)
	k.setCur(cur)
	// A key deleted and created again in one transaction ends a generation
	// at the revision that starts the next one; that stored state belongs
	// to the new generation and stays.
	if len(dropped) > 0 {
		dropped = slices.DeleteFunc(dropped, func(r int64) bool {
			if len(cur.revs) > 0 && cur.revs[0] == r {
				return true
			}
			for _, g := range keep {
				if g.revs[0] == r {
					return true
				}
			}
			return false
		})
	}
	if len(dropped) > 0 {
		fn(Compacted{Key: []byte(k.key), Revs: dropped})
	}
	return gone
}

// trim drops the revisions of an open (or not yet ended) generation that
// are at or below rev but the newest of them.
func (g generation) trim(rev int64) (generation, []int64) {
	i := 0
	for i+1 < len(g.revs) && g.revs[i+1] <= rev {
		i++
	}
	if i == 0 {
		return g, nil
	}
	dropped := append([]int64(nil), g.revs[:i]...)
	g.revs = append([]int64(nil), g.revs[i:]...)
	g.ver += int64(i)
	return g, dropped
}

// Leased calls fn for every key alive at the newest revision that is
// attached to a lease.
func (x *Index) Leased(fn func(id int64, key []byte)) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	x.tree.Ascend(func(k *keyIndex) bool {
		if k.lease != 0 && !x.deadAtTip(k) {
			fn(k.lease, []byte(k.key))
		}
		return true
	})
}

// entryBytes is what one key costs besides its bytes: its 64-byte entry
// and its slot in the tree's nodes (BenchmarkIndexMemory).
const entryBytes = 64 + 16

// MemoryBytes estimates the index's memory: entries and keys, not the
// extra revisions of keys changed since the last compaction.
func (x *Index) MemoryBytes() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return int64(x.tree.Len())*entryBytes + x.keyBytes
}

// Len is the number of keys the index holds (alive or with history).
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.tree.Len()
}
