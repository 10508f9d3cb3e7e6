package server

import (
	"context"
	"sync"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The storage quota, as etcd's --quota-backend-bytes: a write that adds
// data (Put, a Txn containing a put, LeaseGrant) while the backend is over
// the quota raises the NOSPACE alarm, and while the alarm is raised such
// writes fail with "etcdserver: mvcc: database space exceeded"
// (ResourceExhausted). Reads, deletes, Compact, lease revocation and
// keep-alives still work. Alarm DEACTIVATE (etcdctl alarm disarm) clears
// the alarm; if the backend is still over the quota the next such write
// raises it again.
//
// The alarm lives in memory: after a restart the first write over the
// quota raises it again.

// gRPC method names the interceptors look at.
const (
	methodPut        = "/etcdserverpb.KV/Put"
	methodTxn        = "/etcdserverpb.KV/Txn"
	methodLeaseGrant = "/etcdserverpb.Lease/LeaseGrant"
	methodWatch      = "/etcdserverpb.Watch/Watch"
)

// leaseGrantCost approximates what a lease record adds.
const leaseGrantCost = 64

type quota struct {
	limit atomic.Int64 // <= 0: off
	on    atomic.Bool
	mu    sync.Mutex // serializes raising, for one log line per alarm
}

func (q *quota) alarmed() bool { return q != nil && q.on.Load() }

// SetQuotaBackendBytes changes the quota at run time (<= 0 turns it off).
// A raised alarm stays raised until disarmed.
func (s *Server) SetQuotaBackendBytes(n int64) { s.quota.limit.Store(n) }

// cost is the bytes a request adds, 0 for one that adds none.
func requestCost(method string, req any) int64 {
	switch method {
	case methodPut:
		if r, ok := req.(*pb.PutRequest); ok {
			return int64(proto.Size(r))
		}
	case methodTxn:
		if r, ok := req.(*pb.TxnRequest); ok && txnHasPut(r) {
			return int64(proto.Size(r))
		}
	case methodLeaseGrant:
		return leaseGrantCost
	}
	return 0
}

func txnHasPut(t *pb.TxnRequest) bool {
	put := false
	eachTxnOp(t, func(op *pb.RequestOp) bool {
		_, put = op.Request.(*pb.RequestOp_RequestPut)
		return !put
	})
	return put
}

// eachTxnOp calls fn for each operation of t, in both branches and in
// nested transactions, until fn returns false; it reports whether it went
// through all of them.
func eachTxnOp(t *pb.TxnRequest, fn func(*pb.RequestOp) bool) bool {
	for _, ops := range [][]*pb.RequestOp{t.Success, t.Failure} {
		for _, op := range ops {
			if !fn(op) {
				return false
			}
			if x, ok := op.Request.(*pb.RequestOp_RequestTxn); ok && x.RequestTxn != nil && !eachTxnOp(x.RequestTxn, fn) {
				return false
			}
		}
	}
	return true
}

// quotaCheck is the unary interceptor enforcing the quota.
func (s *Server) quotaCheck(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	limit := s.quota.limit.Load()
	if limit <= 0 {
		return handler(ctx, req)
	}
	cost := requestCost(info.FullMethod, req)
	if cost == 0 {
		return handler(ctx, req)
	}
	if s.quota.on.Load() {
		s.metrics.quotaRejected.Inc()
		return nil, rpctypes.ErrGRPCNoSpace
	}
	if size := s.be.Size(); size+cost > limit {
		s.raiseNoSpace(size, limit)
		s.metrics.quotaRejected.Inc()
		return nil, rpctypes.ErrGRPCNoSpace
	}
	return handler(ctx, req)
}

func (s *Server) raiseNoSpace(size, limit int64) {
	s.quota.mu.Lock()
	defer s.quota.mu.Unlock()
	if s.quota.on.Swap(true) {
		return
	}
	s.cfg.Logger.Warn("backend over its quota: NOSPACE alarm raised; writes that add data are refused until it is disarmed",
		"size", size, "quota-backend-bytes", limit)
}

// alarm serves Maintenance.Alarm: NOSPACE is the only alarm Axon raises.
func (s *Server) alarm(r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	resp := &pb.AlarmResponse{Header: s.header()}
	mine := r.MemberID == 0 || r.MemberID == s.memberID
	switch r.Action {
	case pb.AlarmRequest_GET:
		if s.quota.alarmed() && (r.Alarm == pb.AlarmType_NONE || r.Alarm == pb.AlarmType_NOSPACE) {
			resp.Alarms = []*pb.AlarmMember{{MemberID: s.memberID, Alarm: pb.AlarmType_NOSPACE}}
		}
	case pb.AlarmRequest_ACTIVATE:
		if r.Alarm != pb.AlarmType_NOSPACE {
			return nil, status.Errorf(codes.Unimplemented, "axon: only the NOSPACE alarm is supported, not %s", r.Alarm)
		}
		if mine {
			s.quota.mu.Lock()
			s.quota.on.Store(true)
			s.quota.mu.Unlock()
			s.cfg.Logger.Warn("NOSPACE alarm raised by request")
			resp.Alarms = []*pb.AlarmMember{{MemberID: s.memberID, Alarm: pb.AlarmType_NOSPACE}}
		}
	case pb.AlarmRequest_DEACTIVATE:
		if (r.Alarm == pb.AlarmType_NOSPACE || r.Alarm == pb.AlarmType_NONE) && mine {
			s.quota.mu.Lock()
			was := s.quota.on.Swap(false)
			s.quota.mu.Unlock()
			if was {
				s.cfg.Logger.Info("NOSPACE alarm disarmed", "size", s.be.Size(), "quota-backend-bytes", s.quota.limit.Load())
				resp.Alarms = []*pb.AlarmMember{{MemberID: s.memberID, Alarm: pb.AlarmType_NOSPACE}}
			}
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "axon: unknown alarm action %d", r.Action)
	}
	return resp, nil
}
