package robustness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The keyspace looks like Kubernetes': a few resources, each a prefix of
// objects that are listed, watched from the list's revision, and updated
// with optimistic concurrency (compare mod_revision, then put).
var resources = []string{"/registry/pods/", "/registry/configmaps/", "/registry/leases/"}

const (
	objectsPerResource = 40
	pageSize           = 10
	opTimeout          = 2 * time.Second
)

// traffic runs the workers until stop is closed.
type traffic struct {
	rec     *recorder
	clients func() []*clientv3.Client // the current process generation's
	lease   atomic.Int64              // the lease new objects attach to
	// floor is the highest revision the history collector has seen:
	// compaction never goes above it, so the collector can always resume.
	floor func() int64
}

func (tr *traffic) client(i int) *clientv3.Client {
	cs := tr.clients()
	return cs[i%len(cs)]
}

func (tr *traffic) run(stop <-chan struct{}, readers, writers int) {
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() { tr.writer(stop, i) })
	}
	for i := range readers {
		wg.Go(func() { tr.reader(stop, writers+i) })
	}
	wg.Go(func() { tr.leases(stop) })
	wg.Go(func() { tr.compactor(stop) })
	wg.Wait()
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// pause after an error: the process may be down for a restart.
func pause(err error) {
	if err != nil {
		time.Sleep(20 * time.Millisecond)
	}
}

func objectKey(rnd *rand.Rand) string {
	return fmt.Sprintf("%so%02d", resources[rnd.IntN(len(resources))], rnd.IntN(objectsPerResource))
}

// writer: ~90% optimistic updates, 5% creates, 5% deletes. An update
// first reads the object (a recorded linearizable Get).
func (tr *traffic) writer(stop <-chan struct{}, id int) {
	rnd := rand.New(rand.NewPCG(uint64(id), 11))
	for !stopped(stop) {
		cli := tr.client(id)
		key := objectKey(rnd)
		switch r := rnd.IntN(100); {
		case r < 5:
			pause(tr.create(cli, id, key))
		case r < 10:
			pause(tr.delete(cli, id, key))
		default:
			got := tr.get(cli, id, key)
			pause(got.err)
			if got.err != nil {
				continue
			}
			if len(got.kvs) == 0 {
				pause(tr.create(cli, id, key))
				continue
			}
			pause(tr.update(cli, id, key, got.kvs[0].ModRevision, got.kvs[0].Lease))
		}
	}
}

// valueSeq makes every put value of the test binary unique, across runs
// and restarts: the checks find a write in the history by its value.
var valueSeq atomic.Int64

func (tr *traffic) value(id int) string { return fmt.Sprintf("c%d-v%d", id, valueSeq.Add(1)) }

func (tr *traffic) get(cli *clientv3.Client, id int, key string) *op {
	o := &op{client: id, kind: opGet, key: key}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	o.call = tr.rec.now()
	resp, err := cli.Get(ctx, key)
	o.ret = tr.rec.now()
	o.err = err
	if err == nil {
		o.rev, o.kvs = resp.Header.Revision, resp.Kvs
	}
	tr.rec.addOp(o)
	return o
}

func (tr *traffic) update(cli *clientv3.Client, id int, key string, modRev, lease int64) error {
	o := &op{client: id, kind: opUpdate, key: key, value: tr.value(id), expected: modRev, lease: lease}
	var opts []clientv3.OpOption
	if lease != 0 {
		// Kubernetes keeps an object's lease (events) on update.
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	o.call = tr.rec.now()
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpPut(key, o.value, opts...)).Commit()
	o.ret = tr.rec.now()
	o.err = err
	if err == nil {
		o.rev, o.succeeded = resp.Header.Revision, resp.Succeeded
	}
	tr.rec.addOp(o)
	return err
}

func (tr *traffic) create(cli *clientv3.Client, id int, key string) error {
	o := &op{client: id, kind: opCreate, key: key, value: tr.value(id)}
	var opts []clientv3.OpOption
	if l := tr.lease.Load(); l != 0 && id%2 == 0 {
		o.lease = l
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(l)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	o.call = tr.rec.now()
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, o.value, opts...)).Commit()
	o.ret = tr.rec.now()
	o.err = err
	if err == nil {
		o.rev, o.succeeded = resp.Header.Revision, resp.Succeeded
	}
	tr.rec.addOp(o)
	return err
}

func (tr *traffic) delete(cli *clientv3.Client, id int, key string) error {
	o := &op{client: id, kind: opDelete, key: key}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	o.call = tr.rec.now()
	resp, err := cli.Delete(ctx, key)
	o.ret = tr.rec.now()
	o.err = err
	if err == nil {
		o.rev, o.deleted = resp.Header.Revision, resp.Deleted
	}
	tr.rec.addOp(o)
	return err
}

// reader: ~80% list-then-watch, the rest split between a Get at a past
// revision, a Get and a serializable (stale) list.
func (tr *traffic) reader(stop <-chan struct{}, id int) {
	rnd := rand.New(rand.NewPCG(uint64(id), 13))
	lastRev := int64(1)
	for !stopped(stop) {
		cli := tr.client(id)
		prefix := resources[rnd.IntN(len(resources))]
		switch r := rnd.IntN(100); {
		case r < 80:
			o := tr.list(cli, id, prefix, false)
			pause(o.err)
			if o.err == nil {
				lastRev = o.rev
				tr.watch(stop, cli, id, prefix, o.rev+1, time.Duration(200+rnd.IntN(800))*time.Millisecond)
			}
		case r < 87:
			o := &op{client: id, kind: opGetAtRev, key: objectKey(rnd), atRev: 1 + rnd.Int64N(lastRev)}
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			o.call = tr.rec.now()
			resp, err := cli.Get(ctx, o.key, clientv3.WithRev(o.atRev))
			o.ret = tr.rec.now()
			cancel()
			o.err = err
			if err == nil {
				o.rev, o.kvs = resp.Header.Revision, resp.Kvs
			}
			tr.rec.addOp(o)
			pause(err)
		case r < 94:
			pause(tr.get(cli, id, objectKey(rnd)).err)
		default:
			pause(tr.list(cli, id, prefix, true).err)
		}
	}
}

// list reads prefix in pages: the first page fixes the revision, the next
// ones read at it, as a Kubernetes reflector's paginated list does.
func (tr *traffic) list(cli *clientv3.Client, id int, prefix string, stale bool) *op {
	kind := opList
	if stale {
		kind = opStaleList
	}
	o := &op{client: id, kind: kind, key: prefix}
	ctx, cancel := context.WithTimeout(context.Background(), 3*opTimeout)
	defer cancel()
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	o.call = tr.rec.now()
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if o.rev != 0 {
			opts = append(opts, clientv3.WithRev(o.rev))
		}
		if stale {
			opts = append(opts, clientv3.WithSerializable())
		}
		resp, err := cli.Get(ctx, from, opts...)
		if err != nil {
			o.err = err
			break
		}
		if o.rev == 0 {
			o.rev = resp.Header.Revision
		}
		o.kvs = append(o.kvs, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	o.ret = tr.rec.now()
	if o.err != nil {
		o.kvs = nil
	}
	tr.rec.addOp(o)
	return o
}

// watch watches prefix from rev for d, asking for a progress report
// half-way, and records what it got.
func (tr *traffic) watch(stop <-chan struct{}, cli *clientv3.Client, id int, prefix string, rev int64, d time.Duration) {
	w := &watchRecord{client: id, prefix: prefix, startRev: rev}
	defer tr.rec.addWatch(w)
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	defer cancel()
	ch := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	end := time.After(d)
	progress := time.After(d / 2)
	for {
		select {
		case <-stop:
			return
		case <-end:
			return
		case <-progress:
			pctx, pcancel := context.WithTimeout(ctx, opTimeout)
			_ = cli.RequestProgress(pctx)
			pcancel()
		case resp, ok := <-ch:
			if !ok {
				return
			}
			if resp.CompactRevision != 0 {
				w.compacted = resp.CompactRevision
				return
			}
			if err := resp.Err(); err != nil {
				w.canceled = err.Error()
				return
			}
			w.resps = append(w.resps, watchResp{rev: resp.Header.Revision, progress: resp.IsProgressNotify(), events: eventsOf(resp)})
		}
	}
}

func eventsOf(resp clientv3.WatchResponse) []*mvccpb.Event {
	out := make([]*mvccpb.Event, len(resp.Events))
	for i, e := range resp.Events {
		out[i] = (*mvccpb.Event)(e)
	}
	return out
}

// leases grants a lease with a short TTL every 500 ms for new objects to
// attach to; most expire, every third is revoked by the client first.
func (tr *traffic) leases(stop <-chan struct{}) {
	n := 0
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		cli := tr.client(n)
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		resp, err := cli.Grant(ctx, 2)
		cancel()
		if err != nil {
			continue
		}
		n++
		if prev := tr.lease.Swap(int64(resp.ID)); prev != 0 && n%3 == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			_, _ = cli.Revoke(ctx, clientv3.LeaseID(prev))
			cancel()
		}
	}
}

// compactor compacts every 100 ms, up to what the history collector has
// already seen.
func (tr *traffic) compactor(stop <-chan struct{}) {
	var last int64
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		target := tr.floor() - 20
		if target <= last {
			continue
		}
		cli := tr.client(n)
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		_, err := cli.Compact(ctx, target)
		cancel()
		if err == nil {
			last = target
		}
	}
}
