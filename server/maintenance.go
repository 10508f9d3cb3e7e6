package server

import (
	"context"
	"os"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/version"
)

// maintenanceService answers the probes clients make, alarms (quota.go)
// and snapshots (snapshot.go). Calls that would change the member or read
// raw storage (Defragment, Hash, MoveLeader, Downgrade) answer
// Unimplemented through the embedded type.
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
