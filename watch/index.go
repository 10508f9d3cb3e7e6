package watch

import (
	"unsafe"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// keyRange is a watched key range in its normalized form.
//
//   - single:  end == "" and !ranged: exactly key.
//   - bounded: ranged && !open: every k with key <= k < end.
//   - open:    ranged && open: every k >= key (etcd's "\x00" range end).
type keyRange struct {
	key    string
	end    string
	ranged bool
	open   bool
}

func (r keyRange) contains(k string) bool {
	if !r.ranged {
		return k == r.key
	}
	return r.key <= k && (r.open || k < r.end)
}

// endLess orders range ends, an open end being the largest.
func endLess(aEnd string, aOpen bool, bEnd string, bOpen bool) bool {
	if aOpen {
		return false
	}
	return bOpen || aEnd < bEnd
}

// Event variants a watcher can ask for: with or without PrevKv, and which
// event types it filters out. A group builds each variant once per revision
// and every watcher asking for it shares the slice.
const (
	variantPrev     = 1 << 0
	variantNoPut    = 1 << 1
	variantNoDelete = 1 << 2
	numVariants     = 8
)

// group holds every watcher of one index that watches exactly the same range.
type group struct {
	r        keyRange
	watchers []*watcher

	// Fan-out scratch, owned by whoever owns the index (one goroutine).
	epoch   uint64
	matched []int32 // indices into the revision's events that fall in r
	built   uint8   // bit v set once variant v is computed
	vevs    [numVariants][]*mvccpb.Event
	vbytes  [numVariants]int64
}

func (g *group) add(w *watcher) {
	w.gidx = len(g.watchers)
	g.watchers = append(g.watchers, w)
}

func (g *group) remove(w *watcher) {
	last := len(g.watchers) - 1
	moved := g.watchers[last]
	g.watchers[w.gidx] = moved
	moved.gidx = w.gidx
	g.watchers[last] = nil
	g.watchers = g.watchers[:last]
	w.gidx = -1
}

// variant returns the events of e matched by g in the form variant v asks
// for (nil when the filters leave nothing), plus their accounted size.
func (g *group) variant(e *entry, v uint8) ([]*mvccpb.Event, int64) {
	if g.built&(1<<v) != 0 {
		return g.vevs[v], g.vbytes[v]
	}
	src := e.evs
	if v&variantPrev == 0 || e.prevGone.Load() {
		src = e.withoutPrev()
	}
	var out []*mvccpb.Event
	var size int64
	if len(g.matched) == len(src) && v&(variantNoPut|variantNoDelete) == 0 {
		out = src // every event of the revision, unfiltered: share it
		for _, ev := range src {
			size += eventSize(ev)
		}
	} else {
		for _, i := range g.matched {
			ev := src[i]
			if (v&variantNoPut != 0 && ev.Type == mvccpb.Event_PUT) ||
				(v&variantNoDelete != 0 && ev.Type == mvccpb.Event_DELETE) {
				continue
			}
			if out == nil {
				out = make([]*mvccpb.Event, 0, len(g.matched))
			}
			out = append(out, ev)
			size += eventSize(ev)
		}
	}
	g.built |= 1 << v
	g.vevs[v], g.vbytes[v] = out, size
	return out, size
}

// eventSize is what an event is charged against a watcher's buffer: its key
// and value bytes (and the previous pair's) plus a fixed overhead.
func eventSize(ev *mvccpb.Event) int64 {
	n := int64(64)
	if kv := ev.Kv; kv != nil {
		n += int64(len(kv.Key) + len(kv.Value))
	}
	if kv := ev.PrevKv; kv != nil {
		n += int64(len(kv.Key)+len(kv.Value)) + 32
	}
	return n
}

// index finds the watchers interested in a key without looking at the
// others: single-key watchers by map, range watchers through an interval
// treap of distinct ranges. Watchers with identical ranges share a group,
// so matching costs O(log ranges + matches) per event.
type index struct {
	singles map[string]*group
	ranges  map[keyRange]*group
	tree    *ivNode
	size    int // watchers

	epoch   uint64
	touched []*group
	stabbed []*group
	rnd     uint64
}

func newIndex() *index {
	return &index{
		singles: make(map[string]*group),
		ranges:  make(map[keyRange]*group),
		rnd:     0x9e3779b97f4a7c15,
	}
}

func (ix *index) add(w *watcher) {
	ix.size++
	if !w.r.ranged {
		g := ix.singles[w.r.key]
		if g == nil {
			g = &group{r: w.r}
			ix.singles[w.r.key] = g
		}
		g.add(w)
		w.grp = g
		return
	}
	g := ix.ranges[w.r]
	if g == nil {
		g = &group{r: w.r}
		ix.ranges[w.r] = g
		ix.rnd ^= ix.rnd << 13
		ix.rnd ^= ix.rnd >> 7
		ix.rnd ^= ix.rnd << 17
		ix.tree = ivInsert(ix.tree, &ivNode{g: g, prio: ix.rnd})
	}
	g.add(w)
	w.grp = g
}

func (ix *index) remove(w *watcher) {
	g := w.grp
	if g == nil {
		return
	}
	ix.size--
	g.remove(w)
	w.grp = nil
	if len(g.watchers) > 0 {
		return
	}
	if !g.r.ranged {
		delete(ix.singles, g.r.key)
		return
	}
	delete(ix.ranges, g.r)
	ix.tree = ivDelete(ix.tree, g.r)
}

// match marks, in every group whose range holds an event's key, the indices
// of those events, and returns the groups touched. The result is valid
// until the next call.
func (ix *index) match(evs []*mvccpb.Event) []*group {
	ix.epoch++
	ix.touched = ix.touched[:0]
	for i, ev := range evs {
		if ev == nil || ev.Kv == nil {
			continue
		}
		// The events are never modified, so a zero-copy view is safe.
		k := unsafe.String(unsafe.SliceData(ev.Kv.Key), len(ev.Kv.Key))
		if g := ix.singles[k]; g != nil {
			ix.mark(g, i)
		}
		if ix.tree != nil {
			ix.stabbed = ivStab(ix.tree, k, ix.stabbed[:0])
			for _, g := range ix.stabbed {
				ix.mark(g, i)
			}
		}
	}
	return ix.touched
}

func (ix *index) mark(g *group, i int) {
	if g.epoch != ix.epoch {
		g.epoch = ix.epoch
		g.matched = g.matched[:0]
		g.built = 0
		g.vevs = [numVariants][]*mvccpb.Event{}
		ix.touched = append(ix.touched, g)
	}
	g.matched = append(g.matched, int32(i))
}

// release drops references to event slices kept in group scratch space so
// that they do not outlive their revision.
func (ix *index) release() {
	for _, g := range ix.touched {
		g.vevs = [numVariants][]*mvccpb.Event{}
		g.built = 0
	}
	ix.touched = ix.touched[:0]
}

// ivNode is a node of a treap of distinct ranges ordered by (start, end),
// augmented with the largest end in its subtree for stabbing queries.
type ivNode struct {
	g           *group
	prio        uint64
	left, right *ivNode
	maxEnd      string
	maxOpen     bool
}

func ivLess(a, b keyRange) bool {
	if a.key != b.key {
		return a.key < b.key
	}
	return endLess(a.end, a.open, b.end, b.open)
}

func (n *ivNode) fix() {
	n.maxEnd, n.maxOpen = n.g.r.end, n.g.r.open
	for _, c := range [2]*ivNode{n.left, n.right} {
		if c != nil && endLess(n.maxEnd, n.maxOpen, c.maxEnd, c.maxOpen) {
			n.maxEnd, n.maxOpen = c.maxEnd, c.maxOpen
		}
	}
}

func ivRotateRight(n *ivNode) *ivNode {
	l := n.left
	n.left = l.right
	l.right = n
	n.fix()
	l.fix()
	return l
}

func ivRotateLeft(n *ivNode) *ivNode {
	r := n.right
	n.right = r.left
	r.left = n
	n.fix()
	r.fix()
	return r
}

func ivInsert(n, x *ivNode) *ivNode {
	if n == nil {
		x.fix()
		return x
	}
	if ivLess(x.g.r, n.g.r) {
		n.left = ivInsert(n.left, x)
		if n.left.prio > n.prio {
			return ivRotateRight(n)
		}
	} else {
		n.right = ivInsert(n.right, x)
		if n.right.prio > n.prio {
			return ivRotateLeft(n)
		}
	}
	n.fix()
	return n
}

func ivDelete(n *ivNode, r keyRange) *ivNode {
	if n == nil {
		return nil
	}
	switch {
	case ivLess(r, n.g.r):
		n.left = ivDelete(n.left, r)
	case ivLess(n.g.r, r):
		n.right = ivDelete(n.right, r)
	default:
		switch {
		case n.left == nil:
			return n.right
		case n.right == nil:
			return n.left
		case n.left.prio > n.right.prio:
			n = ivRotateRight(n)
			n.right = ivDelete(n.right, r)
		default:
			n = ivRotateLeft(n)
			n.left = ivDelete(n.left, r)
		}
	}
	n.fix()
	return n
}

// ivStab appends to out the groups of every range containing k.
func ivStab(n *ivNode, k string, out []*group) []*group {
	for n != nil {
		if !n.maxOpen && n.maxEnd <= k {
			return out // nothing below ends after k
		}
		out = ivStab(n.left, k, out)
		if n.g.r.key > k {
			return out // this and everything to the right start after k
		}
		if n.g.r.open || k < n.g.r.end {
			out = append(out, n.g)
		}
		n = n.right
	}
	return out
}
