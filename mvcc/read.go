package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
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

// Source yields the live keys of a range as of a revision.
type Source interface {
	// Scan calls fn with each live key in [start, end) as of rev in key order
	// (end conventions as in LatestRange), with its encoded axonpb.KeyValue.
	// Both slices are only valid during the call.
	Scan(start, end []byte, rev int64, fn func(key, val []byte) error) error
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

func (r Reader) get(k []byte) ([]byte, error) {
	b, err := r.Snap.Get(k)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, nil
	}
	return b, err
}

// Latest returns the latest state of key, or nil when it does not exist.
func (r Reader) Latest(key []byte) (*axonpb.KeyValue, error) {
	b, err := r.get(LatestKey(key))
	if err != nil || b == nil {
		return nil, err
	}
	return DecodeKV(b)
}

// LatestSource scans the latest state; rev is ignored, so callers use it only
// at the snapshot's current revision.
type LatestSource struct{ Snap backend.Snapshot }

// Scan implements Source.
func (s LatestSource) Scan(start, end []byte, _ int64, fn func(key, val []byte) error) error {
	if len(end) == 0 {
		// One key: a point read, no iterator.
		v, err := s.Snap.Get(LatestKey(start))
		if errors.Is(err, backend.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return fn(start, v)
	}
	lo, hi := LatestRange(start, end)
	return s.Snap.Scan(lo, hi, backend.ScanOptions{}, func(k, v []byte) error {
		return fn(UserKeyFromLatest(k), v)
	})
}

// HistorySource scans the per-key history, picking for each key the newest
// state at or below rev.
type HistorySource struct{ Snap backend.Snapshot }

// Scan implements Source.
func (s HistorySource) Scan(start, end []byte, rev int64, fn func(key, val []byte) error) error {
	if len(end) == 0 {
		// One key: its newest version at or below rev, read backwards.
		var (
			val   []byte
			found bool
		)
		err := s.Snap.Scan(HistoryPrefix(start), HistoryKey(start, rev+1), backend.ScanOptions{Limit: 1, Reverse: true},
			func(_, v []byte) error {
				val, found = append([]byte(nil), v...), true
				return nil
			})
		if err != nil || !found {
			return err
		}
		kv, err := DecodeKV(val)
		if err != nil || kv.Deleted {
			return err
		}
		return fn(start, val)
	}
	lo, hi := HistoryRange(start, end)
	var (
		curPrefix []byte // history key without the revision: identifies the user key
		best      []byte // encoded state of the newest version <= rev
		have      bool
	)
	emit := func() error {
		if !have {
			return nil
		}
		have = false
		kv, err := DecodeKV(best)
		if err != nil {
			return err
		}
		if kv.Deleted {
			return nil
		}
		return fn(userKeyOfHistoryPrefix(curPrefix), best)
	}
	err := s.Snap.Scan(lo, hi, backend.ScanOptions{}, func(k, v []byte) error {
		if len(k) < 11 {
			return nil
		}
		p := k[:len(k)-8]
		if !bytes.Equal(p, curPrefix) {
			if err := emit(); err != nil {
				return err
			}
			curPrefix = append(curPrefix[:0], p...)
		}
		if int64(binary.BigEndian.Uint64(k[len(k)-8:])) <= rev {
			best = append(best[:0], v...)
			have = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	return emit()
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
		sortOrder = pb.RangeRequest_NONE // scans already come in ascending key order
	}
	// How many entries must be decoded: all when sorting or filtering, else
	// one past the limit so `more` is known; the rest are only counted.
	want := -1
	if r.CountOnly {
		want = 0
	} else if r.Limit > 0 && defaultOrder && !filtered {
		want = int(r.Limit) + 1
	}
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: current}}
	var count int64
	err = src.Scan(r.Key, r.RangeEnd, rev, func(key, val []byte) error {
		count++
		if want >= 0 && len(resp.Kvs) >= want {
			return nil
		}
		kv, err := DecodeKV(val)
		if err != nil {
			return err
		}
		if r.KeysOnly {
			kv.Value = nil
			if r.SortTarget != pb.RangeRequest_VALUE {
				// etcd answers such requests from its key index alone,
				// which does not know leases.
				kv.Lease = 0
			}
		}
		resp.Kvs = append(resp.Kvs, ToEtcd(append([]byte(nil), key...), kv))
		return nil
	})
	if err != nil {
		return nil, err
	}
	resp.Count = count
	if filtered {
		resp.Kvs = pruneKVs(resp.Kvs, r)
	}
	if sortOrder != pb.RangeRequest_NONE {
		sortKVs(resp.Kvs, r.SortTarget, sortOrder)
	}
	if r.Limit > 0 && int64(len(resp.Kvs)) > r.Limit {
		resp.Kvs = resp.Kvs[:r.Limit]
		resp.More = true
	}
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

func pruneKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) []*mvccpb.KeyValue {
	out := kvs[:0]
	for _, kv := range kvs {
		if r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision {
			continue
		}
		if r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision {
			continue
		}
		if r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision {
			continue
		}
		if r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func sortKVs(kvs []*mvccpb.KeyValue, target pb.RangeRequest_SortTarget, order pb.RangeRequest_SortOrder) {
	var less func(a, b *mvccpb.KeyValue) bool
	switch target {
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) bool { return a.Version < b.Version }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision < b.CreateRevision }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) bool { return a.ModRevision < b.ModRevision }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	default:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
	}
	if order == pb.RangeRequest_DESCEND {
		sort.SliceStable(kvs, func(i, j int) bool { return less(kvs[j], kvs[i]) })
	} else {
		sort.SliceStable(kvs, func(i, j int) bool { return less(kvs[i], kvs[j]) })
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

// Events calls fn for every stored revision record in [from, to], in order,
// as etcd events; PrevKv is looked up in the history when withPrev is set.
func (r Reader) Events(from, to int64, withPrev bool, fn func(rev int64, evs []*mvccpb.Event) error) error {
	if from < 1 {
		from = 1
	}
	if to < from {
		return nil
	}
	_, compacted, err := r.Meta()
	if err != nil {
		return err
	}
	return r.Snap.Scan(RevisionKey(from), RevisionKey(to+1), backend.ScanOptions{}, func(k, v []byte) error {
		rec, err := DecodeRecord(v)
		if err != nil {
			return err
		}
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

// RecordEvents turns a revision record into etcd events.
func (r Reader) RecordEvents(rec *axonpb.RevisionRecord, withPrev bool) ([]*mvccpb.Event, error) {
	evs := make([]*mvccpb.Event, 0, len(rec.Changes))
	for _, c := range rec.Changes {
		ev := &mvccpb.Event{Kv: ToEtcd(c.Key, c.Kv)}
		if c.Delete {
			ev.Type = mvccpb.DELETE
			ev.Kv = &mvccpb.KeyValue{Key: c.Key, ModRevision: rec.Revision}
		}
		if withPrev && (c.Delete || c.Kv.Version > 1) {
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
