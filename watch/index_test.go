package watch

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestIndexMatchesBruteForce adds and removes watchers with random ranges
// (single keys, bounded, open, nested, identical) and checks that matching
// finds exactly the watchers a scan over all of them finds.
func TestIndexMatchesBruteForce(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"", "a", "a/", "a/b", "a0", "b", "b/", "b/c", "c", "\x00", "\xff"}
	key := func() string { return alphabet[rnd.IntN(len(alphabet))] + alphabet[rnd.IntN(len(alphabet))] }
	ix := newIndex()
	var live []*watcher
	for step := 0; step < 8000; step++ {
		if len(live) > 300 || (len(live) > 0 && rnd.IntN(3) == 0) {
			i := rnd.IntN(len(live))
			ix.remove(live[i])
			live = append(live[:i], live[i+1:]...)
		} else {
			var end []byte
			switch rnd.IntN(4) {
			case 0:
			case 1:
				end = []byte{0}
			default:
				end = []byte(key() + "~")
			}
			k := key()
			w := &watcher{id: int64(step), r: parseRange([]byte(k), end), gidx: -1}
			if w.r.ranged && !w.r.open && w.r.key >= w.r.end {
				continue
			}
			ix.add(w)
			live = append(live, w)
		}
		if ix.size != len(live) {
			t.Fatalf("size %d, want %d", ix.size, len(live))
		}
		k := key()
		evs := []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: []byte(k)}}}
		var got []int64
		for _, g := range ix.match(evs) {
			for _, w := range g.watchers {
				got = append(got, w.id)
			}
		}
		ix.release()
		var want []int64
		for _, w := range live {
			if w.r.contains(k) {
				want = append(want, w.id)
			}
		}
		sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
		sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("step %d key %q: got %v, want %v", step, k, got, want)
		}
	}
	for _, w := range live {
		ix.remove(w)
	}
	if ix.tree != nil || len(ix.singles) != 0 || len(ix.ranges) != 0 || ix.size != 0 {
		t.Fatal("index not empty after removing every watcher")
	}
}

// TestVariants checks the per-group event variants: matched events only,
// PrevKv kept or dropped, filters applied, the revision's slice shared when
// nothing is left out, and the published events never modified.
func TestVariants(t *testing.T) {
	prev := &mvccpb.KeyValue{Key: []byte("a"), Value: []byte("old")}
	evs := []*mvccpb.Event{
		{Type: mvccpb.Event_PUT, Kv: &mvccpb.KeyValue{Key: []byte("a")}, PrevKv: prev},
		{Type: mvccpb.Event_DELETE, Kv: &mvccpb.KeyValue{Key: []byte("b")}, PrevKv: prev},
		{Type: mvccpb.Event_PUT, Kv: &mvccpb.KeyValue{Key: []byte("a/x")}},
	}
	e := &entry{rev: 1, evs: evs}
	ix := newIndex()
	all := &watcher{r: parseRange(nil, []byte{0}), gidx: -1}
	a := &watcher{r: parseRange([]byte("a"), []byte("b")), gidx: -1}
	ix.add(all)
	ix.add(a)
	var gAll, gA *group
	for _, g := range ix.match(evs) {
		switch g {
		case all.grp:
			gAll = g
		case a.grp:
			gA = g
		}
	}
	if v, _ := gAll.variant(e, variantPrev); &v[0] != &evs[0] || len(v) != 3 {
		t.Fatal("unfiltered full match should share the revision's slice")
	}
	if v, _ := gA.variant(e, variantPrev); len(v) != 2 || v[0] != evs[0] || v[1] != evs[2] {
		t.Fatalf("range match: %v", v)
	}
	if v, _ := gA.variant(e, 0); len(v) != 2 || v[0].PrevKv != nil || v[0].Kv != evs[0].Kv {
		t.Fatalf("without prev: %v", v)
	}
	if v, _ := gAll.variant(e, variantNoPut|variantPrev); len(v) != 1 || v[0] != evs[1] {
		t.Fatalf("noput: %v", v)
	}
	if v, _ := gAll.variant(e, variantNoDelete); len(v) != 2 || v[0].PrevKv != nil {
		t.Fatalf("nodelete: %v", v)
	}
	if v, _ := gAll.variant(e, variantNoDelete|variantNoPut); v != nil {
		t.Fatalf("everything filtered: %v", v)
	}
	if evs[0].PrevKv != prev || evs[1].PrevKv != prev {
		t.Fatal("published events modified")
	}
}
