package server

import (
	"context"
	"errors"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/axon-kv/axon/revision"
)

// leaseRouter serves the Lease API from the local table on the leader and
// forwards it to the leader on a follower (the lease table and its expiry
// live with the single writer).
type leaseRouter struct {
	pb.UnimplementedLeaseServer
	s     *Server
	local pb.LeaseServer
}

// route runs a lease call locally while leading, else on the leader.
func route[T any](ctx context.Context, l *leaseRouter, local func() (T, error), remote func(context.Context, pb.LeaseClient) (T, error)) (T, error) {
	return doWrite(ctx, l.s,
		func(*revision.Sequencer) (T, error) { return local() },
		func(ctx context.Context, c *grpc.ClientConn) (T, error) { return remote(ctx, pb.NewLeaseClient(c)) })
}

func (l *leaseRouter) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return route(ctx, l, func() (*pb.LeaseGrantResponse, error) { return l.local.LeaseGrant(ctx, r) },
		func(ctx context.Context, c pb.LeaseClient) (*pb.LeaseGrantResponse, error) {
			return c.LeaseGrant(ctx, r)
		})
}

func (l *leaseRouter) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return route(ctx, l, func() (*pb.LeaseRevokeResponse, error) { return l.local.LeaseRevoke(ctx, r) },
		func(ctx context.Context, c pb.LeaseClient) (*pb.LeaseRevokeResponse, error) {
			return c.LeaseRevoke(ctx, r)
		})
}

func (l *leaseRouter) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	return route(ctx, l, func() (*pb.LeaseTimeToLiveResponse, error) { return l.local.LeaseTimeToLive(ctx, r) },
		func(ctx context.Context, c pb.LeaseClient) (*pb.LeaseTimeToLiveResponse, error) {
			return c.LeaseTimeToLive(ctx, r)
		})
}

func (l *leaseRouter) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return route(ctx, l, func() (*pb.LeaseLeasesResponse, error) { return l.local.LeaseLeases(ctx, r) },
		func(ctx context.Context, c pb.LeaseClient) (*pb.LeaseLeasesResponse, error) {
			return c.LeaseLeases(ctx, r)
		})
}

// LeaseKeepAlive is served locally while leading; a follower relays the
// stream to the leader.
func (l *leaseRouter) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	if !l.s.multiNode() || l.s.writer() != nil {
		return l.local.LeaseKeepAlive(stream)
	}
	c, err := l.s.leaderConn()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(forwardCtx(stream.Context()))
	defer cancel()
	up, err := pb.NewLeaseClient(c).LeaseKeepAlive(ctx)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				up.CloseSend()
				if errors.Is(err, io.EOF) {
					err = nil
				}
				errc <- err
				return
			}
			if err := up.Send(req); err != nil {
				errc <- err
				return
			}
		}
	}()
	go func() {
		for {
			resp, err := up.Recv()
			if err != nil {
				errc <- err
				return
			}
			l.s.fill(resp.Header)
			if err := stream.Send(resp); err != nil {
				errc <- err
				return
			}
		}
	}()
	err = <-errc
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
