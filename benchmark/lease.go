package benchmark

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// leaseWL: each operation grants a lease of LeaseTTL seconds, attaches
// KeysPerLease keys to it and renews it once (KeepAliveOnce), the way
// kube-apiserver attaches events to shared leases. Series: lease (the whole
// cycle, primary), grant, attach, keepalive. At the end ExpireLeases leases
// of ExpireTTL seconds, one key each, are left to expire, and the time from
// each lease's due expiry to its key's DELETE event is the expiry series.
type leaseWL struct {
	kg                                   *KeyGen
	next                                 atomic.Int64
	cycle, grant, attach, keepalive, exp *series
	ttl                                  int64
	keys                                 int
}

func (l *leaseWL) setup(_ context.Context, r *run) error {
	l.kg = NewKeyGen("events", r.tag, r.cfg.Namespaces, r.cfg.KeySize)
	l.ttl = r.cfg.LeaseTTL
	l.keys = r.cfg.KeysPerLease
	l.cycle = r.addSeries("lease")
	l.grant = r.addSeries("grant")
	l.attach = r.addSeries("attach")
	l.keepalive = r.addSeries("keepalive")
	if r.cfg.ExpireLeases > 0 {
		l.exp = r.addSeries("expiry")
		r.counter("leases_expired")
		r.counter("leases_not_expired")
		r.counter("leases_expired_early")
	}
	r.param("lease_ttl_s", l.ttl)
	r.param("keys_per_lease", l.keys)
	r.param("expire_leases", r.cfg.ExpireLeases)
	r.param("expire_ttl_s", r.cfg.ExpireTTL)
	return nil
}

func (l *leaseWL) op(ctx context.Context, w *worker) error {
	start := time.Now()
	g, err := w.cli.Grant(ctx, l.ttl)
	l.grant.record(start, err)
	if err != nil {
		l.cycle.record(start, err)
		return err
	}
	base := int(l.next.Add(int64(l.keys))) - l.keys
	for k := 0; k < l.keys && err == nil; k++ {
		w.key = l.kg.AppendKey(w.key[:0], base+k)
		t := time.Now()
		_, err = w.cli.Put(ctx, string(w.key), string(w.val), clientv3.WithLease(g.ID))
		l.attach.record(t, err)
	}
	if err == nil {
		t := time.Now()
		_, err = w.cli.KeepAliveOnce(ctx, g.ID)
		l.keepalive.record(t, err)
	}
	l.cycle.record(start, err)
	return err
}

// finish runs the expiry check.
func (l *leaseWL) finish(ctx context.Context, r *run) error {
	n := r.cfg.ExpireLeases
	if n <= 0 {
		return nil
	}
	ttl := time.Duration(r.cfg.ExpireTTL) * time.Second
	wait := 2*ttl + 5*time.Second
	ctx, cancel := context.WithTimeout(ctx, wait+r.cfg.Timeout)
	defer cancel()
	kg := NewKeyGen("events-expiry", r.tag, 1, r.cfg.KeySize)
	cli := r.client(0)
	wch := cli.Watch(ctx, kg.Prefix(), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp := <-wch; !resp.Created {
		return fmt.Errorf("expiry watch not created: %v", resp.Err())
	}
	var mu sync.Mutex
	due := map[string]time.Time{}
	for i := 0; i < n; i++ {
		g, err := cli.Grant(ctx, r.cfg.ExpireTTL)
		if err != nil {
			return fmt.Errorf("grant expiring lease: %w", err)
		}
		t := time.Now()
		key := kg.Key(i)
		mu.Lock()
		due[key] = t.Add(ttl)
		mu.Unlock()
		if _, err := cli.Put(ctx, key, "x", clientv3.WithLease(g.ID)); err != nil {
			return fmt.Errorf("attach key to expiring lease: %w", err)
		}
	}
	expired, early := r.counter("leases_expired"), r.counter("leases_expired_early")
	timeout := time.After(wait)
	for expired.Load() < int64(n) {
		select {
		case resp, ok := <-wch:
			if !ok {
				return fmt.Errorf("expiry watch closed")
			}
			now := time.Now()
			for _, ev := range resp.Events {
				if ev.Type != mvccpb.Event_DELETE {
					continue
				}
				mu.Lock()
				d, ok := due[string(ev.Kv.Key)]
				delete(due, string(ev.Kv.Key))
				mu.Unlock()
				if !ok {
					continue
				}
				expired.Add(1)
				late := now.Sub(d)
				if late < 0 {
					early.Add(1)
					late = 0
				}
				l.exp.recordLatency(late, nil)
			}
		case <-timeout:
			r.counter("leases_not_expired").Store(int64(n) - expired.Load())
			return nil
		}
	}
	return nil
}
