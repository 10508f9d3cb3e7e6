package revision

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/mvcc"
)

type recorder struct {
	mu   sync.Mutex
	revs []int64
}

func (r *recorder) Publish(rev int64, _ []*mvccpb.Event) {
	r.mu.Lock()
	r.revs = append(r.revs, rev)
	r.mu.Unlock()
}
func (r *recorder) Compacted(int64) {}

func openSeq(t testing.TB, dir string) (*Sequencer, backend.Backend, *recorder) {
	opts := badger.Options{InMemory: dir == "", Dir: dir}
	be, err := badger.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mvcc.Recover(be, nil); err != nil {
		t.Fatal(err)
	}
	idx, err := mvcc.LoadIndex(be)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(be, idx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	s.SetPublisher(rec)
	s.Start()
	return s, be, rec
}

// Concurrent writers get unique, gap-free revisions, published in order,
// and grouped commits (fewer commits than writes) happen under load.
func TestSequencerGapFreeUnderConcurrency(t *testing.T) {
	s, be, rec := openSeq(t, t.TempDir())
	defer be.Close()
	groups := 0
	s.OnGroup = func(GroupStats) { groups++ }
	const writers, each = 16, 100
	var mu sync.Mutex
	var got []int64
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				r, err := s.Put(context.Background(), &pb.PutRequest{Key: []byte(fmt.Sprintf("k%d-%d", w, i)), Value: []byte("v")})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got = append(got, r.Header.Revision)
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	s.Close()
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	for i, r := range got {
		if want := int64(i + 2); r != want {
			t.Fatalf("revision #%d = %d, want %d (gap or duplicate)", i, r, want)
		}
	}
	for i, r := range rec.revs {
		if want := int64(i + 2); r != want {
			t.Fatalf("published #%d = %d, want %d", i, r, want)
		}
	}
	if groups >= writers*each {
		t.Errorf("%d commits for %d writes: no grouping happened", groups, writers*each)
	}
	t.Logf("%d writes in %d commits", writers*each, groups)
}

// BenchmarkSequencerPut measures grouped, synced puts from parallel callers.
func BenchmarkSequencerPut(b *testing.B) {
	s, be, _ := openSeq(b, b.TempDir())
	defer be.Close()
	defer s.Close()
	val := make([]byte, 512)
	var n int64
	var mu sync.Mutex
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb_ *testing.PB) {
		for pb_.Next() {
			mu.Lock()
			n++
			k := fmt.Sprintf("/registry/pods/default/pod-%d", n)
			mu.Unlock()
			if _, err := s.Put(context.Background(), &pb.PutRequest{Key: []byte(k), Value: val}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
