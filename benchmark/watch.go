package benchmark

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// watchWL: Watchers watch WatchPrefixes namespace prefixes while the request
// loops write objects into those namespaces. Every value carries its send
// time; every write's ack time is kept by revision. Three series result:
//
//	delivery            write ack -> event arrival (0 when the event beat the ack)
//	delivery-from-send  write sent -> event arrival
//	put                 the writes themselves
//
// Counters tell whether every watcher got every event (events_expected,
// events_received, events_missing) and whether any watcher was dropped.
type watchWL struct {
	kg        *KeyGen
	next      atomic.Int64
	space     int
	perPrefix []int64
	ring      []ackSlot

	delivery, fromSend, put *series

	expected, received, dropped, beforeAck, unstamped *atomic.Int64

	stopping atomic.Bool
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	grace    time.Duration
}

const ackRingBits = 16

// ackSlot remembers when the write at revision rev was acknowledged.
type ackSlot struct {
	rev atomic.Int64
	ack atomic.Int64 // UnixNano
}

func (k *watchWL) setup(ctx context.Context, r *run) error {
	cfg := r.cfg
	k.kg = NewKeyGen("endpointslices", r.tag, cfg.WatchPrefixes, cfg.KeySize)
	k.space = cfg.KeySpace
	k.grace = cfg.WatchGrace
	k.ring = make([]ackSlot, 1<<ackRingBits)
	k.delivery = r.addSeries("delivery")
	k.fromSend = r.addSeries("delivery-from-send")
	k.put = r.addSeries("put")
	k.expected = r.counter("events_expected")
	k.received = r.counter("events_received")
	k.dropped = r.counter("watchers_dropped")
	k.beforeAck = r.counter("events_before_ack")
	k.unstamped = r.counter("events_unstamped")
	r.counter("events_missing")
	created := r.counter("watchers_created")
	r.param("watchers", cfg.Watchers)
	r.param("watch_prefixes", cfg.WatchPrefixes)
	r.param("watch_streams", cfg.WatchStreams*cfg.Conns)
	r.param("val_size", cfg.ValSize)
	if cfg.Rate > 0 {
		r.param("write_rate", cfg.Rate)
	}

	k.perPrefix = make([]int64, cfg.WatchPrefixes)
	for j := 0; j < cfg.Watchers; j++ {
		k.perPrefix[j%cfg.WatchPrefixes]++
	}

	wctx, cancel := context.WithCancel(ctx)
	k.cancel = cancel
	streams := cfg.WatchStreams * cfg.Conns
	if streams > cfg.Watchers && cfg.Watchers > 0 {
		streams = cfg.Watchers
	}
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, "[%s] creating %d watchers on %d prefixes over %d streams\n",
			r.label(), cfg.Watchers, cfg.WatchPrefixes, streams)
	}
	start := time.Now()
	var ready sync.WaitGroup
	ready.Add(cfg.Watchers)
	// One goroutine per stream creates that stream's watchers in turn;
	// clientv3 puts watchers whose contexts carry the same metadata on one
	// gRPC stream, so the stream number goes into the metadata.
	var creators sync.WaitGroup
	for s := 0; s < streams; s++ {
		creators.Add(1)
		go func() {
			defer creators.Done()
			cli := r.client(s)
			sctx := metadata.AppendToOutgoingContext(wctx, "axon-bench-stream", strconv.Itoa(s))
			for j := s; j < cfg.Watchers; j += streams {
				prefix := k.kg.NamespacePrefix(j % cfg.WatchPrefixes)
				ch := cli.Watch(sctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
				k.wg.Add(1)
				go k.watcher(ch, &ready, created)
			}
		}()
	}
	creators.Wait()
	done := make(chan struct{})
	go func() { ready.Wait(); close(done) }()
	wait := 2 * cfg.Timeout
	select {
	case <-done:
	case <-time.After(wait):
		cancel()
		return fmt.Errorf("only %d of %d watchers created after %v", created.Load(), cfg.Watchers, wait)
	case <-ctx.Done():
		cancel()
		return ctx.Err()
	}
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, "[%s] %d watchers created in %.1fs\n", r.label(), created.Load(), time.Since(start).Seconds())
	}
	r.gauge("watch_create_s", time.Since(start).Seconds())
	return nil
}

// watcher consumes one watch channel until it closes.
func (k *watchWL) watcher(ch clientv3.WatchChan, ready *sync.WaitGroup, created *atomic.Int64) {
	defer k.wg.Done()
	isReady := false
	markReady := func() {
		if !isReady {
			isReady = true
			ready.Done()
		}
	}
	defer markReady()
	for resp := range ch {
		if resp.Created {
			created.Add(1)
			markReady()
			continue
		}
		if err := resp.Err(); err != nil || resp.Canceled {
			if !k.stopping.Load() {
				k.dropped.Add(1)
				if err == nil {
					err = fmt.Errorf("watch canceled: %s", resp.CancelReason)
				}
				k.delivery.recordLatency(0, err)
			}
			return
		}
		if len(resp.Events) == 0 {
			continue
		}
		now := time.Now()
		for _, ev := range resp.Events {
			if ev.Type != mvccpb.Event_PUT {
				continue
			}
			k.received.Add(1)
			if sent, ok := valueStamp(ev.Kv.Value); ok {
				k.fromSend.recordLatency(now.Sub(sent), nil)
			} else {
				k.unstamped.Add(1)
			}
			lat := time.Duration(0)
			if ack, ok := k.ackTime(ev.Kv.ModRevision); ok && now.UnixNano() > ack {
				lat = time.Duration(now.UnixNano() - ack)
			} else {
				k.beforeAck.Add(1)
			}
			k.delivery.recordLatency(lat, nil)
		}
	}
	if !isReady && !k.stopping.Load() {
		k.dropped.Add(1)
	}
}

func (k *watchWL) storeAck(rev int64, t time.Time) {
	s := &k.ring[rev&(1<<ackRingBits-1)]
	s.rev.Store(0)
	s.ack.Store(t.UnixNano())
	s.rev.Store(rev)
}

func (k *watchWL) ackTime(rev int64) (int64, bool) {
	s := &k.ring[rev&(1<<ackRingBits-1)]
	if s.rev.Load() != rev {
		return 0, false
	}
	a := s.ack.Load()
	if s.rev.Load() != rev {
		return 0, false
	}
	return a, true
}

func (k *watchWL) op(ctx context.Context, w *worker) error {
	i := int(k.next.Add(1) - 1)
	if k.space > 0 {
		i %= k.space
	}
	w.key = k.kg.AppendKey(w.key[:0], i)
	key := string(w.key)
	start := time.Now()
	stampValue(w.val, start)
	resp, err := w.cli.Put(ctx, key, string(w.val))
	k.put.record(start, err)
	if err == nil {
		k.storeAck(resp.Header.Revision, time.Now())
		k.expected.Add(k.perPrefix[i%len(k.perPrefix)])
	}
	return err
}

func (k *watchWL) sampleFinish() bool { return true }

// finish waits (at most WatchGrace) for events still in flight, then closes
// the watchers and counts what never arrived.
func (k *watchWL) finish(ctx context.Context, r *run) error {
	deadline := time.Now().Add(k.grace)
	for k.received.Load() < k.expected.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	k.stopping.Store(true)
	k.cancel()
	k.wg.Wait()
	if miss := k.expected.Load() - k.received.Load(); miss > 0 {
		r.counter("events_missing").Store(miss)
	}
	return nil
}
