package server

import (
	"context"
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/axon-kv/axon/mvcc"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/version"
)

// maintenanceService answers the probes clients make, alarms (quota.go)
// snapshots (snapshot.go) and hashes. Calls that would change the member
// (Defragment, MoveLeader, Downgrade) answer Unimplemented through the
// embedded type.
type maintenanceService struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

// Status reports an etcd version: kube-apiserver turns on consistent reads
// from its watch cache and WatchList only for >= 3.5.13.
func (m *maintenanceService) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	size := m.s.be.Size()
	h := m.s.header()
	rev := h.Revision
	leaderID := uint64(0)
	if m.s.writer() != nil {
		leaderID = m.s.memberID
	} else if m.s.elector != nil {
		if rec, ok := m.s.elector.Leader(); rec != nil && ok {
			leaderID = hashID(rec.Id)
		}
	}
	return &pb.StatusResponse{
		Header:           h,
		Version:          version.Version,
		StorageVersion:   version.Version,
		DbSize:           size,
		DbSizeInUse:      size,
		DbSizeQuota:      max(m.s.quota.limit.Load(), 0),
		Leader:           leaderID,
		RaftIndex:        uint64(rev),
		RaftTerm:         m.s.term(),
		RaftAppliedIndex: uint64(rev),
	}, nil
}

// Alarm lists, raises and clears the NOSPACE alarm (see quota.go).
func (m *maintenanceService) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	return m.s.alarm(r)
}

type clusterService struct {
	pb.UnimplementedClusterServer
	s *Server
}

// MemberList answers with this single member.
func (c *clusterService) MemberList(ctx context.Context, _ *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	name, _ := os.Hostname()
	if name == "" {
		name = "axon"
	}
	return &pb.MemberListResponse{
		Header:  c.s.header(),
		Members: []*pb.Member{{ID: c.s.memberID, Name: name, ClientURLs: c.s.ClientURLs()}},
	}, nil
}

// HashKV answers etcd's hash of the key space at a revision, equal to what
// etcd answers after the same requests (see mvcc.Reader.HashKV).
func (m *maintenanceService) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	snap, err := m.s.be.Snapshot()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	defer snap.Close()
	h, err := mvcc.Reader{Snap: snap}.HashKV(r.Revision, m.s.hashes)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err // etcd's compacted and future revision errors
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	hdr := m.s.header()
	hdr.Revision = h.Current
	return &pb.HashKVResponse{Header: hdr, Hash: h.Hash, CompactRevision: h.CompactRevision, HashRevision: h.Revision}, nil
}

// Hash answers a hash of the whole store. etcd hashes its bbolt file,
// which Axon does not have: the number is only comparable between Axon
// members (see mvcc.Reader.Hash).
func (m *maintenanceService) Hash(ctx context.Context, _ *pb.HashRequest) (*pb.HashResponse, error) {
	snap, err := m.s.be.Snapshot()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	defer snap.Close()
	h, cur, err := mvcc.Reader{Snap: snap}.Hash()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	hdr := m.s.header()
	hdr.Revision = cur
	return &pb.HashResponse{Header: hdr, Hash: h}, nil
}
