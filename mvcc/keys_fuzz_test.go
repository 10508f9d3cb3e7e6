package mvcc

import (
	"bytes"
	"cmp"
	"testing"
)

// FuzzHistoryKey checks the history key encoding on arbitrary keys and
// revisions: it round-trips, sorts by (user key, revision), and the range
// bounds contain exactly the history keys of the user keys in the range.
// Seeds: testdata/fuzz/FuzzHistoryKey.
//
//	go test -run XXX -fuzz FuzzHistoryKey -fuzztime 30s ./mvcc
func FuzzHistoryKey(f *testing.F) {
	f.Add([]byte("/registry/pods/a"), int64(5), []byte("/registry/pods/b"), int64(3))
	f.Add([]byte("a\x00"), int64(1), []byte("a"), int64(2))
	f.Add([]byte("a\x00\xff"), int64(0), []byte("a\x00\x00"), int64(1<<40))
	f.Add([]byte{}, int64(1), []byte("\x00"), int64(1))
	f.Add([]byte("\xff\xff"), int64(1<<62), []byte("\xff"), int64(1<<62))
	f.Fuzz(func(t *testing.T, key []byte, rev int64, other []byte, rev2 int64) {
		hk := HistoryKey(key, rev)
		k, r, ok := SplitHistoryKey(hk)
		if !ok || !bytes.Equal(k, key) || r != rev {
			t.Fatalf("SplitHistoryKey(HistoryKey(%q, %d)) = %q, %d, %v", key, rev, k, r, ok)
		}
		if !bytes.HasPrefix(hk, HistoryPrefix(key)) || !bytes.Equal(userKeyOfHistoryPrefix(HistoryPrefix(key)), key) {
			t.Fatalf("history prefix of %q", key)
		}
		// Arbitrary bytes never make the decoder panic.
		SplitHistoryKey(other)
		// The other fixed-width encodings round-trip.
		if RevisionFromKey(RevisionChunkKey(rev, uint32(len(key)))) != rev || DecodeRev(EncodeRev(rev)) != rev {
			t.Fatalf("revision %d round trip", rev)
		}

		// Order: by user key, then revision (revisions are non-negative).
		if rev >= 0 && rev2 >= 0 {
			want := cmp.Or(bytes.Compare(key, other), cmp.Compare(rev, rev2))
			if got := bytes.Compare(hk, HistoryKey(other, rev2)); got != want {
				t.Fatalf("compare (%q,%d) with (%q,%d): encoded %d, want %d", key, rev, other, rev2, got, want)
			}
		}

		// Containment below holds for the revisions Axon writes (>= 0);
		// a negative one encodes above every bound.
		if rev < 0 {
			return
		}
		in := func(b, lo, hi []byte) bool { return bytes.Compare(b, lo) >= 0 && bytes.Compare(b, hi) < 0 }
		// A single-key range holds exactly that key's history.
		lo, hi := HistoryRange(other, nil)
		if in(hk, lo, hi) != bytes.Equal(key, other) {
			t.Fatalf("single-key history range of %q and key %q", other, key)
		}
		// [start, end) ranges split from other, and from-key ranges.
		start, end := other[:len(other)/2], other[len(other)/2:]
		if len(end) > 0 && !(len(end) == 1 && end[0] == 0) {
			want := bytes.Compare(key, start) >= 0 && bytes.Compare(key, end) < 0
			lo, hi := HistoryRange(start, end)
			if in(hk, lo, hi) != want {
				t.Fatalf("history range [%q, %q) and key %q: in=%v, want %v", start, end, key, !want, want)
			}
		}
		want := bytes.Compare(key, start) >= 0
		lo, hi = HistoryRange(start, []byte{0})
		if in(hk, lo, hi) != want {
			t.Fatalf("from-key history range %q and key %q", start, key)
		}
	})
}
