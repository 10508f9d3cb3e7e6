package mvcc

import (
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"

	"github.com/axon-kv/axon/proto/axonpb"
)

// checkLeaves asserts the index's leaf invariants: the first leaf's low is
// "", no other leaf is empty, every leaf's keys are in strictly ascending
// order, at or above its low and below the next leaf's, each leaf's count
// and the index's key count and byte accounting match what decodes, and
// the keys are exactly want.
func checkLeaves(t *testing.T, x *Index, want []string) {
	t.Helper()
	var (
		refs  []leafRef
		got   []string
		out   int
		bytes int64
		lows  int64
	)
	x.leaves.Ascend(func(r leafRef) bool { refs = append(refs, r); return true })
	if len(refs) == 0 || refs[0].low != "" {
		t.Fatalf("first leaf: %d leaves, first low %q", len(refs), refs[0].low)
	}
	var c cursor
	for i, r := range refs {
		if i > 0 && r.lf.n == 0 {
			t.Fatalf("leaf %d (low %q) is empty", i, r.low)
		}
		c.reset(r.lf)
		n, alive, aliveBytes := 0, 0, int64(0)
		for c.next() {
			k := string(c.key)
			if !deadAtTip(&c.k) {
				alive++
				aliveBytes += int64(len(k))
			}
			c.full()
			if top := newestRev(&c.k); top > r.lf.top {
				t.Fatalf("leaf %d (low %q): %q has revision %d, the leaf's top is %d", i, r.low, k, top, r.lf.top)
			}
			if _, ok := x.hist[k]; ok != (c.restAt < 0) {
				t.Fatalf("%q: history out of line %v, in Index.hist %v", k, c.restAt < 0, ok)
			}
			if c.restAt < 0 {
				out++
			}
			if k < r.low || (i+1 < len(refs) && k >= refs[i+1].low) {
				t.Fatalf("leaf %d [%q, next): holds %q", i, r.low, k)
			}
			if len(got) > 0 && got[len(got)-1] >= k {
				t.Fatalf("leaf %d: %q after %q", i, k, got[len(got)-1])
			}
			got = append(got, k)
			n++
		}
		if n != r.lf.n {
			t.Fatalf("leaf %d (low %q): counts %d keys, decodes %d", i, r.low, r.lf.n, n)
		}
		if alive != r.lf.alive || aliveBytes != r.lf.aliveBytes {
			t.Fatalf("leaf %d (low %q): totals %d alive keys of %d bytes, decodes %d of %d", i, r.low, r.lf.alive, r.lf.aliveBytes, alive, aliveBytes)
		}
		bytes += int64(cap(r.lf.data))
		lows += int64(len(r.low))
	}
	if bytes != x.dataBytes || lows != x.lowBytes || len(got) != x.keys {
		t.Fatalf("accounting: %d bytes, %d low bytes, %d keys; decoded %d, %d, %d", x.dataBytes, x.lowBytes, x.keys, bytes, lows, len(got))
	}
	if out != len(x.hist) {
		t.Fatalf("%d entries have their history out of line, Index.hist holds %d", out, len(x.hist))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the index holds %d keys, want %d", len(got), len(want))
	}
}

// The leaves keep their invariants through clustered creations (leaves
// fill and split), clustered deletions compacted away (leaves empty, merge
// and are dropped next to full ones), and a rebuild by the loader.
func TestLeafInvariants(t *testing.T) {
	t.Run("histories=default", testLeafInvariants)
	t.Run("histories=out-of-line", func(t *testing.T) {
		defer SetRestInline(0, 0)()
		testLeafInvariants(t)
	})
}

func testLeafInvariants(t *testing.T) {
	for seed := int64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			r := rand.New(rand.NewSource(seed))
			var keys []string
			for i := range 3000 {
				switch i % 3 {
				case 0:
					keys = append(keys, fmt.Sprintf("/registry/pods/ns-%d/pod-%05d", r.Intn(3), r.Intn(100000)))
				case 1:
					keys = append(keys, fmt.Sprintf("/k/%d%s", r.Intn(10000), strings.Repeat("z", r.Intn(300))))
				default:
					keys = append(keys, fmt.Sprintf("/r/%x", r.Int63()))
				}
			}
			sort.Strings(keys)
			keys = compactStrings(keys)
			x := NewIndex(0, 0)
			alive := map[string]bool{}
			held := map[string]bool{}
			rev := int64(0)
			kinds := map[string]int{}
			for round := range 60 {
				rev++
				rec := &axonpb.RevisionRecord{Revision: rev}
				i, n := r.Intn(len(keys)), 1+r.Intn(400)
				del := round%3 == 2
				for _, k := range keys[i:min(i+n, len(keys))] {
					if del == alive[k] {
						rec.Changes = append(rec.Changes, &axonpb.Change{Delete: del, Key: []byte(k), Kv: &axonpb.KeyValue{ModRevision: rev}})
						alive[k] = !del
						held[k] = true
					}
				}
				x.Apply(rev, rec)
				if round%5 == 4 { // compact everything: deleted keys leave
					var gone [][]byte
					after, first := "", true
					for {
						var more bool
						after, more = x.CompactStep(rev, after, first, 100, func(c Compacted) { gone = append(gone, c.Key) })
						first = false
						if !more {
							break
						}
					}
					before := x.leaves.Len()
					x.Trim(rev, gone)
					if x.leaves.Len() < before {
						kinds["fewer leaves"]++
					}
					for k := range held {
						if !alive[k] {
							delete(held, k)
						}
					}
				}
				var want []string
				for k := range held {
					want = append(want, k)
				}
				sort.Strings(want)
				checkLeaves(t, x, want)
				checkCounts(t, x, r, keys, rev, alive)
			}
			if kinds["fewer leaves"] == 0 {
				t.Fatal("no compaction merged or dropped a leaf")
			}
		})
	}
}

// newestRev is the newest revision k holds.
func newestRev(k *keyIndex) int64 {
	top := k.last
	for _, r := range k.earlier() {
		top = max(top, r)
	}
	for _, g := range k.older() {
		for _, r := range g.revs {
			top = max(top, r)
		}
	}
	return top
}

// checkCounts compares the counts of random ranges at random revisions
// (Range's count and Size, which skip leaves by their totals) with a walk
// that decodes every key, and at the newest revision with alive.
func checkCounts(t *testing.T, x *Index, r *rand.Rand, keys []string, rev int64, alive map[string]bool) {
	t.Helper()
	for range 30 {
		a, b := keys[r.Intn(len(keys))], keys[r.Intn(len(keys))]
		if r.Intn(4) == 0 {
			a = "" // from the first key
		}
		end := []byte(b)
		if r.Intn(4) == 0 {
			end = []byte{0} // to the end
		}
		at := rev
		if r.Intn(2) == 0 {
			at = 1 + r.Int63n(rev)
		}
		var want int
		var wantBytes int64
		x.walk([]byte(a), end, at, func(e Entry) bool {
			want++
			wantBytes += int64(len(e.Key))
			return true
		})
		if at == rev {
			n := 0
			for k, ok := range alive {
				if ok && k >= a && (len(end) == 1 && end[0] == 0 || k < b) {
					n++
				}
			}
			if n != want {
				t.Fatalf("[%q, %q) at %d: the walk finds %d keys, %d are alive", a, end, at, want, n)
			}
		}
		if n, kb := x.Size([]byte(a), end, at, -1); n != want || kb != wantBytes {
			t.Fatalf("Size [%q, %q) at %d (newest %d) = %d keys, %d bytes; the walk finds %d, %d", a, end, at, rev, n, kb, want, wantBytes)
		}
		lim := r.Intn(40)
		es, n := x.Range([]byte(a), end, at, lim)
		if int(n) != want || len(es) != min(lim, want) {
			t.Fatalf("Range [%q, %q) at %d limit %d = %d entries, count %d; the walk finds %d", a, end, at, lim, len(es), n, want)
		}
	}
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, k := range s {
		if i == 0 || k != s[i-1] {
			out = append(out, k)
		}
	}
	return out
}

// The loader refuses keys that do not come in ascending order (a leaf
// built out of order would answer lookups wrongly), and a key given twice.
func TestLoaderRefusesDisorder(t *testing.T) {
	l := loader{x: NewIndex(10, 0)}
	for _, k := range []string{"/a", "/b"} {
		if err := l.add(&keyIndex{key: k, last: 5, created: 5, ver: 1}); err != nil {
			t.Fatalf("add %q: %v", k, err)
		}
	}
	for _, k := range []string{"/a0", "/b"} {
		if err := l.add(&keyIndex{key: k, last: 5, created: 5, ver: 1}); err == nil {
			t.Fatalf("add %q after /b: accepted", k)
		}
	}
	l.flush()
	checkLeaves(t, l.x, []string{"/a", "/b"})
}
