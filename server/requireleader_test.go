package server

import (
	"context"
	"errors"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// TestRequireLeader: a unary call made with clientv3.WithRequireLeader gets
// etcd's "no leader" exactly when the node knows no leader; without the
// metadata, or with a leader, the call goes through.
func TestRequireLeader(t *testing.T) {
	leaderless := &Server{cfg: Config{Backend: "tikv"}} // several nodes, no writer, no election yet
	single := &Server{}                                 // one node leads itself
	require := metadata.NewIncomingContext(context.Background(),
		metadata.Pairs(rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader))
	other := metadata.NewIncomingContext(context.Background(), metadata.Pairs("other", "x"))
	handler := func(context.Context, any) (any, error) { return "answered", nil }
	for _, tc := range []struct {
		name string
		s    *Server
		ctx  context.Context
		want error
	}{
		{"no leader, require leader", leaderless, require, rpctypes.ErrGRPCNoLeader},
		{"no leader, other metadata", leaderless, other, nil},
		{"no leader, no metadata", leaderless, context.Background(), nil},
		{"one node, require leader", single, require, nil},
	} {
		resp, err := tc.s.requireLeader(tc.ctx, nil, &grpc.UnaryServerInfo{}, handler)
		if !errors.Is(err, tc.want) || (err == nil && resp != "answered") {
			t.Errorf("%s: %v, %v; want %v", tc.name, resp, err, tc.want)
		}
	}
}
