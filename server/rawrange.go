package server

import (
	"context"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"

	"github.com/axon-kv/axon/mvcc"
)

// kvServiceDesc is etcd's KV service with the Range method's handler
// replaced by rangeHandler. Generated handlers must return a
// *pb.RangeResponse; this one may return the answer already in wire form
// (a rawMessage the server's codec sends as it is), so a LIST's values are
// copied once, from the store's memory into the answer, instead of into
// decoded key-values that gRPC then encodes into a second buffer as big as
// the answer. Range itself stays for the answers built that way (orders
// other than by key, revision filters).
var kvServiceDesc = func() grpc.ServiceDesc {
	d := pb.KV_ServiceDesc
	d.Methods = slices.Clone(d.Methods)
	for i := range d.Methods {
		if d.Methods[i].MethodName == "Range" {
			d.Methods[i].Handler = rangeHandler
		}
	}
	return d
}()

func rangeHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(pb.RangeRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	k := srv.(*kvService)
	if interceptor == nil {
		return k.rangeAny(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: pb.KV_Range_FullMethodName}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return k.rangeAny(ctx, req.(*pb.RangeRequest))
	})
}

// rangeSegment is the size of the pieces a wire-form answer is built in:
// the answer grows by appending pieces, never by copying what it holds.
const rangeSegment = 1 << 20

// rangeAny answers r in wire form when it is in key order without revision
// filters (every LIST kube-apiserver sends), else through Range.
func (k *kvService) rangeAny(ctx context.Context, r *pb.RangeRequest) (any, error) {
	if r.CountOnly || !keyOrdered(r) || mvcc.HasRevisionFilters(r) {
		return k.Range(ctx, r)
	}
	if err := checkRange(r); err != nil {
		return nil, err
	}
	src, cur, comp, err := k.view(r.Serializable)
	if err != nil {
		return nil, err
	}
	defer src.Snap.Close()
	rev, err := mvcc.ReadRevision(r.Revision, cur, comp)
	if err != nil {
		return nil, err
	}
	want := -1
	if r.Limit > 0 {
		want = int(r.Limit) + 1 // one past the limit tells more
	}
	// The answer once, and the index entries naming it. The share is
	// taken before the entries are built (from the index, which counts
	// without building them): LISTs waiting for room each held their
	// whole range's entries and keys, outside the budget.
	h := k.s.reads.hold(ctx)
	defer h.done()
	n, keyBytes := rangeSize(src.Idx, r, rev)
	estimate := k.s.reads.estimateN(n, keyBytes, wireOverhead)
	if err := h.grow(estimate); err != nil {
		return nil, err
	}
	entries, count, err := src.Entries(r.Key, r.RangeEnd, rev, want)
	if err != nil {
		return nil, err
	}
	more := r.Limit > 0 && int64(len(entries)) > r.Limit
	if more {
		entries = entries[:r.Limit]
	}

	// The pieces come from gRPC's buffer pool and go back to it once gRPC
	// has written them: LISTs back to back reuse the same memory instead
	// of giving the collector the size of every answer to reclaim.
	var (
		pool = mem.DefaultBufferPool()
		segs mem.BufferSlice
		segp *[]byte // the piece being filled (*segp[:0] as handed out)
		seg  []byte
	)
	flush := func() {
		if len(seg) > 0 {
			*segp = seg
			segs = append(segs, mem.NewBuffer(segp, pool))
		}
	}
	// The first piece is sized from the estimate, so a single-object read
	// takes a small buffer, not a whole piece.
	size := int(min(estimate, rangeSegment))
	add := func(e mvcc.Entry, value []byte, lease int64) error {
		n, _ := kvSize(e, value, lease)
		if segp == nil || len(seg)+n > cap(seg) {
			flush()
			segp = pool.Get(max(size, n))
			seg = (*segp)[:0]
			size = rangeSegment
		}
		seg = appendKV(seg, e, value, lease)
		return nil
	}
	if err := k.eachKV(src, entries, r.KeysOnly, add); err != nil {
		return nil, err
	}
	flush()
	header := &pb.ResponseHeader{Revision: cur}
	k.s.fill(header)
	// The header, more and count first, then the key-values.
	head := appendRangeTail(nil, header, more, count)
	return &rawMessage{bufs: append(mem.BufferSlice{mem.SliceBuffer(head)}, segs...)}, nil
}

// keyOrdered tells whether r's answer is in ascending key order, the
// order of the index (and the only one RangeStream serves).
func keyOrdered(r *pb.RangeRequest) bool {
	return r.SortTarget == pb.RangeRequest_KEY &&
		(r.SortOrder == pb.RangeRequest_NONE || r.SortOrder == pb.RangeRequest_ASCEND)
}

// eachKV calls add for each of es, in order, with its value and lease read
// from the store's memory (valid during the call only), or with neither
// for keys_only, which is answered from the index, without leases, as
// etcd's.
func (k *kvService) eachKV(src mvcc.IndexSource, es []mvcc.Entry, keysOnly bool, add func(e mvcc.Entry, value []byte, lease int64) error) error {
	if keysOnly {
		for _, e := range es {
			if err := add(e, nil, 0); err != nil {
				return err
			}
		}
		return nil
	}
	var valueBytes int64
	if err := src.LoadManyView(es, func(i int, v mvcc.ValueView) error {
		valueBytes += int64(len(v.Value))
		return add(es[i], v.Value, v.Lease)
	}); err != nil {
		return err
	}
	k.s.reads.observe(len(es), valueBytes)
	return nil
}
