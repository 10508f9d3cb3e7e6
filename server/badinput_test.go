package server_test

// Bad-input tests: each invalid request goes to a real etcd and to Axon; the
// gRPC code and message must match etcd's, and afterwards neither server's
// data (every key at the current revision, and the revision itself) may
// have changed. Helpers (diffTarget, diffOp, nResp) live in diff_test.go.

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// badMaxRequestBytes is small so that an oversized request is cheap.
const badMaxRequestBytes = 64 * 1024

// badGRPCOverhead is what etcd adds to max-request-bytes for its gRPC
// receive limit.
const badGRPCOverhead = 512 * 1024

// badLease is granted on both servers and attached to one key.
const badLease = 0x2001

// badMissingLease is never granted.
const badMissingLease = 0x2fff

type badCase struct {
	name string
	// op builds the request from the current revision.
	op func(cur int64) diffOp
	// raw, when set, is sent with the generated KV client instead of
	// clientv3 (which rejects some bad ranges before sending them).
	raw func(cur int64) *pb.RangeRequest
	// want is the message etcd answers with; it checks that the case
	// provokes what it is named after.
	want string
}

// TestBadInput compares Axon (memory backend) with etcd on invalid requests.
func TestBadInput(t *testing.T) {
	etcd := testenv.StartEtcd(t, testenv.WithEtcdMaxRequestBytes(badMaxRequestBytes))
	_, axon := testenv.StartAxon(t, server.Config{Backend: "memory", MaxRequestBytes: badMaxRequestBytes})
	runBadInput(t, newDiffTarget(t, "etcd", etcd.Endpoints()), newDiffTarget(t, "axon", axon.Endpoints()))
}

// TestBadInputHarnessSanity runs the same cases etcd against etcd: every
// case must provoke the error it is named after and leave the data alone.
func TestBadInputHarnessSanity(t *testing.T) {
	a := testenv.StartEtcd(t, testenv.WithEtcdMaxRequestBytes(badMaxRequestBytes))
	b := testenv.StartEtcd(t, testenv.WithEtcdMaxRequestBytes(badMaxRequestBytes))
	runBadInput(t, newDiffTarget(t, "etcd-a", a.Endpoints()), newDiffTarget(t, "etcd-b", b.Endpoints()))
}

func runBadInput(t *testing.T, ref, cand *diffTarget) {

	// The same small history on both sides.
	var cur int64
	for i, op := range []diffOp{
		{grant: badLease},
		badPut("a", "1", 0),
		badPut("a", "2", 0),
		badPut("b", "x", 0),
		badPut("c/1", "y", badLease),
		badPut("c/2", "z", 0),
		kvOp(&pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("b")}}),
		badPut("b", "again", 0),
		badPut("\x00k", "\xff", 0),
	} {
		r, c := ref.exec(op), cand.exec(op)
		if r.Msg != "" {
			t.Fatalf("setup #%d %s: %s failed: %s", i, op, ref.name, r)
		}
		if d := cmp.Diff(r, c); d != "" {
			t.Fatalf("setup #%d %s: answers differ (-%s +%s):\n%s", i, op, ref.name, cand.name, d)
		}
		if r.Put != nil {
			cur = r.Put.Rev
		}
	}
	// History now spans revisions 1..cur; cur is 9 (8 writes after the
	// empty store's revision 1).

	missing := "never-written"
	big := strings.Repeat("v", badMaxRequestBytes+1024)
	huge := strings.Repeat("v", badMaxRequestBytes+badGRPCOverhead+1024)
	const (
		msgEmptyKey    = "etcdserver: key is not provided"
		msgFuture      = "etcdserver: mvcc: required revision is a future revision"
		msgCompacted   = "etcdserver: mvcc: required revision has been compacted"
		msgTooMany     = "etcdserver: too many operations in txn request"
		msgDuplicate   = "etcdserver: duplicate key given in txn request"
		msgTooLarge    = "etcdserver: request is too large"
		msgNoLease     = "etcdserver: requested lease not found"
		msgLeaseExists = "etcdserver: lease already exists"
		msgKeyNotFound = "etcdserver: key not found"
		msgValueGiven  = "etcdserver: value is provided"
		msgLeaseGiven  = "etcdserver: lease is provided"
		msgBadSort     = "etcdserver: invalid sort option"
	)
	puts := func(n int, key func(i int) string) []*pb.RequestOp {
		ops := make([]*pb.RequestOp, n)
		for i := range ops {
			ops[i] = putOp(&pb.PutRequest{Key: []byte(key(i)), Value: []byte("v")})
		}
		return ops
	}
	distinct := func(i int) string { return "many/" + strings.Repeat("x", i+1) }
	compactTo := cur - 3

	cases := []badCase{
		// Empty keys.
		{name: "put-empty-key", want: msgEmptyKey, op: func(int64) diffOp {
			return badPut("", "v", 0)
		}},
		{name: "range-empty-key", want: msgEmptyKey, op: func(int64) diffOp {
			return badRange(&pb.RangeRequest{})
		}},
		{name: "range-empty-key-with-end", want: msgEmptyKey, op: func(int64) diffOp {
			return badRange(&pb.RangeRequest{RangeEnd: []byte("z")})
		}},
		{name: "delete-empty-key", want: msgEmptyKey, op: func(int64) diffOp {
			return kvOp(&pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{}})
		}},
		{name: "delete-empty-key-with-end", want: msgEmptyKey, op: func(int64) diffOp {
			return kvOp(&pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{RangeEnd: []byte{0}}})
		}},
		{name: "txn-compare-empty-key", want: msgEmptyKey, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{
				Compare: []*pb.Compare{{Target: pb.Compare_VERSION, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_Version{}}},
				Success: []*pb.RequestOp{putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("t")})},
			})
		}},
		{name: "txn-put-empty-key-in-failure-branch", want: msgEmptyKey, op: func(int64) diffOp {
			// Validation covers both branches, not just the one taken.
			return badTxn(&pb.TxnRequest{
				Success: []*pb.RequestOp{putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("t")})},
				Failure: []*pb.RequestOp{putOp(&pb.PutRequest{Value: []byte("t")})},
			})
		}},
		{name: "txn-nested-range-empty-key", want: msgEmptyKey, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("t")}),
				txnOp(&pb.TxnRequest{Success: []*pb.RequestOp{rangeOp(&pb.RangeRequest{})}}),
			}})
		}},

		// Future revisions.
		{name: "range-future-revision", want: msgFuture, op: func(cur int64) diffOp {
			return badRange(&pb.RangeRequest{Key: []byte("a"), Revision: cur + 1})
		}},
		{name: "range-far-future-revision-count-only", want: msgFuture, op: func(cur int64) diffOp {
			return badRange(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: cur + 1000, CountOnly: true})
		}},
		{name: "txn-range-future-revision", want: msgFuture, op: func(cur int64) diffOp {
			// The range follows a put: the check is against the revision
			// before the txn, so cur+1 is still in the future.
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("t")}),
				rangeOp(&pb.RangeRequest{Key: []byte("a"), Revision: cur + 1}),
			}})
		}},
		{name: "compact-future-revision", want: msgFuture, op: func(cur int64) diffOp {
			return diffOp{compact: cur + 1}
		}},

		// Too many operations (default max-txn-ops is 128).
		{name: "txn-too-many-puts", want: msgTooMany, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Success: puts(129, distinct)})
		}},
		{name: "txn-too-many-compares", want: msgTooMany, op: func(int64) diffOp {
			cmps := make([]*pb.Compare, 129)
			for i := range cmps {
				cmps[i] = &pb.Compare{Key: []byte("a"), Target: pb.Compare_VERSION, Result: pb.Compare_GREATER, TargetUnion: &pb.Compare_Version{}}
			}
			return badTxn(&pb.TxnRequest{Compare: cmps})
		}},
		{name: "txn-too-many-ops-in-failure-branch", want: msgTooMany, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{
				Success: []*pb.RequestOp{putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("t")})},
				Failure: puts(129, distinct),
			})
		}},
		{name: "txn-nested-over-remaining-budget", want: msgTooMany, op: func(int64) diffOp {
			// 100 ops at the top leave 28 for the nested txn, which has 29.
			ops := puts(99, distinct)
			ops = append(ops, txnOp(&pb.TxnRequest{Success: puts(29, func(i int) string { return "nested/" + strings.Repeat("y", i+1) })}))
			return badTxn(&pb.TxnRequest{Success: ops})
		}},

		// Duplicate keys.
		{name: "txn-duplicate-put", want: msgDuplicate, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("1")}),
				putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("2")}),
			}})
		}},
		{name: "txn-put-and-delete-range-overlap", want: msgDuplicate, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("c/1"), Value: []byte("1")}),
				{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("c/"), RangeEnd: []byte("c0")}}},
			}})
		}},
		{name: "txn-duplicate-put-in-nested-txn", want: msgDuplicate, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("1")}),
				txnOp(&pb.TxnRequest{Failure: []*pb.RequestOp{putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("2")})}}),
			}})
		}},
		{name: "txn-duplicate-put-in-failure-branch", want: msgDuplicate, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("b"), Value: []byte("1")}),
				putOp(&pb.PutRequest{Key: []byte("b"), Value: []byte("2")}),
			}})
		}},

		// Request size (max-request-bytes 64 KiB).
		{name: "put-too-large", want: msgTooLarge, op: func(int64) diffOp {
			return badPut("a", big, 0)
		}},
		{name: "txn-too-large", want: msgTooLarge, op: func(int64) diffOp {
			half := big[:len(big)/2+1024]
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte(half)}),
				putOp(&pb.PutRequest{Key: []byte("b"), Value: []byte(half)}),
			}})
		}},
		{name: "put-over-grpc-receive-limit", op: func(int64) diffOp {
			// Past max-request-bytes + 512 KiB gRPC itself refuses the
			// message (ResourceExhausted, with both sizes in the text).
			return badPut("a", huge, 0)
		}},

		// Leases.
		{name: "put-missing-lease", want: msgNoLease, op: func(int64) diffOp {
			return badPut("a", "v", badMissingLease)
		}},
		{name: "txn-put-missing-lease", want: msgNoLease, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("b"), Value: []byte("t")}),
				putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("t"), Lease: badMissingLease}),
			}})
		}},
		{name: "lease-grant-existing-id", want: msgLeaseExists, op: func(int64) diffOp {
			return diffOp{grant: badLease}
		}},
		{name: "lease-revoke-missing", want: msgNoLease, op: func(int64) diffOp {
			return diffOp{revoke: badMissingLease}
		}},

		// ignore_value / ignore_lease.
		{name: "put-ignore-value-missing-key", want: msgKeyNotFound, op: func(int64) diffOp {
			return diffOp{kv: putOp(&pb.PutRequest{Key: []byte(missing), IgnoreValue: true})}
		}},
		{name: "put-ignore-lease-missing-key", want: msgKeyNotFound, op: func(int64) diffOp {
			return diffOp{kv: putOp(&pb.PutRequest{Key: []byte(missing), Value: []byte("v"), IgnoreLease: true})}
		}},
		{name: "txn-put-ignore-value-missing-key", want: msgKeyNotFound, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("t")}),
				putOp(&pb.PutRequest{Key: []byte(missing), IgnoreValue: true}),
			}})
		}},
		{name: "put-ignore-value-with-value", want: msgValueGiven, op: func(int64) diffOp {
			return diffOp{kv: putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("v"), IgnoreValue: true})}
		}},
		{name: "put-ignore-lease-with-lease", want: msgLeaseGiven, op: func(int64) diffOp {
			return diffOp{kv: putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("v"), Lease: badLease, IgnoreLease: true})}
		}},

		// Sort options outside the enums.
		{name: "range-invalid-sort-order", want: msgBadSort, raw: func(int64) *pb.RangeRequest {
			return &pb.RangeRequest{Key: []byte("a"), SortOrder: 7}
		}},
		{name: "range-invalid-sort-target", want: msgBadSort, raw: func(int64) *pb.RangeRequest {
			return &pb.RangeRequest{Key: []byte("a"), SortTarget: 9, SortOrder: pb.RangeRequest_ASCEND}
		}},
		{name: "txn-range-invalid-sort-order", want: msgBadSort, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{rangeOp(&pb.RangeRequest{Key: []byte("a"), SortOrder: 5})}})
		}},

		// Compaction: the first case compacts (a valid request that changes
		// no data), the rest read or compact below it.
		{name: "compact", op: func(int64) diffOp {
			return diffOp{compact: compactTo, physical: true}
		}},
		{name: "range-compacted-revision", want: msgCompacted, op: func(int64) diffOp {
			return badRange(&pb.RangeRequest{Key: []byte("a"), Revision: compactTo - 1})
		}},
		{name: "range-compacted-revision-count-only", want: msgCompacted, op: func(int64) diffOp {
			return badRange(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: 1, CountOnly: true})
		}},
		{name: "txn-range-compacted-revision", want: msgCompacted, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp(&pb.PutRequest{Key: []byte("a"), Value: []byte("t")}),
				rangeOp(&pb.RangeRequest{Key: []byte("a"), Revision: compactTo - 1}),
			}})
		}},
		{name: "compact-same-revision-again", want: msgCompacted, op: func(int64) diffOp {
			return diffOp{compact: compactTo}
		}},
		{name: "compact-older-revision", want: msgCompacted, op: func(int64) diffOp {
			return diffOp{compact: compactTo - 1}
		}},
		// etcd quirk: a negative revision means "current" in a plain Range,
		// but inside a Txn it is checked against the compaction point and
		// fails once anything has been compacted.
		{name: "range-negative-revision-after-compaction", op: func(int64) diffOp {
			return badRange(&pb.RangeRequest{Key: []byte("a"), Revision: -1})
		}},
		{name: "txn-range-negative-revision-after-compaction", want: msgCompacted, op: func(int64) diffOp {
			return badTxn(&pb.TxnRequest{Success: []*pb.RequestOp{rangeOp(&pb.RangeRequest{Key: []byte("a"), Revision: -1})}})
		}},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			refBefore, candBefore := ref.dump(), cand.dump()
			if d := cmp.Diff(refBefore, candBefore); d != "" {
				t.Fatalf("stores differ before the request (-%s +%s):\n%s", ref.name, cand.name, d)
			}
			var r, c nResp
			var desc string
			if tc.raw != nil {
				q := tc.raw(cur)
				desc = prototextRange(q)
				r, c = ref.execRawRange(q), cand.execRawRange(q)
			} else {
				op := tc.op(cur)
				desc = op.String()
				if len(desc) > 300 {
					desc = desc[:300] + "..."
				}
				r, c = ref.exec(op), cand.exec(op)
			}
			if tc.want != "" && r.Msg != tc.want {
				t.Fatalf("harness: %s answered\n%sbut the case expects %q\nrequest: %s", ref.name, r, tc.want, desc)
			}
			if d := cmp.Diff(r, c); d != "" {
				t.Errorf("answers differ\nrequest: %s\n%s:\n%s%s:\n%sdiff (-%s +%s):\n%s", desc, ref.name, r, cand.name, c, ref.name, cand.name, d)
			}
			refAfter, candAfter := ref.dump(), cand.dump()
			if d := cmp.Diff(refBefore, refAfter); d != "" {
				t.Fatalf("harness: %s's data changed (-before +after):\n%s", ref.name, d)
			}
			if d := cmp.Diff(candBefore, candAfter); d != "" {
				t.Errorf("%s's data changed (-before +after):\n%s", cand.name, d)
			}
		})
	}
}

func putOp(p *pb.PutRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: p}}
}

func rangeOp(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func txnOp(t *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
}

func badPut(k, v string, lease int64) diffOp {
	return diffOp{kv: putOp(&pb.PutRequest{Key: []byte(k), Value: []byte(v), Lease: lease})}
}

func badRange(r *pb.RangeRequest) diffOp { return diffOp{kv: rangeOp(r)} }

func badTxn(t *pb.TxnRequest) diffOp { return diffOp{kv: txnOp(t)} }

// dump reads every key at the current revision (linearizable).
func (d *diffTarget) dump() nResp {
	return d.exec(badRange(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}))
}

// execRawRange sends r with the generated KV client, bypassing clientv3's
// own checks.
func (d *diffTarget) execRawRange(r *pb.RangeRequest) nResp {
	ctx, cancel := context.WithTimeout(context.Background(), diffOpTimeout)
	defer cancel()
	resp, err := pb.NewKVClient(d.cli.ActiveConnection()).Range(ctx, r)
	if err != nil {
		return errResp(err)
	}
	return nResp{Range: normRange(r, resp)}
}

func prototextRange(r *pb.RangeRequest) string {
	return diffOp{kv: rangeOp(r)}.String()
}
