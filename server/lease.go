package server

import (
	"context"
	"errors"
	"io"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/axon-kv/axon/lease"
	"github.com/axon-kv/axon/revision"
)

// The lease table is what the single writer consults for leases.
var _ revision.Leases = (*lease.Manager)(nil)

// leaseService serves etcd's Lease API from the lease table.
type leaseService struct {
	etcdserverpb.UnimplementedLeaseServer
	m      *lease.Manager
	header func() *etcdserverpb.ResponseHeader
}

// newLeaseService serves the Lease API. header returns a filled response
// header (cluster, member, current revision, term).
func newLeaseService(m *lease.Manager, header func() *etcdserverpb.ResponseHeader) etcdserverpb.LeaseServer {
	return &leaseService{m: m, header: header}
}

func (s *leaseService) LeaseGrant(ctx context.Context, r *etcdserverpb.LeaseGrantRequest) (*etcdserverpb.LeaseGrantResponse, error) {
	l, err := s.m.Grant(ctx, r.ID, r.TTL)
	if err != nil {
		return nil, leaseErrToGRPC(err)
	}
	return &etcdserverpb.LeaseGrantResponse{Header: s.header(), ID: l.ID, TTL: l.GrantedTTL}, nil
}

func (s *leaseService) LeaseRevoke(ctx context.Context, r *etcdserverpb.LeaseRevokeRequest) (*etcdserverpb.LeaseRevokeResponse, error) {
	rev, err := s.m.Revoke(ctx, r.ID)
	if err != nil {
		return nil, leaseErrToGRPC(err)
	}
	h := s.header()
	if rev > 0 {
		h.Revision = rev
	}
	return &etcdserverpb.LeaseRevokeResponse{Header: h}, nil
}

// LeaseTimeToLive answers TTL -1 (not an error) for an unknown lease, as
// etcd does.
func (s *leaseService) LeaseTimeToLive(ctx context.Context, r *etcdserverpb.LeaseTimeToLiveRequest) (*etcdserverpb.LeaseTimeToLiveResponse, error) {
	l, err := s.m.TimeToLive(r.ID, r.Keys)
	if errors.Is(err, lease.ErrLeaseNotFound) {
		return &etcdserverpb.LeaseTimeToLiveResponse{Header: s.header(), ID: r.ID, TTL: -1}, nil
	}
	if err != nil {
		return nil, leaseErrToGRPC(err)
	}
	resp := &etcdserverpb.LeaseTimeToLiveResponse{Header: s.header(), ID: l.ID, TTL: l.TTL, GrantedTTL: l.GrantedTTL}
	if r.Keys {
		resp.Keys = l.Keys
		if resp.Keys == nil {
			resp.Keys = [][]byte{}
		}
	}
	return resp, nil
}

func (s *leaseService) LeaseLeases(ctx context.Context, _ *etcdserverpb.LeaseLeasesRequest) (*etcdserverpb.LeaseLeasesResponse, error) {
	ids := s.m.Leases()
	ls := make([]*etcdserverpb.LeaseStatus, len(ids))
	for i, id := range ids {
		ls[i] = &etcdserverpb.LeaseStatus{ID: id}
	}
	return &etcdserverpb.LeaseLeasesResponse{Header: s.header(), Leases: ls}, nil
}

// LeaseKeepAlive renews leases for as long as the client sends requests.
// An unknown or expired lease is answered with TTL 0, not an error.
func (s *leaseService) LeaseKeepAlive(stream etcdserverpb.Lease_LeaseKeepAliveServer) error {
	errc := make(chan error, 1)
	go func() { errc <- s.keepAlive(stream) }()
	select {
	case err := <-errc:
		return err
	case <-stream.Context().Done():
		// Client gone or server stopping; the receive loop ends with the
		// stream.
		return stream.Context().Err()
	}
}

func (s *leaseService) keepAlive(stream etcdserverpb.Lease_LeaseKeepAliveServer) error {
	ctx := stream.Context()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		// The header is taken before renewing, so its revision is never
		// newer than the renewal: a client cannot see a revocation at rev R
		// and then a successful keep-alive at a later revision.
		resp := &etcdserverpb.LeaseKeepAliveResponse{Header: s.header(), ID: req.ID}
		ttl, err := s.m.Renew(ctx, req.ID)
		switch {
		case errors.Is(err, lease.ErrLeaseNotFound):
			ttl = 0
		case err != nil:
			return leaseErrToGRPC(err)
		}
		resp.TTL = ttl
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// leaseErrToGRPC maps lease table errors onto etcd's gRPC errors.
func leaseErrToGRPC(err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err // gRPC turns these into Canceled / DeadlineExceeded
	case errors.Is(err, lease.ErrLeaseNotFound):
		return rpctypes.ErrGRPCLeaseNotFound
	case errors.Is(err, lease.ErrLeaseExists):
		return rpctypes.ErrGRPCLeaseExist
	case errors.Is(err, lease.ErrLeaseTTLTooLarge):
		return rpctypes.ErrGRPCLeaseTTLTooLarge
	case errors.Is(err, lease.ErrNotPrimary):
		// etcd forwards to the leader; until followers forward, tell the
		// client to retry elsewhere.
		return rpctypes.ErrGRPCNoLeader
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unknown, err.Error())
}
