// Package backendtest is the conformance suite every backend.Backend engine
// must pass. Engines call Run from their own tests; MVCC relies on exactly
// the behaviour checked here and on nothing engine-specific.
package backendtest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/axon-kv/axon/backend"
)

// Run runs the suite. open must return a fresh, empty backend for each call
// and arrange for it to be closed when t ends; the suite may already have
// closed it, so that cleanup must accept backend.ErrClosed. Besides what the
// backend package documents, the suite expects Snapshot.Close to be
// idempotent and usable after the backend is closed, and every call on a
// closed backend or on a snapshot of one to fail with backend.ErrClosed.
func Run(t *testing.T, open func(t *testing.T) backend.Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, func(*testing.T) backend.Backend)
	}{
		{"PutGetDelete", testPutGetDelete},
		{"MissingKey", testMissingKey},
		{"EmptyValue", testEmptyValue},
		{"LargeValues", testLargeValues},
		{"GetReturnsCopy", testGetReturnsCopy},
		{"CommitDoesNotRetainBuffers", testCommitDoesNotRetainBuffers},
		{"SnapshotIsolation", testSnapshotIsolation},
		{"ScanExplicit", testScanExplicit},
		{"ScanMatchesModel", testScanMatchesModel},
		{"ScanKeysOnly", testScanKeysOnly},
		{"ScanStop", testScanStop},
		{"ScanCallbackError", testScanCallbackError},
		{"Conditions", testConditions},
		{"BatchOrderAndAtomicity", testBatchOrderAndAtomicity},
		{"RandomOpsMatchModel", testRandomOpsMatchModel},
		{"ConcurrentBatchesAtomic", testConcurrentBatchesAtomic},
		{"ConcurrentConditionalIncrement", testConcurrentConditionalIncrement},
		{"PrefixEnd", testPrefixEnd},
		{"PrefixScan", testPrefixScan},
		{"Size", testSize},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// --- helpers ---------------------------------------------------------------

type kv struct{ k, v string }

func commit(t *testing.T, be backend.Backend, b *backend.Batch) {
	t.Helper()
	if err := be.Commit(b); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

// put commits key/value pairs as one batch.
func put(t *testing.T, be backend.Backend, pairs ...string) {
	t.Helper()
	if len(pairs)%2 != 0 {
		t.Fatalf("put: odd number of arguments")
	}
	var b backend.Batch
	for i := 0; i < len(pairs); i += 2 {
		b.Put([]byte(pairs[i]), []byte(pairs[i+1]))
	}
	commit(t, be, &b)
}

func del(t *testing.T, be backend.Backend, keys ...string) {
	t.Helper()
	var b backend.Batch
	for _, k := range keys {
		b.Delete([]byte(k))
	}
	commit(t, be, &b)
}

func snap(t *testing.T, be backend.Backend) backend.Snapshot {
	t.Helper()
	s, err := be.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// wantValue checks key has value want, or is absent when want is nil.
func wantValue(t *testing.T, s backend.Snapshot, key string, want []byte) {
	t.Helper()
	got, err := s.Get([]byte(key))
	if want == nil {
		if !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, got, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) = %q; want %q", key, got, want)
	}
}

// latest checks key against want in a fresh snapshot.
func latest(t *testing.T, be backend.Backend, key string, want []byte) {
	t.Helper()
	s := snap(t, be)
	wantValue(t, s, key, want)
	s.Close()
}

func scan(t *testing.T, s backend.Snapshot, start, end []byte, opts backend.ScanOptions) []kv {
	t.Helper()
	var got []kv
	err := s.Scan(start, end, opts, func(k, v []byte) error {
		if opts.KeysOnly && v != nil {
			return fmt.Errorf("KeysOnly scan passed value %q for %q", v, k)
		}
		if !opts.KeysOnly && v == nil {
			return fmt.Errorf("scan passed nil value for %q", k)
		}
		got = append(got, kv{string(k), string(v)})
		return nil
	})
	if err != nil {
		t.Fatalf("Scan(%q, %q, %+v): %v", start, end, opts, err)
	}
	return got
}

func keysOf(kvs []kv) []string {
	out := make([]string, len(kvs))
	for i, p := range kvs {
		out[i] = p.k
	}
	return out
}

func b(s string) []byte { return []byte(s) }

// --- point operations -----------------------------------------------------

func testPutGetDelete(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	put(t, be, "a", "1", "b", "2")
	latest(t, be, "a", b("1"))
	latest(t, be, "b", b("2"))

	put(t, be, "a", "one")
	latest(t, be, "a", b("one"))

	del(t, be, "a")
	latest(t, be, "a", nil)
	latest(t, be, "b", b("2"))

	// Deleting what is not there is not an error.
	del(t, be, "a", "never-written")
	latest(t, be, "never-written", nil)

	put(t, be, "a", "again")
	latest(t, be, "a", b("again"))
}

func testMissingKey(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	s := snap(t, be)
	for _, k := range []string{"x", "\x00", "\xff", "\xff\xff\xff"} {
		wantValue(t, s, k, nil)
	}
	if got := scan(t, s, nil, nil, backend.ScanOptions{}); len(got) != 0 {
		t.Fatalf("scan of empty store = %q", got)
	}
	if got := scan(t, s, nil, nil, backend.ScanOptions{Reverse: true}); len(got) != 0 {
		t.Fatalf("reverse scan of empty store = %q", got)
	}

	put(t, be, "b", "2")
	s2 := snap(t, be)
	for _, k := range []string{"a", "b\x00", "ba", "c"} {
		wantValue(t, s2, k, nil)
	}
}

func testEmptyValue(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	var bt backend.Batch
	bt.Put(b("empty"), []byte{})
	bt.Put(b("nil"), nil)
	commit(t, be, &bt)

	s := snap(t, be)
	for _, k := range []string{"empty", "nil"} {
		v, err := s.Get(b(k))
		if err != nil || len(v) != 0 {
			t.Fatalf("Get(%q) = %q, %v; want empty value", k, v, err)
		}
	}
	got := scan(t, s, nil, nil, backend.ScanOptions{})
	if want := []kv{{"empty", ""}, {"nil", ""}}; !slices.Equal(got, want) {
		t.Fatalf("scan = %q; want %q", got, want)
	}

	// What Get returns must work as a condition on the same key; a nil
	// here would mean "absent" and the compare-and-swap could never pass.
	for _, k := range []string{"empty", "nil"} {
		v, err := s.Get(b(k))
		if err != nil {
			t.Fatal(err)
		}
		err = be.Commit(&backend.Batch{Conditions: []backend.Condition{{Key: b(k), Value: v}}})
		if err != nil {
			t.Fatalf("condition with Get(%q)'s own result: %v", k, err)
		}
	}

	// A non-nil empty condition value means "present and empty", not absent.
	err := be.Commit(&backend.Batch{
		Conditions: []backend.Condition{{Key: b("empty"), Value: []byte{}}},
		Ops:        []backend.Op{{Key: b("x"), Value: b("1")}},
	})
	if err != nil {
		t.Fatalf("condition empty==empty: %v", err)
	}
	err = be.Commit(&backend.Batch{
		Conditions: []backend.Condition{{Key: b("empty"), Value: nil}},
		Ops:        []backend.Op{{Key: b("y"), Value: b("1")}},
	})
	if !errors.Is(err, backend.ErrConditionFailed) {
		t.Fatalf("condition absent on present empty key: err = %v; want ErrConditionFailed", err)
	}
	err = be.Commit(&backend.Batch{
		Conditions: []backend.Condition{{Key: b("missing"), Value: []byte{}}},
		Ops:        []backend.Op{{Key: b("z"), Value: b("1")}},
	})
	if !errors.Is(err, backend.ErrConditionFailed) {
		t.Fatalf("condition empty on missing key: err = %v; want ErrConditionFailed", err)
	}
	latest(t, be, "x", b("1"))
	latest(t, be, "y", nil)
	latest(t, be, "z", nil)
}

func testLargeValues(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{1, 511, 4 << 10, 64 << 10, 512 << 10}
	vals := make(map[string][]byte)
	for _, n := range sizes {
		v := make([]byte, n)
		for i := range v {
			v[i] = byte(rng.UintN(256))
		}
		k := fmt.Sprintf("v%08d", n)
		vals[k] = v
		var bt backend.Batch
		bt.Put(b(k), v)
		commit(t, be, &bt)
	}
	s := snap(t, be)
	for k, v := range vals {
		wantValue(t, s, k, v)
	}
	got := scan(t, s, nil, nil, backend.ScanOptions{})
	if len(got) != len(vals) {
		t.Fatalf("scan returned %d keys; want %d", len(got), len(vals))
	}
	for _, p := range got {
		if p.v != string(vals[p.k]) {
			t.Fatalf("scan value for %q has %d bytes, differs from the %d written", p.k, len(p.v), len(vals[p.k]))
		}
	}
}

func testGetReturnsCopy(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	put(t, be, "k", "value")
	s := snap(t, be)
	v, err := s.Get(b("k"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range v {
		v[i] = 'X'
	}
	wantValue(t, s, "k", b("value"))
	latest(t, be, "k", b("value"))
}

func testCommitDoesNotRetainBuffers(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	key, val := b("key"), b("value")
	var bt backend.Batch
	bt.Put(key, val)
	commit(t, be, &bt)
	copy(key, "XXX")
	copy(val, "XXXXX")
	latest(t, be, "key", b("value"))
	latest(t, be, "XXX", nil)
}

// --- snapshots --------------------------------------------------------------

func testSnapshotIsolation(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	put(t, be, "keep", "k0", "over", "o0", "gone", "g0")
	before := snap(t, be)

	var bt backend.Batch
	bt.Put(b("over"), b("o1"))
	bt.Delete(b("gone"))
	bt.Put(b("new"), b("n1"))
	commit(t, be, &bt)

	wantValue(t, before, "keep", b("k0"))
	wantValue(t, before, "over", b("o0"))
	wantValue(t, before, "gone", b("g0"))
	wantValue(t, before, "new", nil)
	wantOld := []kv{{"gone", "g0"}, {"keep", "k0"}, {"over", "o0"}}
	if got := scan(t, before, nil, nil, backend.ScanOptions{}); !slices.Equal(got, wantOld) {
		t.Fatalf("old snapshot scan = %q; want %q", got, wantOld)
	}
	if got := scan(t, before, nil, nil, backend.ScanOptions{Reverse: true}); !slices.Equal(got, reversed(wantOld)) {
		t.Fatalf("old snapshot reverse scan = %q; want %q", got, reversed(wantOld))
	}

	after := snap(t, be)
	wantValue(t, after, "over", b("o1"))
	wantValue(t, after, "gone", nil)
	wantValue(t, after, "new", b("n1"))
	wantNew := []kv{{"keep", "k0"}, {"new", "n1"}, {"over", "o1"}}
	if got := scan(t, after, nil, nil, backend.ScanOptions{}); !slices.Equal(got, wantNew) {
		t.Fatalf("new snapshot scan = %q; want %q", got, wantNew)
	}

	// Later history does not leak into either view, and closing one view
	// does not disturb another.
	del(t, be, "keep", "over", "new")
	wantValue(t, before, "keep", b("k0"))
	wantValue(t, after, "new", b("n1"))
	before.Close()
	wantValue(t, after, "over", b("o1"))
}

func reversed[T any](s []T) []T {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

// --- scans ------------------------------------------------------------------

// scanKeys exercise byte-wise ordering at the edges: 0x00 sorts right after
// a prefix, 0xff after every other continuation.
var scanKeys = []string{
	"\x00", "\x00\x00", "\x00\xff",
	"a", "a\x00", "a\x00\x00", "a\x01", "ab", "a\xff", "a\xff\x00", "a\xff\xff",
	"b", "b\x00",
	"\xff", "\xff\x00", "\xff\xff", "\xff\xff\xff",
}

func loadScanKeys(t *testing.T, be backend.Backend) {
	t.Helper()
	var bt backend.Batch
	// Reverse insertion order so a backend that merely remembered write
	// order could not pass.
	for _, k := range reversed(scanKeys) {
		bt.Put(b(k), b("v:"+k))
	}
	commit(t, be, &bt)
}

func testScanExplicit(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	loadScanKeys(t, be)
	s := snap(t, be)

	cases := []struct {
		start, end []byte
		opts       backend.ScanOptions
		want       []string
	}{
		{nil, nil, backend.ScanOptions{}, scanKeys},
		{nil, nil, backend.ScanOptions{Reverse: true}, reversed(scanKeys)},
		{b("a"), b("b"), backend.ScanOptions{},
			[]string{"a", "a\x00", "a\x00\x00", "a\x01", "ab", "a\xff", "a\xff\x00", "a\xff\xff"}},
		// end is exclusive, start inclusive, both directions.
		{b("a\x00"), b("a\xff"), backend.ScanOptions{}, []string{"a\x00", "a\x00\x00", "a\x01", "ab"}},
		{b("a\x00"), b("a\xff"), backend.ScanOptions{Reverse: true}, []string{"ab", "a\x01", "a\x00\x00", "a\x00"}},
		// A reverse scan whose end is a present key must not return it,
		// nor any key extending it.
		{b("a"), b("a\x00"), backend.ScanOptions{Reverse: true}, []string{"a"}},
		{nil, b("a"), backend.ScanOptions{Reverse: true}, []string{"\x00\xff", "\x00\x00", "\x00"}},
		// Bounds that are not keys.
		{b("a\x02"), b("a\xfe"), backend.ScanOptions{}, []string{"ab"}},
		{b("a\x02"), b("a\xfe"), backend.ScanOptions{Reverse: true}, []string{"ab"}},
		{b("c"), b("d"), backend.ScanOptions{}, nil},
		{b("c"), b("d"), backend.ScanOptions{Reverse: true}, nil},
		// Unbounded end, including start in the 0xff region.
		{b("b"), nil, backend.ScanOptions{}, []string{"b", "b\x00", "\xff", "\xff\x00", "\xff\xff", "\xff\xff\xff"}},
		{b("\xff\xff"), nil, backend.ScanOptions{Reverse: true}, []string{"\xff\xff\xff", "\xff\xff"}},
		{b("\xff\xff\xff\xff"), nil, backend.ScanOptions{}, nil},
		// Limits.
		{b("a"), nil, backend.ScanOptions{Limit: 3}, []string{"a", "a\x00", "a\x00\x00"}},
		{nil, b("b"), backend.ScanOptions{Limit: 2, Reverse: true}, []string{"a\xff\xff", "a\xff\x00"}},
		{b("b"), b("b\x00\x00"), backend.ScanOptions{Limit: 100}, []string{"b", "b\x00"}},
		// Empty and inverted ranges.
		{b("b"), b("b"), backend.ScanOptions{}, nil},
		{b("b"), b("a"), backend.ScanOptions{}, nil},
		{b("b"), b("a"), backend.ScanOptions{Reverse: true}, nil},
		{b("a"), []byte{}, backend.ScanOptions{}, nil},
	}
	for _, c := range cases {
		got := keysOf(scan(t, s, c.start, c.end, c.opts))
		if !slices.Equal(got, c.want) {
			t.Errorf("Scan(%q, %q, %+v) = %q; want %q", c.start, c.end, c.opts, got, c.want)
		}
	}

	// Values belong to their keys.
	for _, p := range scan(t, s, nil, nil, backend.ScanOptions{Reverse: true}) {
		if p.v != "v:"+p.k {
			t.Fatalf("scan value for %q = %q", p.k, p.v)
		}
	}
}

// modelScan is the reference: filter the sorted key list.
func modelScan(sorted []string, start, end []byte, opts backend.ScanOptions) []string {
	var out []string
	for _, k := range sorted {
		if bytes.Compare(b(k), start) >= 0 && (end == nil || bytes.Compare(b(k), end) < 0) {
			out = append(out, k)
		}
	}
	if opts.Reverse {
		slices.Reverse(out)
	}
	if opts.Limit > 0 && len(out) > opts.Limit {
		out = out[:opts.Limit]
	}
	return out
}

func testScanMatchesModel(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	loadScanKeys(t, be)
	s := snap(t, be)

	// Every key, plus points between and around them, as both bounds.
	bounds := [][]byte{nil, {}}
	for _, k := range scanKeys {
		bounds = append(bounds, b(k), b(k+"\x00"), b(k+"\xff"))
		if p := backend.PrefixEnd(b(k)); p != nil {
			bounds = append(bounds, p)
		}
	}
	for _, start := range bounds {
		for _, end := range bounds {
			for _, limit := range []int{0, 1, 2, 5} {
				for _, rev := range []bool{false, true} {
					opts := backend.ScanOptions{Limit: limit, Reverse: rev}
					got := keysOf(scan(t, s, start, end, opts))
					want := modelScan(scanKeys, start, end, opts)
					if !slices.Equal(got, want) {
						t.Fatalf("Scan(%q, %q, %+v) = %q; want %q", start, end, opts, got, want)
					}
				}
			}
		}
	}
}

func testScanKeysOnly(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	loadScanKeys(t, be)
	s := snap(t, be)
	for _, rev := range []bool{false, true} {
		opts := backend.ScanOptions{KeysOnly: true, Reverse: rev}
		got := scan(t, s, b("a"), b("b\x00"), opts) // scan() rejects non-nil values
		want := modelScan(scanKeys, b("a"), b("b\x00"), opts)
		if !slices.Equal(keysOf(got), want) {
			t.Fatalf("KeysOnly scan (reverse=%v) = %q; want %q", rev, keysOf(got), want)
		}
	}
}

func testScanStop(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	loadScanKeys(t, be)
	s := snap(t, be)
	for _, rev := range []bool{false, true} {
		var seen []string
		err := s.Scan(nil, nil, backend.ScanOptions{Reverse: rev}, func(k, _ []byte) error {
			seen = append(seen, string(k))
			if len(seen) == 3 {
				return backend.ErrStop
			}
			return nil
		})
		if err != nil {
			t.Fatalf("Scan stopped with ErrStop returned %v; want nil", err)
		}
		want := modelScan(scanKeys, nil, nil, backend.ScanOptions{Reverse: rev, Limit: 3})
		if !slices.Equal(seen, want) {
			t.Fatalf("reverse=%v: callback saw %q; want %q", rev, seen, want)
		}
	}
	// A wrapped ErrStop also stops cleanly.
	calls := 0
	err := s.Scan(nil, nil, backend.ScanOptions{}, func(_, _ []byte) error {
		calls++
		return fmt.Errorf("done: %w", backend.ErrStop)
	})
	if err != nil || calls != 1 {
		t.Fatalf("wrapped ErrStop: err = %v, calls = %d; want nil, 1", err, calls)
	}
}

func testScanCallbackError(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	loadScanKeys(t, be)
	s := snap(t, be)
	boom := errors.New("boom")
	for _, keysOnly := range []bool{false, true} {
		calls := 0
		err := s.Scan(nil, nil, backend.ScanOptions{KeysOnly: keysOnly}, func(_, _ []byte) error {
			calls++
			if calls == 2 {
				return boom
			}
			return nil
		})
		if !errors.Is(err, boom) || calls != 2 {
			t.Fatalf("KeysOnly=%v: err = %v after %d calls; want boom after 2", keysOnly, err, calls)
		}
	}
	// The snapshot remains usable after an aborted scan.
	if got := scan(t, s, nil, nil, backend.ScanOptions{}); len(got) != len(scanKeys) {
		t.Fatalf("scan after aborted scan returned %d keys; want %d", len(got), len(scanKeys))
	}
}

// --- writes -----------------------------------------------------------------

func testConditions(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	put(t, be, "k", "v1")

	type cond = backend.Condition
	cases := []struct {
		name  string
		conds []cond
		ok    bool
	}{
		{"equal", []cond{{Key: b("k"), Value: b("v1")}}, true},
		{"different value", []cond{{Key: b("k"), Value: b("v2")}}, false},
		{"value prefix", []cond{{Key: b("k"), Value: b("v")}}, false},
		{"value extension", []cond{{Key: b("k"), Value: b("v1\x00")}}, false},
		{"absent on missing", []cond{{Key: b("missing"), Value: nil}}, true},
		{"absent on present", []cond{{Key: b("k"), Value: nil}}, false},
		{"value on missing", []cond{{Key: b("missing"), Value: b("v1")}}, false},
		{"all hold", []cond{{Key: b("k"), Value: b("v1")}, {Key: b("missing")}}, true},
		{"last fails", []cond{{Key: b("k"), Value: b("v1")}, {Key: b("k")}}, false},
		{"first fails", []cond{{Key: b("missing"), Value: b("x")}, {Key: b("k"), Value: b("v1")}}, false},
	}
	for i, c := range cases {
		target := fmt.Sprintf("out%02d", i)
		err := be.Commit(&backend.Batch{
			Conditions: c.conds,
			Ops: []backend.Op{
				{Key: b(target), Value: b("written")},
				{Key: b("k"), Value: b("v1")}, // rewrite in place: keeps later cases valid
				{Key: b("other" + target), Value: b("written")},
			},
		})
		switch {
		case c.ok && err != nil:
			t.Fatalf("%s: Commit = %v; want nil", c.name, err)
		case !c.ok && !errors.Is(err, backend.ErrConditionFailed):
			t.Fatalf("%s: Commit = %v; want ErrConditionFailed", c.name, err)
		}
		want := []byte(nil)
		if c.ok {
			want = b("written")
		}
		latest(t, be, target, want)
		latest(t, be, "other"+target, want)
	}

	// A failed condition leaves even deletes unapplied.
	err := be.Commit(&backend.Batch{
		Conditions: []backend.Condition{{Key: b("k"), Value: b("nope")}},
		Ops:        []backend.Op{{Key: b("k"), Delete: true}},
	})
	if !errors.Is(err, backend.ErrConditionFailed) {
		t.Fatalf("Commit = %v; want ErrConditionFailed", err)
	}
	latest(t, be, "k", b("v1"))

	// Compare-and-swap on the key being written, then create-if-absent.
	commit(t, be, &backend.Batch{
		Conditions: []backend.Condition{{Key: b("k"), Value: b("v1")}},
		Ops:        []backend.Op{{Key: b("k"), Value: b("v2")}},
	})
	latest(t, be, "k", b("v2"))
	err = be.Commit(&backend.Batch{
		Conditions: []backend.Condition{{Key: b("k"), Value: b("v1")}},
		Ops:        []backend.Op{{Key: b("k"), Value: b("v3")}},
	})
	if !errors.Is(err, backend.ErrConditionFailed) {
		t.Fatalf("stale CAS: Commit = %v; want ErrConditionFailed", err)
	}
	latest(t, be, "k", b("v2"))
	create := &backend.Batch{
		Conditions: []backend.Condition{{Key: b("fresh")}},
		Ops:        []backend.Op{{Key: b("fresh"), Value: b("1")}},
	}
	commit(t, be, create)
	if err := be.Commit(create); !errors.Is(err, backend.ErrConditionFailed) {
		t.Fatalf("second create: Commit = %v; want ErrConditionFailed", err)
	}
	// A deleted key counts as absent.
	del(t, be, "fresh")
	commit(t, be, create)
	latest(t, be, "fresh", b("1"))

	// Conditions alone (no ops) are evaluated too.
	if err := be.Commit(&backend.Batch{Conditions: []backend.Condition{{Key: b("fresh")}}}); !errors.Is(err, backend.ErrConditionFailed) {
		t.Fatalf("ops-less failing condition: Commit = %v; want ErrConditionFailed", err)
	}
	if err := be.Commit(&backend.Batch{Conditions: []backend.Condition{{Key: b("fresh"), Value: b("1")}}}); err != nil {
		t.Fatalf("ops-less holding condition: Commit = %v", err)
	}
}

func testBatchOrderAndAtomicity(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	put(t, be, "pd", "old", "dp", "old")
	before := snap(t, be)

	var bt backend.Batch
	bt.Put(b("pp"), b("first"))
	bt.Put(b("pp"), b("second")) // later op wins
	bt.Put(b("pd"), b("new"))
	bt.Delete(b("pd")) // put then delete: gone
	bt.Delete(b("dp"))
	bt.Put(b("dp"), b("new")) // delete then put: present
	for i := range 100 {
		bt.Put(b(fmt.Sprintf("many/%03d", i)), b(fmt.Sprint(i)))
	}
	if bt.Len() != 106 || bt.Bytes() <= 0 {
		t.Fatalf("Batch Len = %d, Bytes = %d", bt.Len(), bt.Bytes())
	}
	commit(t, be, &bt)

	wantValue(t, before, "pd", b("old"))
	wantValue(t, before, "pp", nil)
	if got := scan(t, before, b("many/"), backend.PrefixEnd(b("many/")), backend.ScanOptions{}); len(got) != 0 {
		t.Fatalf("snapshot before batch sees %d of its keys", len(got))
	}

	after := snap(t, be)
	wantValue(t, after, "pp", b("second"))
	wantValue(t, after, "pd", nil)
	wantValue(t, after, "dp", b("new"))
	if got := scan(t, after, b("many/"), backend.PrefixEnd(b("many/")), backend.ScanOptions{}); len(got) != 100 {
		t.Fatalf("snapshot after batch sees %d of its 100 keys", len(got))
	}

	// An empty batch is a no-op.
	commit(t, be, &backend.Batch{})
}

// testRandomOpsMatchModel drives random batches over a small, edge-heavy
// key space and compares every read with a map.
func testRandomOpsMatchModel(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	rng := rand.New(rand.NewPCG(7, 11))
	alphabet := []byte{0x00, 0x01, 'a', 0xfe, 0xff}
	randKey := func() []byte {
		k := make([]byte, 1+rng.IntN(3))
		for i := range k {
			k[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return k
	}
	model := map[string]string{}
	for round := range 60 {
		var bt backend.Batch
		next := maps.Clone(model)
		for range 1 + rng.IntN(6) {
			k := randKey()
			if rng.IntN(3) == 0 {
				bt.Delete(k)
				delete(next, string(k))
			} else {
				v := fmt.Sprintf("r%d/%d", round, rng.IntN(1000))
				bt.Put(k, b(v))
				next[string(k)] = v
			}
		}
		// Sometimes guard the batch with a condition that may not hold.
		if rng.IntN(4) == 0 {
			k := randKey()
			var want []byte
			if rng.IntN(2) == 0 {
				if v, ok := model[string(k)]; ok {
					want = b(v)
				}
			} else {
				want = b("unlikely")
			}
			bt.Conditions = append(bt.Conditions, backend.Condition{Key: k, Value: want})
			cur, present := model[string(k)]
			holds := (want == nil && !present) || (want != nil && present && cur == string(want))
			err := be.Commit(&bt)
			switch {
			case holds && err != nil:
				t.Fatalf("round %d: Commit = %v; condition should hold", round, err)
			case !holds && !errors.Is(err, backend.ErrConditionFailed):
				t.Fatalf("round %d: Commit = %v; want ErrConditionFailed", round, err)
			}
			if holds {
				model = next
			}
		} else {
			commit(t, be, &bt)
			model = next
		}

		s := snap(t, be)
		sorted := make([]string, 0, len(model))
		for k := range model {
			sorted = append(sorted, k)
		}
		slices.Sort(sorted)
		got := scan(t, s, nil, nil, backend.ScanOptions{})
		if !slices.Equal(keysOf(got), sorted) {
			t.Fatalf("round %d: keys = %q; want %q", round, keysOf(got), sorted)
		}
		for _, p := range got {
			if p.v != model[p.k] {
				t.Fatalf("round %d: %q = %q; want %q", round, p.k, p.v, model[p.k])
			}
		}
		for range 5 {
			start, end := randKey(), randKey()
			opts := backend.ScanOptions{Reverse: rng.IntN(2) == 0, Limit: rng.IntN(4)}
			if g, w := keysOf(scan(t, s, start, end, opts)), modelScan(sorted, start, end, opts); !slices.Equal(g, w) {
				t.Fatalf("round %d: Scan(%q, %q, %+v) = %q; want %q", round, start, end, opts, g, w)
			}
			k := randKey()
			if v, ok := model[string(k)]; ok {
				wantValue(t, s, string(k), b(v))
			} else {
				wantValue(t, s, string(k), nil)
			}
		}
		s.Close()
	}
}

// testConcurrentBatchesAtomic checks that no snapshot ever sees half a
// batch while writers commit concurrently.
func testConcurrentBatchesAtomic(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	const writers, batches = 4, 20
	var writersWG, readersWG sync.WaitGroup
	done := make(chan struct{})
	for w := range writers {
		writersWG.Go(func() {
			for i := range batches {
				var bt backend.Batch
				bt.Put(b(fmt.Sprintf("a/%d/%03d", w, i)), b("x"))
				bt.Put(b(fmt.Sprintf("b/%d/%03d", w, i)), b("x"))
				if err := be.Commit(&bt); err != nil {
					t.Errorf("writer %d: Commit: %v", w, err)
					return
				}
			}
		})
	}
	count := func(s backend.Snapshot, p string) (int, error) {
		n := 0
		err := s.Scan(b(p), backend.PrefixEnd(b(p)), backend.ScanOptions{KeysOnly: true}, func(_, _ []byte) error {
			n++
			return nil
		})
		return n, err
	}
	for range 2 {
		readersWG.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				s, err := be.Snapshot()
				if err != nil {
					t.Errorf("reader: Snapshot: %v", err)
					return
				}
				na, errA := count(s, "a/")
				nb, errB := count(s, "b/")
				s.Close()
				if err := errors.Join(errA, errB); err != nil {
					t.Errorf("reader: Scan: %v", err)
					return
				}
				if na != nb {
					t.Errorf("snapshot saw %d a/ keys but %d b/ keys", na, nb)
					return
				}
			}
		})
	}
	writersWG.Wait()
	close(done)
	readersWG.Wait()
	if t.Failed() {
		return
	}
	s := snap(t, be)
	if got := scan(t, s, b("a/"), b("c"), backend.ScanOptions{KeysOnly: true}); len(got) != 2*writers*batches {
		t.Fatalf("final key count %d; want %d", len(got), 2*writers*batches)
	}
}

// testConcurrentConditionalIncrement checks that conditions are evaluated
// atomically with the write: optimistic increments racing on one key must
// lose no update.
func testConcurrentConditionalIncrement(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	const workers, each = 4, 15
	key := b("counter")
	read := func() ([]byte, int, error) {
		s, err := be.Snapshot()
		if err != nil {
			return nil, 0, err
		}
		defer s.Close()
		cur, err := s.Get(key)
		if errors.Is(err, backend.ErrNotFound) {
			return nil, 0, nil
		}
		if err != nil {
			return nil, 0, err
		}
		var n int
		if _, err := fmt.Sscan(string(cur), &n); err != nil {
			return nil, 0, fmt.Errorf("counter %q: %v", cur, err)
		}
		return cur, n, nil
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for done := 0; done < each; {
				cur, n, err := read()
				if err != nil {
					t.Errorf("read: %v", err)
					return
				}
				err = be.Commit(&backend.Batch{
					Conditions: []backend.Condition{{Key: key, Value: cur}},
					Ops:        []backend.Op{{Key: key, Value: b(fmt.Sprint(n + 1))}},
				})
				switch {
				case err == nil:
					done++
				case errors.Is(err, backend.ErrConditionFailed):
					// Lost the race; retry from a fresh read.
				default:
					t.Errorf("Commit: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	latest(t, be, "counter", b(fmt.Sprint(workers*each)))
}

// --- PrefixEnd --------------------------------------------------------------

func testPrefixEnd(t *testing.T, _ func(*testing.T) backend.Backend) {
	cases := []struct {
		in   string
		want []byte // nil: no upper bound
	}{
		{"", nil},
		{"a", b("b")},
		{"abc", b("abd")},
		{"a\x00", b("a\x01")},
		{"a\xfe", b("a\xff")},
		{"a\xff", b("b")},
		{"a\xff\xff", b("b")},
		{"ab\xff", b("ac")},
		{"\x00", b("\x01")},
		{"\xff", nil},
		{"\xff\xff", nil},
	}
	for _, c := range cases {
		in := b(c.in)
		got := backend.PrefixEnd(in)
		if (got == nil) != (c.want == nil) || !bytes.Equal(got, c.want) {
			t.Errorf("PrefixEnd(%q) = %q; want %q", c.in, got, c.want)
		}
		if string(in) != c.in {
			t.Errorf("PrefixEnd modified its input %q to %q", c.in, in)
		}
		if got != nil && len(in) > 0 {
			got[0] ^= 0xff
			if string(in) != c.in {
				t.Errorf("PrefixEnd(%q) result aliases its input", c.in)
			}
		}
	}
}

func testPrefixScan(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	loadScanKeys(t, be)
	s := snap(t, be)
	for _, p := range []string{"", "\x00", "a", "a\x00", "a\xff", "b", "\xff", "\xff\xff", "z"} {
		var want []string
		for _, k := range scanKeys {
			if bytes.HasPrefix(b(k), b(p)) {
				want = append(want, k)
			}
		}
		for _, rev := range []bool{false, true} {
			got := keysOf(scan(t, s, b(p), backend.PrefixEnd(b(p)), backend.ScanOptions{Reverse: rev}))
			w := want
			if rev {
				w = reversed(want)
			}
			if !slices.Equal(got, w) {
				t.Errorf("prefix %q reverse=%v: %q; want %q", p, rev, got, w)
			}
		}
	}
}

// --- lifecycle --------------------------------------------------------------

func testSize(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	if n := be.Size(); n < 0 {
		t.Fatalf("Size of empty store = %d", n)
	}
	var bt backend.Batch
	for i := range 100 {
		bt.Put(b(fmt.Sprintf("k%03d", i)), bytes.Repeat(b("x"), 1000))
	}
	commit(t, be, &bt)
	if n := be.Size(); n < 0 {
		t.Fatalf("Size = %d", n)
	}
}

func testClosed(t *testing.T, open func(*testing.T) backend.Backend) {
	be := open(t)
	put(t, be, "k", "v")
	s, err := be.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := be.Snapshot(); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("Snapshot after Close: %v; want ErrClosed", err)
	}
	var bt backend.Batch
	bt.Put(b("k"), b("v2"))
	if err := be.Commit(&bt); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("Commit after Close: %v; want ErrClosed", err)
	}
	if _, err := s.Get(b("k")); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("Get on snapshot after Close: %v; want ErrClosed", err)
	}
	err = s.Scan(nil, nil, backend.ScanOptions{}, func(_, _ []byte) error { return nil })
	if !errors.Is(err, backend.ErrClosed) {
		t.Errorf("Scan on snapshot after Close: %v; want ErrClosed", err)
	}
	s.Close() // must not panic or block
	s.Close()
	if err := be.Close(); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("second Close: %v; want ErrClosed", err)
	}
	_ = be.Size() // must not panic
}
