package revision

import (
	"bytes"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/proto/axonpb"
)

// write is one request's changes: they all share the next main revision,
// which is consumed only if something changed.
type write struct {
	g       *group
	rev     int64 // the revision the changes get
	changes []*axonpb.Change
	evs     []*mvccpb.Event
	// before holds each touched key's state before this revision: events
	// carry it as prev_kv even when one transaction changes a key twice,
	// as etcd's watchers read prev_kv at the previous revision.
	before map[string]*axonpb.KeyValue
}

func (g *group) begin() *write { return &write{g: g, rev: g.rev + 1} }

// viewRev is the revision reads inside the request see, as etcd's
// storeTxnWrite does: the new revision once something changed.
func (w *write) viewRev() int64 {
	if len(w.changes) > 0 {
		return w.rev
	}
	return w.rev - 1
}

// Entries implements mvcc.Source for reads inside the request: the
// pending state at its view revision, the committed index below it
// (needsFlush guarantees the index and snapshot hold every older revision).
func (w *write) Entries(start, end []byte, rev int64, max int) ([]mvcc.Entry, int64, error) {
	if rev < w.viewRev() {
		return w.g.committed().Entries(start, end, rev, max)
	}
	es := w.g.entries(start, end)
	n := int64(len(es))
	if max >= 0 && len(es) > max {
		es = es[:max]
	}
	return es, n, nil
}

// Load implements mvcc.Source.
func (w *write) Load(e mvcc.Entry) (*axonpb.KeyValue, error) {
	return w.g.committed().Load(e)
}

// LoadMany implements mvcc.Source.
func (w *write) LoadMany(es []mvcc.Entry, fn func(i int, kv *axonpb.KeyValue) error) error {
	return w.g.committed().LoadMany(es, fn)
}

func (w *write) end() {
	if len(w.changes) == 0 {
		return
	}
	g := w.g
	g.rev = w.rev
	g.tx.EndRevision()
	g.recs = append(g.recs, &axonpb.RevisionRecord{Revision: w.rev, Changes: w.changes})
	g.pubs = append(g.pubs, pub{rev: w.rev, evs: w.evs})
}

func (g *group) apply(r *request) (any, error) {
	switch {
	case r.put != nil:
		if err := g.checkPut(r.put); err != nil {
			return nil, err
		}
		w := g.begin()
		resp, err := w.put(r.put)
		if err != nil {
			return nil, err
		}
		w.end()
		return resp, nil
	case r.del != nil:
		w := g.begin()
		resp, err := w.deleteRange(r.del)
		if err != nil {
			return nil, err
		}
		w.end()
		return resp, nil
	case r.txn != nil:
		return g.txn(r.txn)
	case r.compact != nil:
		return g.compact(r.compact)
	case r.grant != nil:
		g.tx.PutLease(r.grant)
		g.grants = append(g.grants, r.grant.Id)
		return nil, nil
	default:
		return g.revoke(r.revoke)
	}
}

func (g *group) checkPut(p *pb.PutRequest) error {
	if p.Lease != 0 && !g.leaseExists(p.Lease) {
		return rpctypes.ErrGRPCLeaseNotFound
	}
	if p.IgnoreValue || p.IgnoreLease {
		prev, err := g.latest(p.Key)
		if err != nil {
			return err
		}
		if prev == nil {
			return rpctypes.ErrGRPCKeyNotFound
		}
	}
	return nil
}

func (g *group) setAttach(id int64, key []byte, on bool) {
	g.attach[attachRef{id: id, key: string(key)}] = on
}

// eventPrev records key's state before the revision on first touch and
// returns it as the etcd prev_kv of an event.
func (w *write) eventPrev(key []byte, cur *axonpb.KeyValue) *mvccpb.KeyValue {
	if w.before == nil {
		w.before = map[string]*axonpb.KeyValue{}
	}
	b, seen := w.before[string(key)]
	if !seen {
		b = cur
		w.before[string(key)] = cur
	}
	if b == nil {
		return nil
	}
	return mvcc.ToEtcd(key, b)
}

func (w *write) put(p *pb.PutRequest) (*pb.PutResponse, error) {
	g := w.g
	prev, err := g.latest(p.Key)
	if err != nil {
		return nil, err
	}
	kv := &axonpb.KeyValue{Value: p.Value, ModRevision: w.rev, CreateRevision: w.rev, Version: 1, Lease: p.Lease}
	if prev != nil {
		kv.CreateRevision = prev.CreateRevision
		kv.Version = prev.Version + 1
		if p.IgnoreValue {
			kv.Value = prev.Value
		}
		if p.IgnoreLease {
			kv.Lease = prev.Lease
		}
		if prev.Lease != 0 && prev.Lease != kv.Lease {
			g.setAttach(prev.Lease, p.Key, false)
		}
	}
	if kv.Lease != 0 && (prev == nil || prev.Lease != kv.Lease) {
		g.setAttach(kv.Lease, p.Key, true)
	}
	key := append([]byte(nil), p.Key...)
	g.overlay[string(key)] = kv
	if err := g.tx.Put(key, kv); err != nil {
		return nil, internalError{err}
	}
	w.changes = append(w.changes, &axonpb.Change{Key: key, Kv: kv})
	ev := &mvccpb.Event{Type: mvccpb.PUT, Kv: mvcc.ToEtcd(key, kv)}
	if evPrev := w.eventPrev(key, prev); kv.CreateRevision != kv.ModRevision {
		ev.PrevKv = evPrev // etcd never sends prev_kv with a create
	}
	w.evs = append(w.evs, ev)
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: w.rev}}
	if p.PrevKv && prev != nil {
		resp.PrevKv = mvcc.ToEtcd(key, prev)
	}
	return resp, nil
}

// del deletes key, which exists with state prev.
func (w *write) del(key []byte, prev *axonpb.KeyValue) (*mvccpb.KeyValue, error) {
	g := w.g
	key = append([]byte(nil), key...)
	g.overlay[string(key)] = nil
	if err := g.tx.Delete(key, w.rev); err != nil {
		return nil, internalError{err}
	}
	w.changes = append(w.changes, &axonpb.Change{Delete: true, Key: key, Kv: &axonpb.KeyValue{ModRevision: w.rev}})
	prevKV := mvcc.ToEtcd(key, prev)
	w.evs = append(w.evs, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: key, ModRevision: w.rev}, PrevKv: w.eventPrev(key, prev)})
	if prev.Lease != 0 {
		g.setAttach(prev.Lease, key, false)
	}
	return prevKV, nil
}

func (w *write) deleteRange(d *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	victims := w.g.entries(d.Key, d.RangeEnd)
	resp := &pb.DeleteRangeResponse{Deleted: int64(len(victims))}
	var delErr error
	err := w.LoadMany(victims, func(i int, kv *axonpb.KeyValue) error {
		prev, err := w.del([]byte(victims[i].Key), kv)
		if err != nil {
			delErr = err
			return err
		}
		if d.PrevKv {
			resp.PrevKvs = append(resp.PrevKvs, prev)
		}
		return nil
	})
	if delErr != nil {
		return nil, delErr
	}
	if err != nil {
		return nil, internalError{err}
	}
	resp.Header = &pb.ResponseHeader{Revision: w.viewRev()}
	return resp, nil
}

func (w *write) rangeOp(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	view := w.viewRev()
	resp, err := mvcc.ExecRange(w, r, view, w.g.s.compacted.Load())
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// txn evaluates every compare (nested ones included) against the state
// before the transaction, checks the chosen path, then applies it, as etcd.
func (g *group) txn(t *pb.TxnRequest) (*pb.TxnResponse, error) {
	path, err := g.txnPath(t)
	if err != nil {
		return nil, err
	}
	if _, err := g.checkTxn(t, path); err != nil {
		return nil, err
	}
	w := g.begin()
	resp := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
	if _, err := w.execTxn(t, path, resp); err != nil {
		return nil, err
	}
	resp.Header.Revision = w.viewRev()
	w.end()
	return resp, nil
}

func (g *group) txnPath(t *pb.TxnRequest) ([]bool, error) {
	ok, err := g.compares(t.Compare)
	if err != nil {
		return nil, err
	}
	path := []bool{ok}
	ops := t.Success
	if !ok {
		ops = t.Failure
	}
	for _, op := range ops {
		if nt, isTxn := op.Request.(*pb.RequestOp_RequestTxn); isTxn {
			sub, err := g.txnPath(nt.RequestTxn)
			if err != nil {
				return nil, err
			}
			path = append(path, sub...)
		}
	}
	return path, nil
}

func (g *group) checkTxn(t *pb.TxnRequest, path []bool) (int, error) {
	ops := t.Success
	if !path[0] {
		ops = t.Failure
	}
	used := 0
	for _, op := range ops {
		var err error
		switch x := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rev := x.RequestRange.Revision
			switch {
			case rev == 0:
			case rev > g.rev:
				err = rpctypes.ErrGRPCFutureRev
			case rev < g.s.compacted.Load():
				err = rpctypes.ErrGRPCCompacted
			}
		case *pb.RequestOp_RequestPut:
			err = g.checkPut(x.RequestPut)
		case *pb.RequestOp_RequestTxn:
			var n int
			n, err = g.checkTxn(x.RequestTxn, path[1+used:])
			used += n + 1
		}
		if err != nil {
			return 0, err
		}
	}
	return used, nil
}

func (w *write) execTxn(t *pb.TxnRequest, path []bool, resp *pb.TxnResponse) (int, error) {
	resp.Succeeded = path[0]
	ops := t.Success
	if !path[0] {
		ops = t.Failure
	}
	used := 0
	resp.Responses = make([]*pb.ResponseOp, 0, len(ops))
	for _, op := range ops {
		out := &pb.ResponseOp{}
		switch x := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			r, err := w.rangeOp(x.RequestRange)
			if err != nil {
				return 0, err
			}
			out.Response = &pb.ResponseOp_ResponseRange{ResponseRange: r}
		case *pb.RequestOp_RequestPut:
			r, err := w.put(x.RequestPut)
			if err != nil {
				return 0, err
			}
			out.Response = &pb.ResponseOp_ResponsePut{ResponsePut: r}
		case *pb.RequestOp_RequestDeleteRange:
			r, err := w.deleteRange(x.RequestDeleteRange)
			if err != nil {
				return 0, err
			}
			out.Response = &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: r}
		case *pb.RequestOp_RequestTxn:
			sub := &pb.TxnResponse{Header: &pb.ResponseHeader{}}
			n, err := w.execTxn(x.RequestTxn, path[1+used:], sub)
			if err != nil {
				return 0, err
			}
			used += n + 1
			out.Response = &pb.ResponseOp_ResponseTxn{ResponseTxn: sub}
		}
		resp.Responses = append(resp.Responses, out)
	}
	return used, nil
}

func (g *group) compares(cs []*pb.Compare) (bool, error) {
	for _, c := range cs {
		ok, err := g.compare(c)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// compare holds when every key of its range satisfies it; over an empty
// range it compares against a zero key-value, except VALUE, which fails.
func (g *group) compare(c *pb.Compare) (bool, error) {
	var es []mvcc.Entry
	if len(c.RangeEnd) == 0 {
		if e, ok := g.state(c.Key); ok {
			es = append(es, e)
		}
	} else {
		es = g.entries(c.Key, c.RangeEnd)
	}
	if len(es) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false, nil
		}
		return compareKV(c, &axonpb.KeyValue{}), nil
	}
	// Revisions and versions come from the index; only value and lease
	// compares read the stored state.
	needValue := c.Target == pb.Compare_VALUE || c.Target == pb.Compare_LEASE
	for _, e := range es {
		kv := &axonpb.KeyValue{CreateRevision: e.Create, ModRevision: e.Mod, Version: e.Version}
		if needValue {
			var err error
			if kv, err = g.committed().Load(e); err != nil {
				return false, internalError{err}
			}
		}
		if !compareKV(c, kv) {
			return false, nil
		}
	}
	return true, nil
}

func compareKV(c *pb.Compare, kv *axonpb.KeyValue) bool {
	var res int
	switch c.Target {
	case pb.Compare_VALUE:
		res = bytes.Compare(kv.Value, c.GetValue())
	case pb.Compare_CREATE:
		res = cmpInt(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		res = cmpInt(kv.ModRevision, c.GetModRevision())
	case pb.Compare_VERSION:
		res = cmpInt(kv.Version, c.GetVersion())
	case pb.Compare_LEASE:
		res = cmpInt(kv.Lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return res == 0
	case pb.Compare_NOT_EQUAL:
		return res != 0
	case pb.Compare_GREATER:
		return res > 0
	case pb.Compare_LESS:
		return res < 0
	}
	return true
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (g *group) revoke(id int64) (any, error) {
	if !g.leaseExists(id) {
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	// Revocation (by a client or by expiry) in the writer, before its
	// deletions are staged. The error term acts as a backend failure: the
	// whole group fails.
	// gofail: var leaseRevokeApply struct{}
	// return nil, internalError{errFailpoint}
	w := g.begin()
	keys := g.leaseKeys(id)
	sort.Slice(keys, func(i, j int) bool { return bytes.Compare(keys[i], keys[j]) < 0 })
	for _, k := range keys {
		prev, err := g.latest(k)
		if err != nil {
			return nil, err
		}
		if prev != nil && prev.Lease == id {
			if _, err := w.del(k, prev); err != nil {
				return nil, err
			}
		}
		g.setAttach(id, k, false)
	}
	g.tx.DeleteLease(id)
	g.revokes = append(g.revokes, id)
	w.end()
	return g.rev, nil
}

func (g *group) compact(c *pb.CompactionRequest) (any, error) {
	comp := g.s.compacted.Load()
	if g.compactTo > comp {
		comp = g.compactTo
	}
	switch {
	case c.Revision <= comp:
		return nil, rpctypes.ErrGRPCCompacted
	case c.Revision > g.rev:
		return nil, rpctypes.ErrGRPCFutureRev
	}
	g.compactTo = c.Revision
	g.tx.SetCompacted(c.Revision)
	res := &pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: g.rev}}
	if c.Physical {
		done := make(chan struct{})
		g.compactWaiters = append(g.compactWaiters, done)
		return physical{res, done}, nil
	}
	return res, nil
}

// physical is a compaction answer that waits for the history removal.
type physical struct {
	resp *pb.CompactionResponse
	done <-chan struct{}
}
