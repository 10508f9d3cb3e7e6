package benchmark

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// createWL: kube-apiserver's Create, a Txn that puts the object only if the
// key has never been created (If create_revision(key) == 0 Then Put).
type createWL struct {
	kg     *KeyGen
	next   atomic.Int64
	s      *series
	exists *atomic.Int64
	space  int
}

func (c *createWL) setup(_ context.Context, r *run) error {
	c.kg = NewKeyGen("pods", r.tag, r.cfg.Namespaces, r.cfg.KeySize)
	c.s = r.addSeries("create")
	c.exists = r.counter("create_already_exists")
	c.space = r.cfg.KeySpace
	r.param("key_size", r.cfg.KeySize)
	r.param("val_size", r.cfg.ValSize)
	if c.space > 0 {
		r.param("key_space", c.space)
	}
	return nil
}

func (c *createWL) op(ctx context.Context, w *worker) error {
	i := int(c.next.Add(1) - 1)
	if c.space > 0 {
		i %= c.space
	}
	w.key = c.kg.AppendKey(w.key[:0], i)
	key := string(w.key)
	start := time.Now()
	resp, err := w.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(w.val))).
		Commit()
	if err == nil && !resp.Succeeded {
		c.exists.Add(1)
		err = errAlreadyExists
	}
	c.s.record(start, err)
	return err
}

// updateWL: kube-apiserver's GuaranteedUpdate. Each update starts from the
// mod revision last seen for the object (shared by all request loops, like
// the apiserver's watch cache) and sends
//
//	Txn If mod_revision(key) == X Then Put Else Get
//
// On a conflict the Else branch returns the current object and the update
// is retried from it, at most MaxRetries times.
type updateWL struct {
	kg        *KeyGen
	space     int
	revs      []atomic.Int64
	s         *series
	conflicts *atomic.Int64
	txns      *atomic.Int64
	retries   int
}

func (u *updateWL) setup(ctx context.Context, r *run) error {
	u.space = r.cfg.KeySpace
	if u.space == 0 {
		u.space = 1000
	}
	u.retries = r.cfg.MaxRetries
	u.kg = NewKeyGen("leases", r.tag, r.cfg.Namespaces, r.cfg.KeySize)
	u.revs = make([]atomic.Int64, u.space)
	u.s = r.addSeries("update")
	u.conflicts = r.counter("update_conflicts")
	u.txns = r.counter("update_txns")
	r.param("key_space", u.space)
	r.param("key_size", r.cfg.KeySize)
	r.param("val_size", r.cfg.ValSize)
	return r.preload(ctx, u.kg, u.space, func(lo, hi int, rev int64) {
		for i := lo; i < hi; i++ {
			u.seen(i, rev)
		}
	})
}

// seen raises object i's known mod revision to rev.
func (u *updateWL) seen(i int, rev int64) {
	for {
		cur := u.revs[i].Load()
		if rev <= cur || u.revs[i].CompareAndSwap(cur, rev) {
			return
		}
	}
}

func (u *updateWL) op(ctx context.Context, w *worker) error {
	i := w.rnd.IntN(u.space)
	w.key = u.kg.AppendKey(w.key[:0], i)
	key := string(w.key)
	rev := u.revs[i].Load()
	start := time.Now()
	var err error
	for attempt := 0; ; attempt++ {
		// A new object body for every attempt, as the apiserver re-runs the
		// update function on the fresh object.
		w.val[w.rnd.IntN(len(w.val))]++
		var resp *clientv3.TxnResponse
		u.txns.Add(1)
		resp, err = w.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, string(w.val))).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			break
		}
		if resp.Succeeded {
			u.seen(i, resp.Header.Revision)
			break
		}
		u.conflicts.Add(1)
		var kvs = resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			err = errNotFound
			break
		}
		rev = kvs[0].ModRevision
		u.seen(i, rev)
		if attempt >= u.retries {
			err = errConflict
			break
		}
	}
	u.s.record(start, err)
	return err
}

// getWL: single-object Range, linearizable or serializable.
type getWL struct {
	kg     *KeyGen
	space  int
	s      *series
	serial bool
}

func (g *getWL) setup(ctx context.Context, r *run) error {
	g.space = r.cfg.KeySpace
	if g.space == 0 {
		g.space = 1000
	}
	g.serial = r.cfg.Consistency == "s"
	g.kg = NewKeyGen("configmaps", r.tag, r.cfg.Namespaces, r.cfg.KeySize)
	g.s = r.addSeries("get")
	r.param("key_space", g.space)
	r.param("consistency", map[bool]string{true: "serializable", false: "linearizable"}[g.serial])
	return r.preload(ctx, g.kg, g.space, nil)
}

func (g *getWL) op(ctx context.Context, w *worker) error {
	w.key = g.kg.AppendKey(w.key[:0], w.rnd.IntN(g.space))
	key := string(w.key)
	var opts []clientv3.OpOption
	if g.serial {
		opts = append(opts, clientv3.WithSerializable())
	}
	start := time.Now()
	resp, err := w.cli.Get(ctx, key, opts...)
	if err == nil && len(resp.Kvs) == 0 {
		err = errNotFound
	}
	g.s.record(start, err)
	return err
}

// listWL: kube-apiserver's paginated LIST of a resource: the first page at
// the current revision, every later page from the last key at that same
// revision, PageLimit objects per page, over Objects preloaded objects.
// Each operation is one page; each request loop walks its own list.
type listWL struct {
	kg       *KeyGen
	end      string
	limit    int64
	objects  int
	cursors  []listCursor
	s        *series
	complete *atomic.Int64
	short    *atomic.Int64
	objsRead *atomic.Int64
}

type listCursor struct {
	next string
	rev  int64
	seen int
}

func (l *listWL) setup(ctx context.Context, r *run) error {
	return l.setupNamed(ctx, r, "list", r.cfg.Clients, r.cfg.PageLimit, r.cfg.Unpaginated)
}

func (l *listWL) setupNamed(ctx context.Context, r *run, name string, loops int, limit int64, unpaginated bool) error {
	l.objects = r.cfg.Objects
	l.limit = limit
	if unpaginated {
		l.limit = 0
	}
	l.kg = NewKeyGen("replicasets", r.tag, r.cfg.Namespaces, r.cfg.KeySize)
	l.end = prefixEnd(l.kg.Prefix())
	l.cursors = make([]listCursor, loops)
	l.s = r.addSeries(name)
	l.complete = r.counter(name + "_complete")
	l.short = r.counter(name + "_short")
	l.objsRead = r.counter(name + "_objects_read")
	r.param(name+"_objects", l.objects)
	r.param(name+"_limit", l.limit)
	return r.preload(ctx, l.kg, l.objects, nil)
}

func (l *listWL) op(ctx context.Context, w *worker) error {
	return l.page(ctx, w, &l.cursors[w.id%len(l.cursors)])
}

func (l *listWL) page(ctx context.Context, w *worker, c *listCursor) error {
	opts := []clientv3.OpOption{clientv3.WithRange(l.end)}
	if l.limit > 0 {
		opts = append(opts, clientv3.WithLimit(l.limit))
	}
	key := l.kg.Prefix()
	if c.next != "" {
		key = c.next
		opts = append(opts, clientv3.WithRev(c.rev))
	}
	start := time.Now()
	resp, err := w.cli.Get(ctx, key, opts...)
	l.s.record(start, err)
	if err != nil {
		*c = listCursor{}
		return err
	}
	if c.next == "" {
		c.rev = resp.Header.Revision
	}
	c.seen += len(resp.Kvs)
	l.objsRead.Add(int64(len(resp.Kvs)))
	if resp.More && len(resp.Kvs) > 0 {
		c.next = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		return nil
	}
	if c.seen >= l.objects {
		l.complete.Add(1)
	} else {
		l.short.Add(1)
	}
	*c = listCursor{}
	return nil
}

// mixedWL runs get, update, create and list operations in a ratio.
type mixedWL struct {
	names   []string
	weights []int
	sum     int
	subs    []workload
	all     *series
}

func newMixedWL(cfg Config) (*mixedWL, error) {
	names, weights, err := parseMix(cfg.withDefaults().Mix)
	if err != nil {
		return nil, err
	}
	m := &mixedWL{names: names, weights: weights}
	for i, n := range names {
		m.sum += weights[i]
		switch n {
		case "get":
			m.subs = append(m.subs, &getWL{})
		case "update":
			m.subs = append(m.subs, &updateWL{})
		case "create":
			m.subs = append(m.subs, &createWL{})
		case "list":
			m.subs = append(m.subs, &listWL{})
		}
	}
	return m, nil
}

func (m *mixedWL) setup(ctx context.Context, r *run) error {
	m.all = r.addSeries("all")
	mix := ""
	for i, n := range m.names {
		if i > 0 {
			mix += ","
		}
		mix += fmt.Sprintf("%s=%d", n, m.weights[i])
		if err := m.subs[i].setup(ctx, r); err != nil {
			return err
		}
	}
	r.param("mix", mix)
	return nil
}

func (m *mixedWL) op(ctx context.Context, w *worker) error {
	x := w.rnd.IntN(m.sum)
	i := 0
	for x >= m.weights[i] {
		x -= m.weights[i]
		i++
	}
	start := time.Now()
	err := m.subs[i].op(ctx, w)
	m.all.record(start, err)
	return err
}

// interferenceWL: GuaranteedUpdates by every request loop but the first 4
// (Clients/2 when Clients < 8), which instead repeatedly LIST all Objects
// unpaginated — the expensive-read interference that hurts large clusters.
// The primary series is update; 104 clients give 100 updaters.
type interferenceWL struct {
	upd     updateWL
	lst     listWL
	listers int
	rss     *rssSampler // nil without a server pid
}

func (x *interferenceWL) setup(ctx context.Context, r *run) error {
	x.listers = 4
	if r.cfg.Clients < 8 {
		x.listers = r.cfg.Clients / 2
	}
	if x.listers < 1 {
		return fmt.Errorf("interference needs at least 2 clients")
	}
	r.param("listers", x.listers)
	if err := x.upd.setup(ctx, r); err != nil {
		return err
	}
	if err := x.lst.setupNamed(ctx, r, "list-unpaginated", x.listers, 0, true); err != nil {
		return err
	}
	if r.cfg.Pid > 0 {
		x.rss = startRSSSampler(r.cfg.Pid)
	}
	return nil
}

// finish records the server's peak resident memory while the updates and
// LISTs ran (sampled; the process's VmHWM would include the preload and
// earlier steps).
func (x *interferenceWL) finish(_ context.Context, r *run) error {
	if x.rss == nil {
		return nil
	}
	peak, err := x.rss.stop()
	if err != nil {
		return err
	}
	r.gauge("rss_peak_sampled_bytes", float64(peak))
	return nil
}

func (x *interferenceWL) op(ctx context.Context, w *worker) error {
	if w.id < x.listers {
		return x.lst.page(ctx, w, &x.lst.cursors[w.id])
	}
	return x.upd.op(ctx, w)
}
