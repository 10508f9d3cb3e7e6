package mvcc

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"unsafe"

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
// Keys are kept in leaves of up to leafMax consecutive keys, each leaf one
// byte slice in which a key is stored as the bytes it does not share with
// the key before it, followed by its revisions as varints. A Kubernetes
// store's neighbouring keys share most of their bytes
// (/registry/pods/<namespace>/<name>), so a key with one revision costs
// tens of bytes rather than the 160 a tree node per key did
// (BenchmarkIndexMemory), and the leaves hold no pointers: the garbage
// collector neither scans them nor counts a million small objects.
type Index struct {
	mu        sync.RWMutex
	leaves    *btree.BTreeG[leafRef]
	rev       int64 // newest revision applied
	compacted int64 // reads below it fail
	live      int64 // keys alive at rev
	keys      int   // keys held, alive or with history
	dataBytes int64 // capacity of the leaves' byte slices
	lowBytes  int64 // bytes of the leaves' lower bounds
	// The histories of keys with many revisions or generations since the
	// compacted revision, out of line (see restInline).
	hist map[string]*keyRest

	// The writer's (Apply, Trim: the write lock is held) cursor and
	// encoding buffers.
	wc      cursor
	scratch []byte
	tmp     []byte
}

// A leaf holds keys in order. The first leaf's low is "" and every key of a
// leaf is at least its low and below the next leaf's.
type leafRef struct {
	low string
	lf  *leaf
}

type leaf struct {
	n    int    // keys
	data []byte // the entries, see appendEntry
	// Totals of the keys alive at the newest revision, and a bound on
	// every revision the leaf holds: a count at a revision at or after top
	// (every count at the current revision) takes a leaf wholly inside its
	// range from these instead of decoding it.
	alive      int
	aliveBytes int64
	top        int64
}

const (
	// leafMax keys make a leaf split in two. A lookup decodes half a leaf
	// on average; an update re-encodes the entry it changes and moves the
	// bytes after it.
	leafMax = 32
	// leafMaxBytes splits a leaf of a few long keys.
	leafMaxBytes = 8 << 10
	// leafLoadFill is how full LoadIndex fills leaves, leaving room for
	// keys created later before a split.
	leafLoadFill = leafMax * 3 / 4
	// leafOverhead estimates a leaf's memory besides its bytes and its
	// low's: the leaf, its slot in the tree, the slack of its slice.
	leafOverhead = 96
)

func lessLeaf(a, b leafRef) bool { return a.low < b.low }

// restInline is the most earlier revisions and older generations a key's
// entry holds in its leaf. A longer history lives in Index.hist, where a
// new revision is appended in place: re-encoding it in the leaf on every
// change would cost a hot key (one updated thousands of times between
// compactions) time in proportion to its history on every write.
var restInline = struct{ revs, gens int }{16, 2}

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

// An entry is encoded as
//
//	uvarint shared    bytes of the previous key of the leaf it starts with
//	uvarint n, n bytes the rest of the key
//	byte    flags     entryTomb, entryRest, entryOut
//	uvarint last
//	varint  last-created, varint ver
//	uvarint lease
//	with entryRest: uvarint count of the earlier revisions, uvarint n and
//	n bytes: the earlier revisions (uvarint count, varint deltas), uvarint
//	count of older generations, each a tomb byte, varint created, varint
//	ver and its revisions; with entryOut only the count (the history is in
//	Index.hist).
//
// The rest is sized so that a walk or a lookup passing a key with a long
// history skips it; a read at or after the key's newest revision needs
// only the count. A leaf's first entry shares nothing, so a leaf decodes
// on its own.
const (
	entryTomb = 1 << iota
	entryRest
	entryOut
)

func appendHeader(dst []byte, shared int, key string) []byte {
	dst = binary.AppendUvarint(dst, uint64(shared))
	dst = binary.AppendUvarint(dst, uint64(len(key)-shared))
	return append(dst, key[shared:]...)
}

// appendEntry encodes k, its history out of line when out.
func appendEntry(dst []byte, shared int, k *keyIndex, out bool) []byte {
	return appendBody(appendHeader(dst, shared, k.key), k, out)
}

func hasRest(k *keyIndex) bool {
	return k.rest != nil && (len(k.rest.revs) > 0 || len(k.rest.old) > 0)
}

func appendBody(dst []byte, k *keyIndex, out bool) []byte {
	var flags byte
	if k.tomb {
		flags |= entryTomb
	}
	rest := hasRest(k)
	switch {
	case rest && out:
		flags |= entryOut
	case rest:
		flags |= entryRest
	}
	dst = append(dst, flags)
	dst = binary.AppendUvarint(dst, uint64(k.last))
	dst = binary.AppendVarint(dst, k.last-k.created)
	dst = binary.AppendVarint(dst, k.ver)
	dst = binary.AppendUvarint(dst, uint64(k.lease))
	if !rest {
		return dst
	}
	dst = binary.AppendUvarint(dst, uint64(len(k.rest.revs)))
	if out {
		return dst
	}
	// The rest's size comes before it: encode it after a gap of the most
	// bytes the size can take, then close the gap.
	at := len(dst)
	dst = append(dst, make([]byte, binary.MaxVarintLen64)...)
	from := len(dst)
	dst = appendRevs(dst, k.rest.revs)
	dst = binary.AppendUvarint(dst, uint64(len(k.rest.old)))
	for _, g := range k.rest.old {
		var tomb byte
		if g.tomb {
			tomb = 1
		}
		dst = append(dst, tomb)
		dst = binary.AppendVarint(dst, g.created)
		dst = binary.AppendVarint(dst, g.ver)
		dst = appendRevs(dst, g.revs)
	}
	n := len(dst) - from
	size := binary.PutUvarint(dst[at:], uint64(n))
	copy(dst[at+size:], dst[from:])
	return dst[:at+size+n]
}

func appendRevs(dst []byte, revs []int64) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(revs)))
	prev := int64(0)
	for _, r := range revs {
		dst = binary.AppendVarint(dst, r-prev)
		prev = r
	}
	return dst
}

func sharedPrefix(a, b string) int {
	n := min(len(a), len(b))
	i := 0
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// str is b as a string without a copy: only while b is not written.
func str(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// cursor decodes a leaf's entries in order. k, and k.key in particular,
// are valid until the next call. k.rest is decoded only by full.
type cursor struct {
	lf         *leaf
	off        int  // the next entry
	at         bool // an entry is decoded
	start, end int  // the decoded entry's bytes
	body       int  // where its key ends
	key, prev  []byte
	k          keyIndex
	earlier    int     // len(k.earlier()), known before full
	restAt     int     // where the entry's rest starts (0: it has none, -1: out of line)
	rest       keyRest // what k.rest points to when in line, reused
	hist       map[string]*keyRest
}

func (c *cursor) reset(lf *leaf) {
	c.lf, c.off, c.at = lf, 0, false
	c.key, c.prev = c.key[:0], c.prev[:0]
	c.start, c.body, c.end = 0, 0, 0
}

func (c *cursor) next() bool {
	d := c.lf.data
	if c.off >= len(d) {
		c.at = false
		return false
	}
	c.prev, c.key = c.key, c.prev
	c.start = c.off
	p := c.off
	shared, n := binary.Uvarint(d[p:])
	p += n
	sl, n := binary.Uvarint(d[p:])
	p += n
	c.key = append(append(c.key[:0], c.prev[:shared]...), d[p:p+int(sl)]...)
	p += int(sl)
	c.body = p
	c.end = c.decodeBody(p)
	c.off = c.end
	c.at = true
	return true
}

func (c *cursor) decodeBody(p int) int {
	d := c.lf.data
	flags := d[p]
	p++
	last, n := binary.Uvarint(d[p:])
	p += n
	dc, n := binary.Varint(d[p:])
	p += n
	ver, n := binary.Varint(d[p:])
	p += n
	lease, n := binary.Uvarint(d[p:])
	p += n
	c.k = keyIndex{key: str(c.key), last: int64(last), created: int64(last) - dc, ver: ver, lease: int64(lease), tomb: flags&entryTomb != 0}
	c.earlier, c.restAt = 0, 0
	if flags&(entryRest|entryOut) == 0 {
		return p
	}
	earlier, n := binary.Uvarint(d[p:])
	p += n
	if flags&entryOut != 0 {
		c.earlier, c.restAt = int(earlier), -1
		return p
	}
	size, n := binary.Uvarint(d[p:])
	p += n
	c.earlier, c.restAt = int(earlier), p
	return p + int(size)
}

// full decodes the entry's earlier revisions and older generations.
func (c *cursor) full() {
	if c.restAt == 0 || c.k.rest != nil {
		return
	}
	if c.restAt < 0 {
		c.k.rest = c.hist[str(c.key)]
		return
	}
	d, p, n := c.lf.data, c.restAt, 0
	r := &c.rest
	r.revs, p = readRevs(d, p, r.revs[:0])
	nOld, n := binary.Uvarint(d[p:])
	p += n
	old := r.old[:0]
	for range nOld {
		var g generation
		if len(old) < cap(old) {
			g.revs = old[:len(old)+1][len(old)].revs[:0]
		}
		g.tomb = d[p] == 1
		p++
		g.created, n = binary.Varint(d[p:])
		p += n
		g.ver, n = binary.Varint(d[p:])
		p += n
		g.revs, p = readRevs(d, p, g.revs)
		old = append(old, g)
	}
	r.old = old
	c.k.rest = r
}

// state is k.at(rev) for the entry c is on, decoding its history only when
// rev is before its newest revision.
func (c *cursor) state(rev int64) (Entry, bool) {
	k := &c.k
	if k.last != 0 && rev >= k.last {
		if k.tomb {
			return Entry{}, false
		}
		return Entry{Key: k.key, Mod: k.last, Create: k.created, Version: k.ver + int64(c.earlier)}, true
	}
	c.full()
	return k.at(rev)
}

func readRevs(d []byte, p int, dst []int64) ([]int64, int) {
	cnt, n := binary.Uvarint(d[p:])
	p += n
	prev := int64(0)
	for range cnt {
		delta, n := binary.Varint(d[p:])
		p += n
		prev += delta
		dst = append(dst, prev)
	}
	return dst, p
}

// seek positions c on the first entry of lf whose key is at least key and
// reports whether it is key. Past the last entry c.at is false. Either way
// c.prev is the key before the position (empty at the leaf's start).
func (c *cursor) seek(lf *leaf, key string) bool {
	c.reset(lf)
	for c.next() {
		if cmp := strings.Compare(str(c.key), key); cmp >= 0 {
			return cmp == 0
		}
	}
	c.prev, c.key = c.key, c.prev
	c.start, c.body, c.end = len(lf.data), len(lf.data), len(lf.data)
	return false
}

var cursors = sync.Pool{New: func() any { return new(cursor) }}

// Entry is a key's state at a revision as the index knows it: everything
// but the value and the lease.
type Entry struct {
	Key                  string
	Mod, Create, Version int64
	loaded               *axonpb.KeyValue // set when the state is known in full
}

// NewIndex returns an empty index at revision rev.
func NewIndex(rev, compacted int64) *Index {
	x := &Index{leaves: btree.NewG(32, lessLeaf), rev: rev, compacted: compacted, hist: map[string]*keyRest{}}
	x.wc.hist = x.hist
	x.leaves.ReplaceOrInsert(leafRef{lf: &leaf{}})
	return x
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

// leafFor returns the leaf that holds key, or would.
func (x *Index) leafFor(key string) leafRef {
	var ref leafRef
	x.leaves.DescendLessOrEqual(leafRef{low: key}, func(r leafRef) bool {
		ref = r
		return false
	})
	return ref
}

// ascend calls fn with c on each entry from the first key at or after
// from, in key order, until fn returns false. The caller holds the lock.
func (x *Index) ascend(c *cursor, from string, fn func(c *cursor) bool) {
	started, stopped := false, false
	x.leaves.AscendGreaterOrEqual(leafRef{low: x.leafFor(from).low}, func(r leafRef) bool {
		c.reset(r.lf)
		for c.next() {
			if !started {
				if str(c.key) < from {
					continue
				}
				started = true
			}
			if !fn(c) {
				stopped = true
				return false
			}
		}
		return !stopped
	})
}

// Get returns key's state at rev.
func (x *Index) Get(key []byte, rev int64) (Entry, bool) {
	c := cursors.Get().(*cursor)
	defer cursors.Put(c)
	c.hist = x.hist
	x.mu.RLock()
	if !c.seek(x.leafFor(str(key)).lf, str(key)) {
		x.mu.RUnlock()
		return Entry{}, false
	}
	e, ok := c.state(rev)
	x.mu.RUnlock()
	if !ok {
		return Entry{}, false
	}
	e.Key = string(key)
	return e, true
}

// keyArena copies the keys of the entries a read returns into shared
// chunks: one allocation per chunk instead of one per key.
type keyArena struct {
	buf  []byte
	next int
}

func (a *keyArena) clone(s string) string {
	if len(a.buf)+len(s) > cap(a.buf) {
		a.next = min(max(2*a.next, 1<<10), 64<<10)
		a.buf = make([]byte, 0, max(a.next, len(s)))
	}
	a.buf = append(a.buf, s...)
	return str(a.buf[len(a.buf)-len(s):])
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
		if e, ok := x.Get(start, rev); ok {
			count = 1
			if max != 0 {
				out = append(out, e)
			}
		}
		return out, count
	}
	var (
		keys keyArena
		rest []byte
	)
	x.walk(start, end, rev, func(e Entry) bool {
		count++
		if max >= 0 && len(out) >= max {
			rest = append([]byte(e.Key), 0) // the others are only counted
			return false
		}
		e.Key = keys.clone(e.Key)
		out = append(out, e)
		return true
	})
	if rest != nil {
		n, _ := x.count(rest, end, rev)
		count += int64(n)
	}
	return out, count
}

// Size returns how many keys of [start, end) are alive at rev, up to max
// (all when max < 0), and the bytes of those keys, without building
// entries: what a read's memory is estimated from before it runs.
func (x *Index) Size(start, end []byte, rev int64, max int) (n int, keyBytes int64) {
	if max == 0 {
		return 0, 0
	}
	if len(end) == 0 {
		if _, ok := x.Get(start, rev); ok {
			return 1, int64(len(start))
		}
		return 0, 0
	}
	if max < 0 {
		return x.count(start, end, rev)
	}
	x.walk(start, end, rev, func(e Entry) bool {
		n++
		keyBytes += int64(len(e.Key))
		return n < max
	})
	return n, keyBytes
}

// count returns how many keys of [from, end) (end non-empty; "\x00" means
// to the end) are alive at rev, and their bytes. A leaf wholly inside the
// range that holds no revision after rev is counted from its totals; the
// others are decoded. Like walk, it releases the lock every walkBatch
// decoded keys (or leaves) and goes on from the next leaf's lower bound:
// a key added meanwhile below it was created after rev.
func (x *Index) count(from, end []byte, rev int64) (n int, keyBytes int64) {
	toEnd := len(end) == 1 && end[0] == 0
	if !toEnd && bytes.Compare(end, from) <= 0 {
		return 0, 0
	}
	c := cursors.Get().(*cursor)
	defer cursors.Put(c)
	c.hist = x.hist
	cur := string(from)
	// decode counts lf's keys in [cur, end), reporting whether it reached end.
	decode := func(lf *leaf) bool {
		c.reset(lf)
		for c.next() {
			if str(c.key) < cur {
				continue
			}
			if !toEnd && bytes.Compare(c.key, end) >= 0 {
				return true
			}
			if _, ok := c.state(rev); ok {
				n++
				keyBytes += int64(len(c.key))
			}
		}
		return false
	}
	for {
		x.mu.RLock()
		var endLow string // the leaf end falls in: the last one to decode
		if !toEnd {
			endLow = x.leafFor(str(end)).low
		}
		firstLow := x.leafFor(cur).low
		visited, done := 0, true
		var resume string
		x.leaves.AscendGreaterOrEqual(leafRef{low: firstLow}, func(r leafRef) bool {
			if visited >= walkBatch {
				done, resume = false, r.low
				return false
			}
			lf := r.lf
			switch {
			case r.low == firstLow || (!toEnd && r.low == endLow):
				visited += lf.n
				return !decode(lf) && (toEnd || r.low != endLow)
			case rev >= lf.top:
				visited++
				n += lf.alive
				keyBytes += lf.aliveBytes
			default:
				visited += lf.n
				decode(lf)
			}
			return true
		})
		x.mu.RUnlock()
		if done {
			return n, keyBytes
		}
		cur = resume
		runtime.Gosched()
	}
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
	var (
		next []byte
		keys keyArena
	)
	x.walk(start, end, rev, func(e Entry) bool {
		if len(out) == max {
			next = []byte(e.Key)
			return false
		}
		e.Key = keys.clone(e.Key)
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
// until fn returns false. The entry's Key is valid only during the call.
// It releases the lock every walkBatch keys and goes on from the key after
// the last one visited: keys added meanwhile were created after rev, so
// they have no state at rev and are skipped, and a compaction keeps every
// key's state at revisions it does not reach, which the caller checked
// rev against.
func (x *Index) walk(start, end []byte, rev int64, fn func(Entry) bool) {
	toEnd := len(end) == 1 && end[0] == 0
	if !toEnd && bytes.Compare(end, start) <= 0 {
		return
	}
	c := cursors.Get().(*cursor)
	defer cursors.Put(c)
	c.hist = x.hist
	from := append([]byte(nil), start...)
	for {
		n, done := 0, true
		x.mu.RLock()
		x.ascend(c, str(from), func(c *cursor) bool {
			if !toEnd && bytes.Compare(c.key, end) >= 0 {
				return false
			}
			if n == walkBatch {
				done = false
				return false
			}
			n++
			if e, ok := c.state(rev); ok && !fn(e) {
				return false // done stays true
			}
			// From the key after this one, should the next stop the batch.
			// (ascend reads its from, which aliases this buffer, only until
			// it reaches the first key at or after it, before any fn.)
			from = append(append(from[:0], c.key...), 0)
			return true
		})
		x.mu.RUnlock()
		if done {
			return
		}
		runtime.Gosched() // as loads do, see yieldEvery
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

func (x *Index) change(rev int64, ch *axonpb.Change) {
	key := str(ch.Key)
	ref := x.leafFor(key)
	lf := ref.lf
	c := &x.wc
	found := c.seek(lf, key)
	c.full()
	lf.top = max(lf.top, rev)
	if ch.Delete {
		if !found || deadAtTip(&c.k) {
			return // nothing to delete (cannot happen for a committed record)
		}
		k := c.k
		k.push(rev, true)
		k.lease = 0
		x.counted(lf, key, -1)
		x.replace(lf, c, &k)
		return
	}
	var lease int64
	if ch.Kv != nil {
		lease = ch.Kv.Lease
	}
	if !found {
		k := keyIndex{key: key, last: rev, created: rev, ver: 1, lease: lease}
		x.counted(lf, key, 1)
		x.insert(ref, c, &k) // last: it may split the leaf
		return
	}
	k := c.k
	k.lease = lease
	if deadAtTip(&k) {
		k.begin(rev, rev, 1)
		x.counted(lf, key, 1)
	} else {
		k.push(rev, false)
	}
	x.replace(lf, c, &k)
}

// counted records that key, in lf, came alive (d 1) or died (d -1) at the
// newest revision.
func (x *Index) counted(lf *leaf, key string, d int) {
	x.live += int64(d)
	lf.alive += d
	lf.aliveBytes += int64(d * len(key))
}

// replace re-encodes the entry c is on (k has its key).
func (x *Index) replace(lf *leaf, c *cursor, k *keyIndex) {
	x.scratch = appendEntry(x.scratch[:0], sharedPrefix(str(c.prev), k.key), k, x.placeRest(k, false))
	x.splice(lf, c.start, c.end, x.scratch)
}

// insert adds k, a new key, where c is (see seek), and splits the leaf
// when it is full.
func (x *Index) insert(ref leafRef, c *cursor, k *keyIndex) {
	lf := ref.lf
	x.scratch = appendEntry(x.scratch[:0], sharedPrefix(str(c.prev), k.key), k, x.placeRest(k, false))
	end := c.start
	if c.at { // the key after it is now encoded against it
		x.scratch = appendHeader(x.scratch, sharedPrefix(k.key, str(c.key)), str(c.key))
		end = c.body
	}
	x.splice(lf, c.start, end, x.scratch)
	lf.n++
	x.keys++
	if lf.n > leafMax || (len(lf.data) > leafMaxBytes && lf.n > 1) {
		x.split(lf)
	}
}

// placeRest decides where k's history is kept as k is written to its
// leaf, keeps Index.hist in step, and reports whether it is out of line.
// k.key may be transient. A history that goes out of line is copied (it
// may be the cursor's reused buffers; it is short then) unless owned:
// from then on the one in hist is changed in place.
func (x *Index) placeRest(k *keyIndex, owned bool) bool {
	cur, was := x.hist[k.key]
	if !hasRest(k) || (len(k.rest.revs) <= restInline.revs && len(k.rest.old) <= restInline.gens) {
		if was {
			delete(x.hist, k.key)
		}
		return false
	}
	switch {
	case was && cur != k.rest:
		// Derived from the history held out of line (or new slices), not
		// from a cursor's buffers: take it over.
		*cur = *k.rest
	case !was && owned:
		x.hist[strings.Clone(k.key)] = k.rest
	case !was:
		r := &keyRest{revs: slices.Clone(k.rest.revs), old: make([]generation, len(k.rest.old))}
		for i, g := range k.rest.old {
			g.revs = slices.Clone(g.revs)
			r.old[i] = g
		}
		x.hist[strings.Clone(k.key)] = r
	}
	return true
}

// remove drops the entry c is on, then merges the next leaf into c's when
// both are small, or drops c's leaf when it is empty (see mergeNext).
func (x *Index) remove(ref leafRef, c *cursor) {
	lf := ref.lf
	if c.restAt < 0 {
		delete(x.hist, str(c.key))
	}
	start := c.start
	x.tmp = append(x.tmp[:0], c.prev...)
	x.scratch = x.scratch[:0]
	end := len(lf.data)
	if c.next() { // the key after it is now encoded against the one before
		x.scratch = appendHeader(x.scratch, sharedPrefix(str(x.tmp), str(c.key)), str(c.key))
		end = c.body
	}
	x.splice(lf, start, end, x.scratch)
	lf.n--
	x.keys--
	if lf.n < leafMax/4 {
		x.mergeNext(ref)
	}
}

// mergeNext appends the leaf after ref's to it when both fit in one, and
// drops ref's leaf when it is empty (unless it is the first).
func (x *Index) mergeNext(ref leafRef) {
	lf := ref.lf
	if lf.n == 0 && ref.low != "" {
		x.dropLeaf(ref)
		return
	}
	var nextRef leafRef
	x.leaves.AscendGreaterOrEqual(leafRef{low: ref.low + "\x00"}, func(r leafRef) bool {
		nextRef = r
		return false
	})
	next := nextRef.lf
	if next == nil || lf.n+next.n > leafMax*3/4 || len(lf.data)+len(next.data) > leafMaxBytes {
		return
	}
	c := &x.wc
	c.reset(lf)
	for c.next() {
	}
	x.tmp = append(x.tmp[:0], c.key...) // the last key of lf
	c.reset(next)
	x.scratch = x.scratch[:0]
	if c.next() {
		x.scratch = appendHeader(x.scratch, sharedPrefix(str(x.tmp), str(c.key)), str(c.key))
		x.scratch = append(x.scratch, next.data[c.body:]...)
	}
	x.splice(lf, len(lf.data), len(lf.data), x.scratch)
	lf.n += next.n
	lf.alive += next.alive
	lf.aliveBytes += next.aliveBytes
	lf.top = max(lf.top, next.top)
	x.dropLeaf(nextRef)
}

func (x *Index) dropLeaf(ref leafRef) {
	x.leaves.Delete(ref)
	x.dataBytes -= int64(cap(ref.lf.data))
	x.lowBytes -= int64(len(ref.low))
}

// split moves the second half of lf's keys to a new leaf.
func (x *Index) split(lf *leaf) {
	c := &x.wc
	c.reset(lf)
	mid := lf.n / 2
	for range mid + 1 {
		c.next()
	}
	right := make([]byte, 0, len(lf.data)-c.start+len(c.key)+16)
	right = appendHeader(right, 0, str(c.key))
	right = append(right, lf.data[c.body:]...)
	left := append(make([]byte, 0, c.start+c.start/8), lf.data[:c.start]...)
	x.dataBytes += int64(cap(left)+cap(right)) - int64(cap(lf.data))
	low := string(c.key)
	x.lowBytes += int64(len(low))
	r := &leaf{n: lf.n - mid, data: right, top: lf.top}
	x.leaves.ReplaceOrInsert(leafRef{low: low, lf: r})
	lf.n, lf.data = mid, left
	recount(c, lf)
	recount(c, r)
}

// recount sets lf's totals of keys alive at the newest revision.
func recount(c *cursor, lf *leaf) {
	lf.alive, lf.aliveBytes = 0, 0
	c.reset(lf)
	for c.next() {
		if !deadAtTip(&c.k) {
			lf.alive++
			lf.aliveBytes += int64(len(c.key))
		}
	}
}

// splice replaces lf.data[a:b] with mid (which must not alias it).
func (x *Index) splice(lf *leaf, a, b int, mid []byte) {
	d := lf.data
	n := len(d) - (b - a) + len(mid)
	if n <= cap(d) && (cap(d) <= 1<<10 || n >= cap(d)/2) {
		tail := len(d)
		d = d[:max(n, tail)]
		copy(d[a+len(mid):], d[b:tail])
		copy(d[a:], mid)
		lf.data = d[:n]
		return
	}
	nd := make([]byte, n, n+n/8+32)
	copy(nd, d[:a])
	copy(nd[a:], mid)
	copy(nd[a+len(mid):], d[b:])
	x.dataBytes += int64(cap(nd) - cap(d))
	lf.data = nd
}

// loader fills an index with keys given in ascending order (LoadIndex).
type loader struct {
	x    *Index
	lf   *leaf
	buf  []byte
	prev []byte // the key before, in this leaf
	last []byte // the key before
	any  bool
}

// add appends k, which must come after every key added before: leaves
// built out of order would answer lookups wrongly, so that is refused.
func (l *loader) add(k *keyIndex) error {
	if l.any && k.key <= str(l.last) {
		return fmt.Errorf("mvcc: key index: history of %q comes after that of %q", k.key, l.last)
	}
	l.last, l.any = append(l.last[:0], k.key...), true
	x := l.x
	if l.lf == nil {
		l.lf = x.leafFor("").lf
		l.lf.top = x.rev
	}
	if l.lf.n >= leafLoadFill || len(l.buf) > leafMaxBytes/2 {
		l.flush()
		low := strings.Clone(k.key)
		l.lf = &leaf{top: x.rev}
		x.lowBytes += int64(len(low))
		x.leaves.ReplaceOrInsert(leafRef{low: low, lf: l.lf})
		l.prev = l.prev[:0]
	}
	l.buf = appendEntry(l.buf, sharedPrefix(str(l.prev), k.key), k, x.placeRest(k, true))
	l.prev = append(l.prev[:0], k.key...)
	l.lf.n++
	x.keys++
	if !deadAtTip(k) {
		x.counted(l.lf, k.key, 1)
	}
	return nil
}

// flush gives the current leaf its bytes, sized to them.
func (l *loader) flush() {
	if l.lf == nil {
		return
	}
	l.lf.data = append(make([]byte, 0, len(l.buf)+len(l.buf)/8), l.buf...)
	l.x.dataBytes += int64(cap(l.lf.data))
	l.buf = l.buf[:0]
}

// deadAtTip reports whether k does not exist at the newest revision.
func deadAtTip(k *keyIndex) bool { return k.tomb || k.last == 0 }

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
	c := cursors.Get().(*cursor)
	defer cursors.Put(c)
	c.hist = x.hist
	x.mu.RLock()
	defer x.mu.RUnlock()
	var (
		last []byte
		n    int
		more bool
	)
	x.ascend(c, after, func(c *cursor) bool {
		c.full()
		k := &c.k
		if !first && k.key == after {
			return true
		}
		if n >= max {
			more = true
			return false
		}
		n++
		last = append(last[:0], c.key...)
		if !k.compactable(rev) {
			return true
		}
		// The plan is made on a copy: compact replaces the entry's
		// slices and never writes into the ones it shares.
		cp := *k
		var revs []int64
		cp.compact(rev, func(d Compacted) { revs = d.Revs })
		// The budget counts revisions dropped too, so one step's batch of
		// deletions stays small however many versions a key had.
		n += len(revs)
		fn(Compacted{Key: []byte(k.key), Revs: revs})
		return true
	})
	return string(last), more
}

// Trim applies a compaction at rev to keys, as CompactStep planned it,
// once the states it removes are gone from the store. The writer only adds
// revisions above rev meanwhile, so the key's revisions at or below rev,
// and what the compaction drops of them, are what CompactStep saw; a key
// created again since is kept.
func (x *Index) Trim(rev int64, keys [][]byte) {
	x.mu.Lock()
	defer x.mu.Unlock()
	c := &x.wc
	for _, key := range keys {
		ref := x.leafFor(str(key))
		if !c.seek(ref.lf, str(key)) {
			continue
		}
		if c.full(); !c.k.compactable(rev) {
			continue
		}
		k := c.k
		if gone := k.compact(rev, func(Compacted) {}); gone {
			x.remove(ref, c)
		} else {
			x.replace(ref.lf, c, &k)
		}
	}
}

// Leased calls fn for every key alive at the newest revision that is
// attached to a lease.
func (x *Index) Leased(fn func(id int64, key []byte)) {
	c := cursors.Get().(*cursor)
	defer cursors.Put(c)
	x.mu.RLock()
	defer x.mu.RUnlock()
	x.ascend(c, "", func(c *cursor) bool {
		if c.k.lease != 0 && !deadAtTip(&c.k) {
			fn(c.k.lease, slices.Clone(c.key))
		}
		return true
	})
}

// MemoryBytes estimates the index's memory: its leaves' bytes, their lower
// bounds and what each leaf costs besides.
func (x *Index) MemoryBytes() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.dataBytes + x.lowBytes + int64(x.leaves.Len())*leafOverhead
}

// Len is the number of keys the index holds (alive or with history).
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.keys
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
