package server

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func del(key, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: []byte(end)}}}
}

func put(key string, ignoreValue bool) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), IgnoreValue: ignoreValue}}}
}

// etcd 3.7.3 accepts these and then panics in its apply loop; Axon refuses
// the ignore_value case and otherwise answers as etcd's interval check does.
func TestCheckIntervalsFromKeyDelete(t *testing.T) {
	cases := []struct {
		name string
		ops  []*pb.RequestOp
		want error
	}{
		{"ignore_value put under from-key delete", []*pb.RequestOp{del("a", "\x00"), put("b", true)}, rpctypes.ErrGRPCDuplicateKey},
		{"plain put under from-key delete (etcd allows)", []*pb.RequestOp{del("a", "\x00"), put("b", false)}, nil},
		{"put inside ranged delete", []*pb.RequestOp{del("a", "c"), put("b", false)}, rpctypes.ErrGRPCDuplicateKey},
		{"put outside ranged delete", []*pb.RequestOp{del("a", "c"), put("c", false)}, nil},
		{"same key twice", []*pb.RequestOp{put("x", false), put("x", false)}, rpctypes.ErrGRPCDuplicateKey},
	}
	for _, c := range cases {
		if _, _, err := checkIntervals(c.ops); err != c.want {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}
