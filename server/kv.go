package server

import (
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/mvcc"
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
	h := k.s.reads.hold(ctx)
	defer h.done()
	resp, err := mvcc.ExecRange(budgetSource{src, h}, r, cur, comp)
	if err != nil {
		return nil, err
	}
	k.s.fill(resp.Header)
	return resp, nil
}

// streamPageKeys is how many keys a RangeStream takes from the index at a
// time: the stream holds one page of index entries and one chunk of
// key-values, never the whole range.
const streamPageKeys = 256

// RangeStream sends one consistent range in chunks; only the last message
// carries the header, more and count, as etcd 3.7 does. Each chunk is
// filled up to --max-request-bytes (etcd aims its chunks at the same size);
// the range is read from the index page by page and its values with one
// snapshot, so a stream holds at most two chunks (see rangeChunk), however
// big the range.
func (k *kvService) RangeStream(r *pb.RangeRequest, stream grpc.ServerStreamingServer[pb.RangeStreamResponse]) error {
	if err := checkRange(r); err != nil {
		return err
	}
	if !keyOrdered(r) {
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
	rev, err := mvcc.ReadRevision(r.Revision, cur, comp)
	if err != nil {
		return err
	}
	// The count walks the index without keeping entries.
	_, count, err := src.Entries(r.Key, r.RangeEnd, rev, 0)
	if err != nil {
		return err
	}
	if r.CountOnly {
		resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: cur}, Count: count}
		k.s.fill(resp.Header)
		return stream.Send(&pb.RangeStreamResponse{RangeResponse: resp})
	}
	target := k.s.cfg.MaxRequestBytes
	// A stream holds the chunk it fills and the one gRPC is still sending
	// (plus the value that overflows a chunk): its share is that, however
	// big the range.
	budget := k.s.reads.hold(stream.Context())
	defer budget.done()
	if err := budget.grow(2 * int64(target)); err != nil {
		return err
	}
	bufs := newChunkBuffers()
	chunk, err := bufs.chunk(stream.Context(), target)
	if err != nil {
		return err
	}
	// A chunk is sent before the key-value that would take it past the
	// target, so its buffer never grows; a key-value bigger than the
	// target goes alone.
	add := func(e mvcc.Entry, value []byte, lease int64) error {
		if n, _ := kvSize(e, value, lease); chunk.size() > 0 && chunk.size()+n > target {
			if err := stream.SendMsg(chunk.finish(nil, false, 0)); err != nil {
				return err
			}
			var err error
			if chunk, err = bufs.chunk(stream.Context(), max(target, n)); err != nil {
				return err
			}
		}
		chunk.add(e, value, lease)
		return nil
	}
	start, sent := r.Key, int64(0)
	for start != nil && (r.Limit == 0 || sent < r.Limit) {
		n := int64(streamPageKeys)
		if r.Limit > 0 {
			n = min(n, r.Limit-sent)
		}
		var page []mvcc.Entry
		page, start = src.Idx.Page(start, r.RangeEnd, rev, int(n))
		if _, comp := src.Idx.Rev(); comp > rev {
			// The index forgot states at rev while the stream read it.
			return mvcc.ErrCompacted
		}
		sent += int64(len(page))
		if err := k.eachKV(src, page, r.KeysOnly, add); err != nil {
			return err
		}
	}
	header := &pb.ResponseHeader{Revision: cur}
	k.s.fill(header)
	return stream.SendMsg(chunk.finish(header, r.Limit > 0 && count > r.Limit, count))
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
	// The writer reads a Txn's ranges and must never wait for the read
	// budget, so the share is taken here, before, from the index.
	h := k.s.reads.hold(ctx)
	defer h.done()
	if err := h.grow(k.s.reads.txnEstimate(k.s.idx, r)); err != nil {
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
