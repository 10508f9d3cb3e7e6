package mvcc

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/proto/axonpb"
)

// The errors clients match on by text. They are the gRPC errors etcd sends,
// so they pass through every layer unchanged.
var (
	ErrCompacted = rpctypes.ErrGRPCCompacted
	ErrFutureRev = rpctypes.ErrGRPCFutureRev
)

// Source is a view of the key space for ExecRange: the index part answers
// which keys exist at a revision and their revisions, Load fetches a whole
// state by a point read.
type Source interface {
	// Entries returns the first max entries (all when max < 0) of the keys
	// in [start, end) alive at rev, in key order, and how many there are.
	Entries(start, end []byte, rev int64, max int) ([]Entry, int64, error)
	// Load returns the state e names, value and lease included.
	Load(e Entry) (*axonpb.KeyValue, error)
	// LoadMany calls fn with the state of each of es, which come in key
	// order, in that order.
	LoadMany(es []Entry, fn func(i int, kv *axonpb.KeyValue) error) error
}

// Reader reads committed state from one backend snapshot.
type Reader struct {
	Snap backend.Snapshot
}

// Meta returns the current and compacted revisions of the snapshot.
func (r Reader) Meta() (current, compacted int64, err error) {
	b, err := r.get(MetaRevision)
	if err != nil {
		return 0, 0, err
	}
	c, err := r.get(MetaCompacted)
	if err != nil {
		return 0, 0, err
	}
	cur := DecodeRev(b)
	if cur == 0 {
		cur = 1 // a new etcd store starts at revision 1; the first write gets 2
	}
	return cur, DecodeRev(c), nil
}

// LeaderTerm returns the leader term the snapshot holds (0 if none): every
// write group is fenced on it, so while it is unchanged no other leader has
// committed anything.
func (r Reader) LeaderTerm() (int64, error) {
	b, err := r.get(MetaLeaderTerm)
	return DecodeRev(b), err
}

func (r Reader) get(k []byte) ([]byte, error) {
	b, err := r.Snap.Get(k)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, nil
	}
	return b, err
}

// At returns key's stored state at exactly main revision rev.
func (r Reader) At(key []byte, rev int64) (*axonpb.KeyValue, error) {
	b, err := r.stored(key, rev)
	if err != nil {
		return nil, err
	}
	return DecodeKV(b)
}

// stored returns the encoded state of key at exactly main revision rev, as
// the snapshot's Get returns it.
func (r Reader) stored(key []byte, rev int64) ([]byte, error) {
	b, err := r.Snap.Get(HistoryKey(key, rev))
	if errors.Is(err, backend.ErrNotFound) {
		return nil, fmt.Errorf("mvcc: state of %q at revision %d is missing from the store: %w", key, rev, err)
	}
	return b, err
}

// IndexSource reads through the index, loading values from a snapshot
// taken after the index reached the revisions it reads.
type IndexSource struct {
	Idx  *Index
	Snap backend.Snapshot
}

// Entries implements Source.
func (s IndexSource) Entries(start, end []byte, rev int64, max int) ([]Entry, int64, error) {
	es, n := s.Idx.Range(start, end, rev, max)
	return es, n, nil
}

// Load implements Source.
func (s IndexSource) Load(e Entry) (*axonpb.KeyValue, error) {
	if e.loaded != nil {
		return e.loaded, nil
	}
	return Reader{Snap: s.Snap}.At([]byte(e.Key), e.Mod)
}

// yieldEvery is how many values a big read loads between giving way to
// other goroutines. Go preempts a running goroutine only after 10 ms, so
// on two cores a LIST of 100,000 objects kept the requests of writers
// waiting for a core for up to that long at every turn; yielding every few
// hundred values (well under a millisecond) lets them in, and costs a LIST
// nothing when nobody waits.
const yieldEvery = 64

// scanLoadMin is how many entries make LoadMany read the history range
// with one iterator instead of a point read each: a point read searches
// every memtable and level, an iterator only steps.
const scanLoadMin = 16

// LoadMany implements Source.
func (s IndexSource) LoadMany(es []Entry, fn func(i int, kv *axonpb.KeyValue) error) error {
	return scanMany(s.Snap, es, DecodeKV, func(kv *axonpb.KeyValue) *axonpb.KeyValue { return kv }, fn)
}

// ValueView is a stored state's value and lease as the store holds them:
// Value is valid only during the call it is passed to.
type ValueView struct {
	Value []byte
	Lease int64
}

// LoadManyView is LoadMany without copying values: fn gets each value in
// the store's own memory, valid only during the call, so a caller that
// encodes values straight into an outgoing message copies each once.
func (s IndexSource) LoadManyView(es []Entry, fn func(i int, v ValueView) error) error {
	return scanMany(s.Snap, es, func(stored []byte) (ValueView, error) {
		var v []byte
		m, err := decodeState(stored, &v)
		return ValueView{Value: v, Lease: m.Lease}, err
	}, func(kv *axonpb.KeyValue) ValueView { return ValueView{Value: kv.Value, Lease: kv.Lease} }, fn)
}

// scanMany hands fn the state of each of es, in order: decoded by decode
// from the store's bytes (which stay valid only during fn), or converted by
// loaded for an entry whose state is already known. Few entries are point
// reads; more are one scan over the history of the first to the last key,
// stepping over the states not wanted.
func scanMany[T any](snap backend.Snapshot, es []Entry, decode func(stored []byte) (T, error), loaded func(*axonpb.KeyValue) T, fn func(i int, st T) error) error {
	var stored []int // entries to read from the store
	for i, e := range es {
		if e.loaded == nil {
			stored = append(stored, i)
		}
	}
	if len(stored) < scanLoadMin {
		r := Reader{Snap: snap}
		for i, e := range es {
			var st T
			if e.loaded != nil {
				st = loaded(e.loaded)
			} else {
				b, err := r.stored([]byte(e.Key), e.Mod)
				if err == nil {
					st, err = decode(b)
				}
				if err != nil {
					return err
				}
			}
			if err := fn(i, st); err != nil {
				return err
			}
		}
		return nil
	}
	// One scan over the history of the first to the last key: the states
	// wanted come in the same order as es, the others are stepped over.
	first, last := es[stored[0]], es[stored[len(stored)-1]]
	lo := HistoryKey([]byte(first.Key), first.Mod)
	hi := HistoryKey([]byte(last.Key), last.Mod+1)
	next := 0 // index into es of the next entry to hand out
	want := AppendHistoryKey(nil, first.Key, first.Mod)
	emitLoaded := func(upto int) error {
		for ; next < upto; next++ {
			if es[next].loaded == nil {
				return fmt.Errorf("mvcc: state of %q at revision %d is missing from the store", es[next].Key, es[next].Mod)
			}
			if err := fn(next, loaded(es[next].loaded)); err != nil {
				return err
			}
		}
		return nil
	}
	j := 0 // index into stored of the entry whose key is want
	err := snap.Scan(lo, hi, backend.ScanOptions{}, func(k, v []byte) error {
		if !bytes.Equal(k, want) {
			return nil
		}
		i := stored[j]
		if err := emitLoaded(i); err != nil {
			return err
		}
		st, err := decode(v)
		if err != nil {
			return fmt.Errorf("mvcc: history entry %x: %w", k, err)
		}
		if err := fn(i, st); err != nil {
			return err
		}
		next, j = i+1, j+1
		if j == len(stored) {
			return backend.ErrStop
		}
		e := es[stored[j]]
		want = AppendHistoryKey(want[:0], e.Key, e.Mod)
		if j%yieldEvery == 0 {
			// A big read gives the writer's requests a turn on the
			// CPU (see yieldEvery).
			runtime.Gosched()
		}
		return nil
	})
	if err != nil {
		return err
	}
	if j < len(stored) {
		e := es[stored[j]]
		return fmt.Errorf("mvcc: state of %q at revision %d is missing from the store", e.Key, e.Mod)
	}
	return emitLoaded(len(es))
}

// KeyValue is the API form of e without value and lease (what a
// keys_only answer carries); the key is copied.
func (e Entry) KeyValue() *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(e.Key), CreateRevision: e.Create, ModRevision: e.Mod, Version: e.Version}
}

// Loaded is an entry whose whole state is already known (a pending write).
func Loaded(key string, kv *axonpb.KeyValue) Entry {
	return Entry{Key: key, Mod: kv.ModRevision, Create: kv.CreateRevision, Version: kv.Version, loaded: kv}
}

// ExecRange answers a RangeRequest the way etcd does: count is the number
// of keys in the range at the revision (before min/max filters), more is set
// when limit cut the result, and the header revision is current.
func ExecRange(src Source, r *pb.RangeRequest, current, compacted int64) (*pb.RangeResponse, error) {
	rev, err := ReadRevision(r.Revision, current, compacted)
	if err != nil {
		return nil, err
	}
	filtered := HasRevisionFilters(r)
	// etcd applies the limit before sorting when the order is NONE, even
	// with a non-key sort target: it then sorts only the first limit+1 keys.
	defaultOrder := r.SortOrder == pb.RangeRequest_NONE ||
		(r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND)
	sortOrder := r.SortOrder
	if r.SortTarget != pb.RangeRequest_KEY && sortOrder == pb.RangeRequest_NONE {
		sortOrder = pb.RangeRequest_ASCEND
	} else if r.SortTarget == pb.RangeRequest_KEY && sortOrder == pb.RangeRequest_ASCEND {
		sortOrder = pb.RangeRequest_NONE // the index already yields ascending key order
	}
	// How many entries are needed: all when sorting or filtering, else one
	// past the limit so `more` is known; the rest are only counted.
	want := -1
	if r.CountOnly {
		want = 0
	} else if r.Limit > 0 && defaultOrder && !filtered {
		want = int(r.Limit) + 1
	}
	entries, count, err := src.Entries(r.Key, r.RangeEnd, rev, want)
	if err != nil {
		return nil, err
	}
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: current}, Count: count}
	if r.CountOnly {
		return resp, nil
	}
	if filtered {
		entries = pruneEntries(entries, r)
	}
	// Values are read only for the entries answered, after the cut, unless
	// the order depends on them. keys_only answers come from the index
	// alone, which does not know leases, as etcd's.
	needValue := !r.KeysOnly || r.SortTarget == pb.RangeRequest_VALUE
	kvs := make([]*mvccpb.KeyValue, len(entries))
	for i, e := range entries {
		kvs[i] = e.KeyValue()
	}
	loadAll := func() error {
		return src.LoadMany(entries, func(i int, st *axonpb.KeyValue) error {
			kvs[i].Value, kvs[i].Lease = st.Value, st.Lease
			return nil
		})
	}
	cut := func() {
		if r.Limit > 0 && int64(len(kvs)) > r.Limit {
			kvs = kvs[:r.Limit]
			resp.More = true
		}
	}
	if sortOrder != pb.RangeRequest_NONE && r.SortTarget == pb.RangeRequest_VALUE {
		if err := loadAll(); err != nil {
			return nil, err
		}
		sortKVs(kvs, r.SortTarget, sortOrder)
		cut()
		if r.KeysOnly {
			for _, kv := range kvs {
				kv.Value = nil
			}
		}
		resp.Kvs = kvs
		return resp, nil
	}
	if sortOrder != pb.RangeRequest_NONE {
		// Sort positions, so entries follow their key-values.
		pos := make([]int, len(kvs))
		for i := range pos {
			pos[i] = i
		}
		byKV := func(i, j int) bool { return less(kvs[pos[i]], kvs[pos[j]], r.SortTarget) }
		if sortOrder == pb.RangeRequest_DESCEND {
			sort.SliceStable(pos, func(i, j int) bool { return byKV(j, i) })
		} else {
			sort.SliceStable(pos, byKV)
		}
		sortedE, sortedK := make([]Entry, len(pos)), make([]*mvccpb.KeyValue, len(pos))
		for i, p := range pos {
			sortedE[i], sortedK[i] = entries[p], kvs[p]
		}
		entries, kvs = sortedE, sortedK
	}
	cut()
	entries = entries[:len(kvs)]
	if needValue {
		// Sorted by something else than the key, entries are read one by
		// one: LoadMany wants key order.
		if sortOrder != pb.RangeRequest_NONE && r.SortTarget != pb.RangeRequest_KEY {
			for i, e := range entries {
				st, err := src.Load(e)
				if err != nil {
					return nil, err
				}
				kvs[i].Value, kvs[i].Lease = st.Value, st.Lease
			}
		} else if sortOrder == pb.RangeRequest_DESCEND {
			rev := slices.Clone(entries)
			slices.Reverse(rev)
			n := len(kvs) - 1
			if err := src.LoadMany(rev, func(i int, st *axonpb.KeyValue) error {
				kvs[n-i].Value, kvs[n-i].Lease = st.Value, st.Lease
				return nil
			}); err != nil {
				return nil, err
			}
		} else if err := loadAll(); err != nil {
			return nil, err
		}
	}
	resp.Kvs = kvs
	return resp, nil
}

// ReadRevision is the revision a Range with requested revision rev reads
// at (0 or less: current), or etcd's future/compacted error.
func ReadRevision(rev, current, compacted int64) (int64, error) {
	if rev > current {
		return 0, ErrFutureRev
	}
	if rev <= 0 {
		rev = current
	}
	if rev < compacted {
		return 0, ErrCompacted
	}
	return rev, nil
}

// HasRevisionFilters reports whether r prunes by create or mod revision.
func HasRevisionFilters(r *pb.RangeRequest) bool {
	return r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
}

func pruneEntries(es []Entry, r *pb.RangeRequest) []Entry {
	out := es[:0]
	for _, e := range es {
		if r.MaxModRevision != 0 && e.Mod > r.MaxModRevision {
			continue
		}
		if r.MinModRevision != 0 && e.Mod < r.MinModRevision {
			continue
		}
		if r.MaxCreateRevision != 0 && e.Create > r.MaxCreateRevision {
			continue
		}
		if r.MinCreateRevision != 0 && e.Create < r.MinCreateRevision {
			continue
		}
		out = append(out, e)
	}
	return out
}

func less(a, b *mvccpb.KeyValue, target pb.RangeRequest_SortTarget) bool {
	switch target {
	case pb.RangeRequest_VERSION:
		return a.Version < b.Version
	case pb.RangeRequest_CREATE:
		return a.CreateRevision < b.CreateRevision
	case pb.RangeRequest_MOD:
		return a.ModRevision < b.ModRevision
	case pb.RangeRequest_VALUE:
		return bytes.Compare(a.Value, b.Value) < 0
	default:
		return bytes.Compare(a.Key, b.Key) < 0
	}
}

func sortKVs(kvs []*mvccpb.KeyValue, target pb.RangeRequest_SortTarget, order pb.RangeRequest_SortOrder) {
	if order == pb.RangeRequest_DESCEND {
		sort.SliceStable(kvs, func(i, j int) bool { return less(kvs[j], kvs[i], target) })
	} else {
		sort.SliceStable(kvs, func(i, j int) bool { return less(kvs[i], kvs[j], target) })
	}
}

// Prev returns the state of key just before main revision rev, or nil.
func (r Reader) Prev(key []byte, rev int64) (*mvccpb.KeyValue, error) {
	var out *mvccpb.KeyValue
	err := r.Snap.Scan(HistoryPrefix(key), HistoryKey(key, rev), backend.ScanOptions{Limit: 1, Reverse: true}, func(_, v []byte) error {
		kv, err := DecodeKV(v)
		if err != nil {
			return err
		}
		if !kv.Deleted {
			out = ToEtcd(append([]byte(nil), key...), kv)
		}
		return nil
	})
	return out, err
}

// Records calls fn with the whole record of every committed revision in
// [from, to] that changed keys, in order (chunks joined). Changes carry no
// values: RecordEvents reads them.
func (r Reader) Records(from, to int64, fn func(rec *axonpb.RevisionRecord) error) error {
	if from < 1 {
		from = 1
	}
	if to < from {
		return nil
	}
	var cur *axonpb.RevisionRecord
	err := r.Snap.Scan(RevisionKey(from), RevisionKey(to+1), backend.ScanOptions{}, func(k, v []byte) error {
		rec, err := DecodeRecord(v)
		if err != nil {
			return fmt.Errorf("mvcc: record %x: %w", k, err)
		}
		if cur != nil && cur.Revision == rec.Revision {
			cur.Changes = append(cur.Changes, rec.Changes...)
			return nil
		}
		if cur != nil {
			if err := fn(cur); err != nil {
				return err
			}
		}
		cur = rec
		return nil
	})
	if err != nil || cur == nil {
		return err
	}
	return fn(cur)
}

// Events calls fn for every stored revision record in [from, to], in order,
// as etcd events; PrevKv is looked up in the history when withPrev is set.
func (r Reader) Events(from, to int64, withPrev bool, fn func(rev int64, evs []*mvccpb.Event) error) error {
	_, compacted, err := r.Meta()
	if err != nil {
		return err
	}
	return r.Records(from, to, func(rec *axonpb.RevisionRecord) error {
		// As etcd: the event at the compaction revision has no prev_kv (its
		// previous revision is compacted), even before physical compaction
		// removed it. Readers below it are canceled instead.
		evs, err := r.RecordEvents(rec, withPrev && rec.Revision != compacted)
		if err != nil {
			return err
		}
		return fn(rec.Revision, evs)
	})
}

// RecordEvents turns a revision record into etcd events, reading the
// values from the history entries.
func (r Reader) RecordEvents(rec *axonpb.RevisionRecord, withPrev bool) ([]*mvccpb.Event, error) {
	evs := make([]*mvccpb.Event, 0, len(rec.Changes))
	for _, c := range rec.Changes {
		var ev *mvccpb.Event
		if c.Delete {
			ev = &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: c.Key, ModRevision: rec.Revision}}
		} else {
			kv, err := r.At(c.Key, rec.Revision)
			if err != nil {
				return nil, err
			}
			if kv.Deleted {
				// The same transaction deleted the key again: the record
				// carries this state whole.
				kv = c.Kv
			}
			ev = &mvccpb.Event{Kv: ToEtcd(c.Key, kv)}
		}
		if withPrev && (c.Delete || c.Kv.GetVersion() > 1) {
			prev, err := r.Prev(c.Key, rec.Revision)
			if err != nil {
				return nil, err
			}
			ev.PrevKv = prev
		}
		evs = append(evs, ev)
	}
	return evs, nil
}
