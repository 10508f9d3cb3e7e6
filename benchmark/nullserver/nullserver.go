// Package nullserver is an etcd v3 gRPC server with no storage: the
// ceiling against which benchmark figures are read. It answers at once:
//
//   - Range of a single key returns that key with a synthetic value; a range
//     returns `limit` synthetic keys (UnlimitedCount when limit is 0) with
//     More=false; CountOnly and KeysOnly are honoured.
//   - Put, DeleteRange and Txn succeed immediately; every request that
//     writes advances the revision by one. A Txn always takes its success
//     branch.
//   - Watch acknowledges creates and cancels but never delivers an event.
//   - Lease grant, revoke, keep-alive and time-to-live are bookkeeping only;
//     nothing expires.
//   - Maintenance.Status, Defragment, Alarm and Cluster.MemberList answer
//     as a healthy single member would.
//
// Whatever a client measures against it is the cost of gRPC, the client
// and the machine, which no real server can beat.
package nullserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	etcdversion "go.etcd.io/etcd/api/v3/version"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Options configures a Server. Zero fields take the defaults noted.
type Options struct {
	// KeySize and ValueSize are the sizes of synthetic keys (70) and values
	// (512).
	KeySize   int
	ValueSize int
	// UnlimitedCount is how many keys a range without a limit returns
	// (10000).
	UnlimitedCount int
	// FailEvery, when positive, makes every FailEvery-th KV request (Range,
	// Put, DeleteRange, Txn, counted together) fail with FailCode
	// (default Unavailable): for testing clients' error accounting.
	FailEvery int
	FailCode  codes.Code
	// TrackPeers records which client connections (peer addresses) send
	// requests, for Peers: for testing how clients spread over connections.
	TrackPeers bool
}

// Server is a null etcd server. Create it with New or Start.
type Server struct {
	pb.UnimplementedKVServer
	pb.UnimplementedWatchServer
	pb.UnimplementedLeaseServer
	pb.UnimplementedMaintenanceServer
	pb.UnimplementedClusterServer

	opts  Options
	value []byte
	grpc  *grpc.Server
	lis   net.Listener

	rev     atomic.Int64
	kvReqs  atomic.Int64
	leaseID atomic.Int64
	leases  sync.Map // lease ID -> TTL

	pagesMu sync.Mutex
	pages   map[int][]*mvccpb.KeyValue

	// Request counters, for tests and curiosity.
	Ranges, Puts, Deletes, Txns, WatchCreates, LeaseGrants, KeepAlives atomic.Int64

	peers sync.Map // peer address -> *atomic.Int64 requests (TrackPeers)
}

// Peers returns how many requests (unary calls and streams, Maintenance
// excepted) each client connection, by peer address, has sent; empty
// unless Options.TrackPeers.
func (s *Server) Peers() map[string]int64 {
	out := map[string]int64{}
	s.peers.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

func (s *Server) trackPeer(ctx context.Context, method string) {
	if strings.HasPrefix(method, "/etcdserverpb.Maintenance/") {
		// clientv3's Status and Defragment dial the endpoint afresh.
		return
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return
	}
	v, _ := s.peers.LoadOrStore(p.Addr.String(), new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

const (
	clusterID = 0x6e756c6c // "null"
	memberID  = 0x6e756c6c
)

// New returns a server that is not yet listening.
func New(opts Options) *Server {
	if opts.KeySize <= 0 {
		opts.KeySize = 70
	}
	if opts.ValueSize < 0 || opts.ValueSize == 0 {
		opts.ValueSize = 512
	}
	if opts.UnlimitedCount <= 0 {
		opts.UnlimitedCount = 10000
	}
	if opts.FailCode == codes.OK {
		opts.FailCode = codes.Unavailable
	}
	s := &Server{opts: opts, pages: map[int][]*mvccpb.KeyValue{}}
	s.value = make([]byte, opts.ValueSize)
	for i := range s.value {
		s.value[i] = 'a' + byte(i%26)
	}
	s.rev.Store(1)
	sopts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(64 << 20),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.MaxConcurrentStreams(math.MaxUint32),
	}
	if opts.TrackPeers {
		sopts = append(sopts,
			grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				s.trackPeer(ctx, info.FullMethod)
				return h(ctx, req)
			}),
			grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				s.trackPeer(ss.Context(), info.FullMethod)
				return h(srv, ss)
			}))
	}
	s.grpc = grpc.NewServer(sopts...)
	pb.RegisterKVServer(s.grpc, s)
	pb.RegisterWatchServer(s.grpc, s)
	pb.RegisterLeaseServer(s.grpc, s)
	pb.RegisterMaintenanceServer(s.grpc, s)
	pb.RegisterClusterServer(s.grpc, s)
	return s
}

// Start listens on addr (host:port; port 0 picks one) and serves in the
// background.
func Start(addr string, opts Options) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := New(opts)
	s.lis = lis
	go func() { _ = s.grpc.Serve(lis) }()
	return s, nil
}

// Serve serves on lis until Stop; it returns nil after Stop.
func (s *Server) Serve(lis net.Listener) error {
	s.lis = lis
	err := s.grpc.Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Addr is the listening address (host:port), or "" before listening.
func (s *Server) Addr() string {
	if s.lis == nil {
		return ""
	}
	return s.lis.Addr().String()
}

// Stop closes the listener and every connection at once.
func (s *Server) Stop() { s.grpc.Stop() }

// Revision is the current revision.
func (s *Server) Revision() int64 { return s.rev.Load() }

func (s *Server) header(rev int64) *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: clusterID, MemberId: memberID, Revision: rev, RaftTerm: 1}
}

// fail reports whether this KV request is one to fail.
func (s *Server) fail() error {
	n := s.kvReqs.Add(1)
	if s.opts.FailEvery > 0 && n%int64(s.opts.FailEvery) == 0 {
		return status.Error(s.opts.FailCode, "nullserver: injected failure")
	}
	return nil
}

// page returns n shared synthetic key-values (never modified once built).
func (s *Server) page(n int) []*mvccpb.KeyValue {
	s.pagesMu.Lock()
	defer s.pagesMu.Unlock()
	if p, ok := s.pages[n]; ok {
		return p
	}
	p := make([]*mvccpb.KeyValue, n)
	for i := range p {
		k := []byte("/registry/null/ns-" + strconv.Itoa(i%100) + "/obj-")
		for len(k) < s.opts.KeySize-10 {
			k = append(k, '0')
		}
		k = fmt.Appendf(k, "%010d", i)
		p[i] = &mvccpb.KeyValue{Key: k, Value: s.value, CreateRevision: 1, ModRevision: 1, Version: 1}
	}
	if len(s.pages) < 64 {
		s.pages[n] = p
	}
	return p
}

// Range implements KV.Range.
func (s *Server) Range(_ context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := s.fail(); err != nil {
		return nil, err
	}
	return s.rangeResp(r), nil
}

func (s *Server) rangeResp(r *pb.RangeRequest) *pb.RangeResponse {
	s.Ranges.Add(1)
	rev := s.rev.Load()
	resp := &pb.RangeResponse{Header: s.header(rev)}
	if len(r.RangeEnd) == 0 {
		resp.Count = 1
		if !r.CountOnly {
			kv := &mvccpb.KeyValue{Key: r.Key, CreateRevision: 1, ModRevision: 1, Version: 1}
			if !r.KeysOnly {
				kv.Value = s.value
			}
			resp.Kvs = []*mvccpb.KeyValue{kv}
		}
		return resp
	}
	n := int(r.Limit)
	if n <= 0 {
		n = s.opts.UnlimitedCount
	}
	resp.Count = int64(n)
	if r.CountOnly {
		return resp
	}
	kvs := s.page(n)
	if r.KeysOnly {
		ko := make([]*mvccpb.KeyValue, len(kvs))
		for i, kv := range kvs {
			ko[i] = &mvccpb.KeyValue{Key: kv.Key, CreateRevision: 1, ModRevision: 1, Version: 1}
		}
		kvs = ko
	}
	resp.Kvs = kvs
	return resp
}

// Put implements KV.Put.
func (s *Server) Put(_ context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := s.fail(); err != nil {
		return nil, err
	}
	s.Puts.Add(1)
	return &pb.PutResponse{Header: s.header(s.rev.Add(1))}, nil
}

// DeleteRange implements KV.DeleteRange; nothing is ever there to delete.
func (s *Server) DeleteRange(_ context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := s.fail(); err != nil {
		return nil, err
	}
	s.Deletes.Add(1)
	return &pb.DeleteRangeResponse{Header: s.header(s.rev.Add(1))}, nil
}

// Txn implements KV.Txn: the success branch, always.
func (s *Server) Txn(_ context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := s.fail(); err != nil {
		return nil, err
	}
	s.Txns.Add(1)
	rev := s.rev.Load()
	if txnWrites(r) {
		rev = s.rev.Add(1)
	}
	return s.txnResp(r, rev), nil
}

func txnWrites(r *pb.TxnRequest) bool {
	for _, op := range r.Success {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestPut, *pb.RequestOp_RequestDeleteRange:
			return true
		case *pb.RequestOp_RequestTxn:
			if txnWrites(o.RequestTxn) {
				return true
			}
		}
	}
	return false
}

func (s *Server) txnResp(r *pb.TxnRequest, rev int64) *pb.TxnResponse {
	h := s.header(rev)
	resp := &pb.TxnResponse{Header: h, Succeeded: true, Responses: make([]*pb.ResponseOp, 0, len(r.Success))}
	for _, op := range r.Success {
		var ro *pb.ResponseOp
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr := s.rangeResp(o.RequestRange)
			rr.Header = h
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
		case *pb.RequestOp_RequestPut:
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{Header: h}}}
		case *pb.RequestOp_RequestDeleteRange:
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: &pb.DeleteRangeResponse{Header: h}}}
		case *pb.RequestOp_RequestTxn:
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: s.txnResp(o.RequestTxn, rev)}}
		default:
			ro = &pb.ResponseOp{}
		}
		resp.Responses = append(resp.Responses, ro)
	}
	return resp
}

// Compact implements KV.Compact as a no-op.
func (s *Server) Compact(context.Context, *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	return &pb.CompactionResponse{Header: s.header(s.rev.Load())}, nil
}

// Watch implements Watch: creates and cancels are acknowledged, progress
// requests answered, and no event is ever sent.
func (s *Server) Watch(stream pb.Watch_WatchServer) error {
	var nextID int64
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var resp *pb.WatchResponse
		switch r := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			s.WatchCreates.Add(1)
			id := r.CreateRequest.WatchId
			if id <= 0 {
				id = nextID
				nextID++
			}
			resp = &pb.WatchResponse{Header: s.header(s.rev.Load()), WatchId: id, Created: true}
		case *pb.WatchRequest_CancelRequest:
			resp = &pb.WatchResponse{Header: s.header(s.rev.Load()), WatchId: r.CancelRequest.WatchId, Canceled: true}
		case *pb.WatchRequest_ProgressRequest:
			resp = &pb.WatchResponse{Header: s.header(s.rev.Load()), WatchId: -1}
		default:
			continue
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// LeaseGrant implements Lease.LeaseGrant.
func (s *Server) LeaseGrant(_ context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	s.LeaseGrants.Add(1)
	id := r.ID
	if id == 0 {
		id = s.leaseID.Add(1)
	}
	s.leases.Store(id, r.TTL)
	return &pb.LeaseGrantResponse{Header: s.header(s.rev.Load()), ID: id, TTL: r.TTL}, nil
}

// LeaseRevoke implements Lease.LeaseRevoke.
func (s *Server) LeaseRevoke(_ context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	if _, ok := s.leases.LoadAndDelete(r.ID); !ok {
		return nil, status.Error(codes.NotFound, "etcdserver: requested lease not found")
	}
	return &pb.LeaseRevokeResponse{Header: s.header(s.rev.Load())}, nil
}

func (s *Server) ttl(id int64) int64 {
	if v, ok := s.leases.Load(id); ok {
		return v.(int64)
	}
	return -1
}

// LeaseKeepAlive implements Lease.LeaseKeepAlive.
func (s *Server) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		s.KeepAlives.Add(1)
		ttl := s.ttl(req.ID)
		if ttl < 0 {
			ttl = 0
		}
		if err := stream.Send(&pb.LeaseKeepAliveResponse{Header: s.header(s.rev.Load()), ID: req.ID, TTL: ttl}); err != nil {
			return err
		}
	}
}

// LeaseTimeToLive implements Lease.LeaseTimeToLive.
func (s *Server) LeaseTimeToLive(_ context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	ttl := s.ttl(r.ID)
	return &pb.LeaseTimeToLiveResponse{Header: s.header(s.rev.Load()), ID: r.ID, TTL: ttl, GrantedTTL: max(ttl, 0)}, nil
}

// LeaseLeases implements Lease.LeaseLeases.
func (s *Server) LeaseLeases(context.Context, *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	resp := &pb.LeaseLeasesResponse{Header: s.header(s.rev.Load())}
	s.leases.Range(func(k, _ any) bool {
		resp.Leases = append(resp.Leases, &pb.LeaseStatus{ID: k.(int64)})
		return true
	})
	return resp, nil
}

// Status implements Maintenance.Status.
func (s *Server) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	rev := s.rev.Load()
	return &pb.StatusResponse{
		Header:    s.header(rev),
		Version:   etcdversion.Version,
		Leader:    memberID,
		RaftIndex: uint64(rev),
		RaftTerm:  1,
	}, nil
}

// Defragment implements Maintenance.Defragment as a no-op.
func (s *Server) Defragment(context.Context, *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	return &pb.DefragmentResponse{Header: s.header(s.rev.Load())}, nil
}

// Alarm implements Maintenance.Alarm: there are never alarms.
func (s *Server) Alarm(context.Context, *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	return &pb.AlarmResponse{Header: s.header(s.rev.Load())}, nil
}

// MemberList implements Cluster.MemberList: this one member.
func (s *Server) MemberList(context.Context, *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	var urls []string
	if a := s.Addr(); a != "" {
		urls = []string{"http://" + a}
	}
	return &pb.MemberListResponse{
		Header:  s.header(s.rev.Load()),
		Members: []*pb.Member{{ID: memberID, Name: "null", ClientURLs: urls}},
	}, nil
}
