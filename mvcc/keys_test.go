package mvcc

import (
	"bytes"
	"math/rand"
	"sort"
	"testing"
)

func randKey(r *rand.Rand) []byte {
	alphabet := []byte{0x00, 0x01, 'a', 'b', 0xfe, 0xff}
	k := make([]byte, r.Intn(5))
	for i := range k {
		k[i] = alphabet[r.Intn(len(alphabet))]
	}
	return k
}

// History keys must sort by (user key, revision) for every pair of keys,
// including keys that are prefixes of each other and contain 0x00 or 0xff.
func TestHistoryKeyOrder(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	type entry struct {
		key []byte
		rev int64
	}
	var es []entry
	for i := 0; i < 3000; i++ {
		es = append(es, entry{randKey(r), r.Int63n(1000)})
	}
	sort.Slice(es, func(i, j int) bool {
		if c := bytes.Compare(es[i].key, es[j].key); c != 0 {
			return c < 0
		}
		return es[i].rev < es[j].rev
	})
	for i := 1; i < len(es); i++ {
		a, b := HistoryKey(es[i-1].key, es[i-1].rev), HistoryKey(es[i].key, es[i].rev)
		if bytes.Compare(a, b) > 0 {
			t.Fatalf("order broken: (%q,%d) encodes above (%q,%d)", es[i-1].key, es[i-1].rev, es[i].key, es[i].rev)
		}
		k, rev, ok := SplitHistoryKey(b)
		if !ok || !bytes.Equal(k, es[i].key) || rev != es[i].rev {
			t.Fatalf("round trip of (%q,%d) gave (%q,%d,%v)", es[i].key, es[i].rev, k, rev, ok)
		}
	}
}

// Every history key of a user key in [start, end) lies inside HistoryRange,
// and none outside it does.
func TestHistoryRangeBounds(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for i := 0; i < 5000; i++ {
		start, end, key := randKey(r), randKey(r), randKey(r)
		switch r.Intn(3) {
		case 0:
			end = nil
		case 1:
			end = []byte{0}
		}
		if len(start) == 0 {
			start = []byte{'a'}
		}
		lo, hi := HistoryRange(start, end)
		hk := HistoryKey(key, r.Int63n(1<<40))
		inside := bytes.Compare(hk, lo) >= 0 && bytes.Compare(hk, hi) < 0
		if want := InRange(key, start, end); inside != want {
			t.Fatalf("key %q range [%q,%q): inside=%v want %v", key, start, end, inside, want)
		}
	}
}

func BenchmarkHistoryKey(b *testing.B) {
	key := []byte("/registry/pods/default/nginx-deployment-66b6c48dd5-abcde")
	for i := 0; i < b.N; i++ {
		_ = HistoryKey(key, int64(i))
	}
}

func TestAppendHistoryKey(t *testing.T) {
	for _, key := range []string{"", "a", "/registry/pods/ns/p", "\x00", "a\x00b\x00", "\x00\x00\xff"} {
		for _, rev := range []int64{0, 1, 1 << 40} {
			want := HistoryKey([]byte(key), rev)
			if got := AppendHistoryKey([]byte("pre"), key, rev); string(got) != "pre"+string(want) {
				t.Errorf("AppendHistoryKey(%q, %d) = %x, want %x after the prefix", key, rev, got, want)
			}
		}
	}
}
