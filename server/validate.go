package server

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// These checks are the stateless ones etcd makes before a request reaches
// its state machine; the stateful ones (leases, revisions) are the writer's.

func checkRange(r *pb.RangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

func checkPut(r *pb.PutRequest) error {
	switch {
	case len(r.Key) == 0:
		return rpctypes.ErrGRPCEmptyKey
	case r.IgnoreValue && len(r.Value) != 0:
		return rpctypes.ErrGRPCValueProvided
	case r.IgnoreLease && r.Lease != 0:
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

func checkDelete(r *pb.DeleteRangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}

// checkTxn bounds each level by maxOps; nested levels share what the outer
// level left, as in etcd.
func checkTxn(r *pb.TxnRequest, maxOps int) error {
	n := max(len(r.Compare), len(r.Success), len(r.Failure))
	if n > maxOps {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.Compare {
		if len(c.Key) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			if err := checkOp(op, maxOps-n); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkOp(op *pb.RequestOp, maxOps int) error {
	switch x := op.Request.(type) {
	case *pb.RequestOp_RequestRange:
		return checkRange(x.RequestRange)
	case *pb.RequestOp_RequestPut:
		return checkPut(x.RequestPut)
	case *pb.RequestOp_RequestDeleteRange:
		return checkDelete(x.RequestDeleteRange)
	case *pb.RequestOp_RequestTxn:
		return checkTxn(x.RequestTxn, maxOps)
	default:
		return rpctypes.ErrGRPCKeyNotFound // an empty union, as etcd answers it
	}
}

// span is a key interval of a delete: [start, end), or one key when end is
// empty.
type span struct{ start, end string }

func (s span) contains(k string) bool {
	if s.end == "" {
		return k == s.start
	}
	// A "from key" end ("\x00") sorts below its start, so like etcd's
	// interval check it never matches.
	return k >= s.start && k < s.end
}

// checkIntervals rejects a txn that puts one key twice, or puts a key a
// delete of the same path also touches. Puts in a nested txn's success and
// failure branches may repeat each other since only one runs.
func checkIntervals(reqs []*pb.RequestOp) (map[string]bool, []span, error) {
	var dels []span
	for _, op := range reqs {
		if d, ok := op.Request.(*pb.RequestOp_RequestDeleteRange); ok && d.RequestDeleteRange != nil {
			dels = append(dels, span{string(d.RequestDeleteRange.Key), string(d.RequestDeleteRange.RangeEnd)})
		}
	}
	deleted := func(k string) bool {
		for _, d := range dels {
			if d.contains(k) {
				return true
			}
		}
		return false
	}
	puts := map[string]bool{}
	for _, op := range reqs {
		t, ok := op.Request.(*pb.RequestOp_RequestTxn)
		if !ok || t.RequestTxn == nil {
			continue
		}
		putsThen, delsThen, err := checkIntervals(t.RequestTxn.Success)
		if err != nil {
			return nil, nil, err
		}
		putsElse, delsElse, err := checkIntervals(t.RequestTxn.Failure)
		if err != nil {
			return nil, nil, err
		}
		for k := range putsThen {
			if puts[k] || deleted(k) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = true
		}
		for k := range putsElse {
			if (puts[k] && !putsThen[k]) || deleted(k) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = true
		}
		dels = append(dels, delsThen...)
		dels = append(dels, delsElse...)
	}
	for _, op := range reqs {
		p, ok := op.Request.(*pb.RequestOp_RequestPut)
		if !ok || p.RequestPut == nil {
			continue
		}
		k := string(p.RequestPut.Key)
		if puts[k] || deleted(k) {
			return nil, nil, rpctypes.ErrGRPCDuplicateKey
		}
		// etcd 3.7 lets an ignore_value/ignore_lease put follow a "from
		// key" delete covering it and then crashes applying it; refuse it.
		if p.RequestPut.IgnoreValue || p.RequestPut.IgnoreLease {
			for _, d := range dels {
				if d.end == "\x00" && k >= d.start {
					return nil, nil, rpctypes.ErrGRPCDuplicateKey
				}
			}
		}
		puts[k] = true
	}
	return puts, dels, nil
}
