package server

import (
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"
)

// FuzzCheckTxn feeds arbitrary bytes through the request decode and
// validation path a Txn takes before the writer sees it: protobuf decoding
// (as gRPC's codec does), checkTxn, checkIntervals on both branches, and
// the quota's cost. Nothing may panic; every refusal is one of etcd's
// validation errors; the checks are deterministic, survive a re-encoding,
// and a larger --max-txn-ops never refuses what a smaller one accepted.
// Seeds: testdata/fuzz/FuzzCheckTxn.
//
//	go test -run XXX -fuzz FuzzCheckTxn -fuzztime 30s ./server
func FuzzCheckTxn(f *testing.F) {
	for _, t := range fuzzSeedTxns() {
		b, err := proto.Marshal(t)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint8(4))
	}
	f.Fuzz(func(t *testing.T, data []byte, maxOps uint8) {
		var r pb.TxnRequest
		if proto.Unmarshal(data, &r) != nil {
			return
		}
		n := int(maxOps) + 1
		err := validateTxn(&r, n)
		if err != nil && !knownValidationError(err) {
			t.Fatalf("unexpected error %v", err)
		}
		if again := validateTxn(&r, n); !errors.Is(again, err) {
			t.Fatalf("not deterministic: %v then %v", err, again)
		}
		if err == nil {
			if e := validateTxn(&r, n+1); e != nil {
				t.Fatalf("accepted with max %d, refused with %d: %v", n, n+1, e)
			}
			// Accepted puts never repeat a key at the top level.
			seen := map[string]bool{}
			for _, op := range r.Success {
				if p := op.GetRequestPut(); p != nil {
					if seen[string(p.Key)] {
						t.Fatalf("duplicate put of %q accepted", p.Key)
					}
					seen[string(p.Key)] = true
				}
			}
		}
		b, merr := proto.Marshal(&r)
		if merr != nil {
			t.Fatal(merr)
		}
		var r2 pb.TxnRequest
		if uerr := proto.Unmarshal(b, &r2); uerr != nil {
			t.Fatalf("re-decode: %v", uerr)
		}
		if e := validateTxn(&r2, n); !errors.Is(e, err) {
			t.Fatalf("after re-encoding: %v, before %v", e, err)
		}
		if cost := requestCost(methodTxn, &r); (cost > 0) != txnHasPut(&r) {
			t.Fatalf("quota cost %d with puts=%v", cost, txnHasPut(&r))
		}
	})
}

// validateTxn is what kvService.Txn checks before size and writing.
func validateTxn(r *pb.TxnRequest, maxOps int) error {
	if err := checkTxn(r, maxOps); err != nil {
		return err
	}
	if _, _, err := checkIntervals(r.Success); err != nil {
		return err
	}
	_, _, err := checkIntervals(r.Failure)
	return err
}

func knownValidationError(err error) bool {
	for _, known := range []error{rpctypes.ErrGRPCTooManyOps, rpctypes.ErrGRPCEmptyKey, rpctypes.ErrGRPCValueProvided,
		rpctypes.ErrGRPCLeaseProvided, rpctypes.ErrGRPCInvalidSortOption, rpctypes.ErrGRPCKeyNotFound, rpctypes.ErrGRPCDuplicateKey} {
		if errors.Is(err, known) {
			return true
		}
	}
	return false
}

func fuzzSeedTxns() []*pb.TxnRequest {
	put := func(k string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte("v")}}}
	}
	del := func(k, end string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: []byte(end)}}}
	}
	get := func(k string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(k)}}}
	}
	nested := func(t *pb.TxnRequest) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
	}
	cmpMod := &pb.Compare{Key: []byte("/registry/pods/a"), Target: pb.Compare_MOD, Result: pb.Compare_EQUAL}
	return []*pb.TxnRequest{
		// kube-apiserver's create, update and delete shapes
		{Compare: []*pb.Compare{cmpMod}, Success: []*pb.RequestOp{put("/registry/pods/a")}},
		{Compare: []*pb.Compare{cmpMod}, Success: []*pb.RequestOp{put("/registry/pods/a")}, Failure: []*pb.RequestOp{get("/registry/pods/a")}},
		{Compare: []*pb.Compare{cmpMod}, Success: []*pb.RequestOp{del("/registry/pods/a", "")}, Failure: []*pb.RequestOp{get("/registry/pods/a")}},
		// duplicates and overlaps
		{Success: []*pb.RequestOp{put("a"), put("a")}},
		{Success: []*pb.RequestOp{del("a", "c"), put("b")}},
		{Success: []*pb.RequestOp{del("a", "\x00"), {Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("b"), IgnoreValue: true}}}}},
		{Success: []*pb.RequestOp{nested(&pb.TxnRequest{Success: []*pb.RequestOp{put("x")}, Failure: []*pb.RequestOp{put("x")}}), put("y")}},
		{Success: []*pb.RequestOp{nested(&pb.TxnRequest{Success: []*pb.RequestOp{put("x")}}), put("x")}},
		// too many ops, empty keys, empty unions, bad sort options
		{Success: []*pb.RequestOp{put("1"), put("2"), put("3"), put("4"), put("5"), put("6")}},
		{Compare: []*pb.Compare{{}}, Success: []*pb.RequestOp{{}}},
		{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k"), SortOrder: 9}}}}},
	}
}
