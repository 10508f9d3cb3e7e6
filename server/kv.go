package server

import (
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/proto/axonpb"
	"github.com/axon-kv/axon/revision"
)

type kvService struct {
	pb.UnimplementedKVServer
	s *Server
}

// raftOverhead approximates the envelope etcd wraps a request in before it
// compares the size with --max-request-bytes.
const raftOverhead = 16

// memoryMaxRequest bounds requests on the memory backend: Badger's
// in-memory mode cannot hold a value of 1 MiB or more, and a request's
// changes are stored together as one revision record.
const memoryMaxRequest = 1<<20 - 4<<10

func (k *kvService) tooLarge(m proto.Message) error {
	limit := k.s.cfg.MaxRequestBytes
	if k.s.cfg.Backend == "memory" && k.s.cfg.SharedBackend == nil {
		limit = min(limit, memoryMaxRequest)
	}
	if proto.Size(m)+raftOverhead > limit {
		return rpctypes.ErrGRPCRequestTooLarge
	}
	return nil
}

// view returns a consistent read view: the index's revision, then a
// snapshot, which holds everything the index names at that revision. The
// compacted revision is read after the snapshot, so a physical compaction
// the snapshot no longer sees can only concern revisions reads already
// refuse. A follower first catches its index up with the store for a
// linearizable read, as etcd's ReadIndex.
func (k *kvService) view(serializable bool) (mvcc.IndexSource, int64, int64, error) {
	s := k.s
	linearizable := !serializable && s.multiNode()
	for attempt := 0; ; attempt++ {
		cur, _ := s.idx.Rev()
		snap, err := s.be.Snapshot()
		if err != nil {
			return mvcc.IndexSource{}, 0, 0, status.Error(codes.Unavailable, err.Error())
		}
		_, comp := s.idx.Rev()
		if linearizable {
			// The role is read after the snapshot: a leader deposed while
			// this read waited (paused past its lease by SIGSTOP or a long
			// GC) must not answer from its index once another leader has
			// committed.
			if s.writer() != nil {
				// Every group is fenced on the term: while the snapshot
				// still holds ours, nobody else has committed.
				if err := s.confirmTerm(snap); err != nil {
					snap.Close()
					return mvcc.IndexSource{}, 0, 0, err
				}
			} else if stored, _, err := (mvcc.Reader{Snap: snap}).Meta(); err != nil || stored > cur {
				// A follower whose index lags the store catches up first,
				// as etcd's ReadIndex waits for its applied index.
				snap.Close()
				if err == nil && attempt < 10 {
					err = s.catchUp()
				}
				if err == nil && attempt < 10 {
					continue
				}
				if err == nil {
					err = errors.New("the index does not catch up with the store")
				}
				return mvcc.IndexSource{}, 0, 0, status.Error(codes.Unavailable, err.Error())
			}
		}
		if comp <= cur {
			return mvcc.IndexSource{Idx: s.idx, Snap: snap}, cur, comp, nil
		}
		snap.Close() // compacted past cur in between: read at a newer revision
	}
}

// Range reads one backend snapshot. A snapshot taken after a write was
// acknowledged contains it, so every Range is linearizable on one node.
func (k *kvService) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := checkRange(r); err != nil {
		return nil, err
	}
	src, cur, comp, err := k.view(r.Serializable)
	if err != nil {
		return nil, err
	}
	defer src.Snap.Close()
	resp, err := mvcc.ExecRange(src, r, cur, comp)
	if err != nil {
		return nil, err
	}
	k.s.fill(resp.Header)
	return resp, nil
}

// streamChunkBytes is the size a RangeStream message aims for.
const streamChunkBytes = 1 << 20

// RangeStream sends one consistent range in chunks; only the last message
// carries the header, more and count, as etcd 3.7 does.
func (k *kvService) RangeStream(r *pb.RangeRequest, stream grpc.ServerStreamingServer[pb.RangeStreamResponse]) error {
	if err := checkRange(r); err != nil {
		return err
	}
	if (r.SortOrder != pb.RangeRequest_NONE && !(r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND)) ||
		(r.SortOrder == pb.RangeRequest_NONE && r.SortTarget != pb.RangeRequest_KEY) {
		return status.Error(codes.Unimplemented, "RangeStream does not support custom sort orders")
	}
	if mvcc.HasRevisionFilters(r) {
		return status.Error(codes.Unimplemented, "RangeStream does not support revision filters")
	}
	src, cur, comp, err := k.view(r.Serializable)
	if err != nil {
		return err
	}
	defer src.Snap.Close()
	if r.CountOnly {
		resp, err := mvcc.ExecRange(src, r, cur, comp)
		if err != nil {
			return err
		}
		k.s.fill(resp.Header)
		return stream.Send(&pb.RangeStreamResponse{RangeResponse: &pb.RangeResponse{Header: resp.Header, Count: resp.Count}})
	}
	rev, err := mvcc.ReadRevision(r.Revision, cur, comp)
	if err != nil {
		return err
	}
	want := -1
	if r.Limit > 0 {
		want = int(r.Limit)
	}
	entries, count, err := src.Entries(r.Key, r.RangeEnd, rev, want)
	if err != nil {
		return err
	}
	var (
		chunk []*mvccpb.KeyValue
		size  int
	)
	add := func(kv *mvccpb.KeyValue) error {
		chunk = append(chunk, kv)
		size += len(kv.Key) + len(kv.Value) + 32
		if size < streamChunkBytes {
			return nil
		}
		err := stream.Send(&pb.RangeStreamResponse{RangeResponse: &pb.RangeResponse{Kvs: chunk}})
		chunk, size = nil, 0
		return err
	}
	if r.KeysOnly { // answered from the index, without leases, as etcd's
		for _, e := range entries {
			if err := add(e.KeyValue()); err != nil {
				return err
			}
		}
	} else if err := src.LoadMany(entries, func(i int, st *axonpb.KeyValue) error {
		kv := entries[i].KeyValue()
		kv.Value, kv.Lease = st.Value, st.Lease
		return add(kv)
	}); err != nil {
		return err
	}
	last := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: cur}, Kvs: chunk, Count: count}
	last.More = r.Limit > 0 && count > r.Limit
	k.s.fill(last.Header)
	return stream.Send(&pb.RangeStreamResponse{RangeResponse: last})
}

func (k *kvService) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := checkPut(r); err != nil {
		return nil, err
	}
	if err := k.tooLarge(r); err != nil {
		return nil, err
	}
	resp, err := doWrite(ctx, k.s,
		func(w *revision.Sequencer) (*pb.PutResponse, error) { return w.Put(ctx, r) },
		func(ctx context.Context, c *grpc.ClientConn) (*pb.PutResponse, error) {
			return pb.NewKVClient(c).Put(ctx, r)
		})
	if err != nil {
		return nil, toGRPC(err)
	}
	k.s.fill(resp.Header)
	return resp, nil
}

func (k *kvService) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := checkDelete(r); err != nil {
		return nil, err
	}
	if err := k.tooLarge(r); err != nil {
		return nil, err
	}
	resp, err := doWrite(ctx, k.s,
		func(w *revision.Sequencer) (*pb.DeleteRangeResponse, error) { return w.DeleteRange(ctx, r) },
		func(ctx context.Context, c *grpc.ClientConn) (*pb.DeleteRangeResponse, error) {
			return pb.NewKVClient(c).DeleteRange(ctx, r)
		})
	if err != nil {
		return nil, toGRPC(err)
	}
	k.s.fill(resp.Header)
	return resp, nil
}

func (k *kvService) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := checkTxn(r, k.s.cfg.MaxTxnOps); err != nil {
		return nil, err
	}
	if _, _, err := checkIntervals(r.Success); err != nil {
		return nil, err
	}
	if _, _, err := checkIntervals(r.Failure); err != nil {
		return nil, err
	}
	if err := k.tooLarge(r); err != nil {
		return nil, err
	}
	resp, err := doWrite(ctx, k.s,
		func(w *revision.Sequencer) (*pb.TxnResponse, error) { return w.Txn(ctx, r) },
		func(ctx context.Context, c *grpc.ClientConn) (*pb.TxnResponse, error) {
			return pb.NewKVClient(c).Txn(ctx, r)
		})
	if err != nil {
		return nil, toGRPC(err)
	}
	k.s.fill(resp.Header)
	return resp, nil
}

func (k *kvService) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	resp, err := doWrite(ctx, k.s,
		func(w *revision.Sequencer) (*pb.CompactionResponse, error) { return w.Compact(ctx, r) },
		func(ctx context.Context, c *grpc.ClientConn) (*pb.CompactionResponse, error) {
			return pb.NewKVClient(c).Compact(ctx, r)
		})
	if err != nil {
		return nil, toGRPC(err)
	}
	k.s.fill(resp.Header)
	return resp, nil
}

// toGRPC passes gRPC status errors (etcd's rpctypes) through and maps the
// rest.
func toGRPC(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch err {
	case context.Canceled:
		return status.Error(codes.Canceled, err.Error())
	case context.DeadlineExceeded:
		return rpctypes.ErrGRPCTimeout
	}
	return status.Error(codes.Unavailable, err.Error())
}
