package mvcc

import (
	"fmt"
	"testing"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/proto/axonpb"
)

// countingBackend counts commits.
type countingBackend struct {
	backend.Backend
	commits int
}

func (c *countingBackend) Commit(b *backend.Batch) error {
	c.commits++
	return c.Backend.Commit(b)
}

// persistSubs writes the subs in a few batches, and a state that changed
// since the snapshot (a condition failing) costs only that state its sub:
// the batch is retried entry by entry and never writes the changed state.
func TestPersistSubsBatches(t *testing.T) {
	db, err := badger.Open(badger.Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const n = 600 // changes in revision 2, so several batches
	tx := NewWriteTxn(db, WriteOptions{})
	for i := range n {
		kv := &axonpb.KeyValue{Value: []byte("v"), CreateRevision: 2, ModRevision: 2, Version: 1}
		if err := tx.Put([]byte(fmt.Sprintf("k%04d", i)), kv); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(2, true); err != nil {
		t.Fatal(err)
	}
	snap, err := db.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	// Changed after the snapshot: its rewrite must not happen.
	changed := HistoryKey([]byte("k0300"), 2)
	var b backend.Batch
	b.Put(changed, []byte("changed"))
	if err := db.Commit(&b); err != nil {
		t.Fatal(err)
	}
	cb := &countingBackend{Backend: db}
	if err := persistSubs(cb, snap, 3); err != nil {
		t.Fatal(err)
	}
	// 599 rewrites: 3 batches of 256, one of them (with the changed state)
	// refused and retried one by one.
	if want := 3 + 256; cb.commits != want {
		t.Errorf("%d commits, want %d", cb.commits, want)
	}
	after, err := db.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	for i := range n {
		hk := HistoryKey([]byte(fmt.Sprintf("k%04d", i)), 2)
		v, err := after.Get(hk)
		if err != nil {
			t.Fatal(err)
		}
		if i == 300 {
			if string(v) != "changed" {
				t.Errorf("the changed state was rewritten: %q", v)
			}
			continue
		}
		st, err := decodeMeta(v)
		if err != nil {
			t.Fatal(err)
		}
		// k0000 is change 0 of its revision: sub 0, nothing written.
		if want := i > 0; st.HasSub != want || st.Sub != int64(i) && want {
			t.Errorf("k%04d: sub %d (set %v), want %d (set %v)", i, st.Sub, st.HasSub, i, want)
		}
	}
}
