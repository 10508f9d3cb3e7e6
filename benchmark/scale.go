package benchmark

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// scaleWL loads Objects objects the way kube-apiserver creates them — one
// Txn If create_revision(key)==0 Then Put per object, KeySize-byte keys,
// ValSize-byte values, every request loop on its connection — and then
// measures what they cost the server, as memory does but without
// compacting (creates leave no old versions): resident memory of process
// Pid, allocated size of DataDir, and the database size from
// Maintenance.Status, after waiting Settle. Its series, load, times each
// create. Compare adds the stop and restart times when it
// started the server itself (see Compare and ServerProc).
type scaleWL struct {
	create createWL
	loaded *atomic.Int64
}

func (x *scaleWL) setup(_ context.Context, r *run) error {
	x.create.kg = NewKeyGen("configmaps", r.tag, r.cfg.Namespaces, r.cfg.KeySize)
	x.create.s = r.addSeries("load")
	x.create.exists = r.counter("create_already_exists")
	x.loaded = r.counter("objects_loaded")
	r.total = int64(r.cfg.Objects)
	r.untimed = true
	r.param("objects", r.cfg.Objects)
	r.param("prefix", x.create.kg.Prefix())
	r.param("key_size", r.cfg.KeySize)
	r.param("val_size", r.cfg.ValSize)
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, "[%s] loading %d objects with %d clients over %d connections (one create Txn per object)\n",
			r.label(), r.cfg.Objects, r.cfg.Clients, len(r.clients))
	}
	return nil
}

func (x *scaleWL) op(ctx context.Context, w *worker) error {
	err := x.create.op(ctx, w)
	if err == nil {
		x.loaded.Add(1)
	}
	return err
}

func (x *scaleWL) finish(ctx context.Context, r *run) error {
	select {
	case <-time.After(r.cfg.Settle):
	case <-ctx.Done():
		return ctx.Err()
	}
	measureServer(ctx, r, r.client(0))
	return nil
}

// measureServer records the gauges memory and scale report: db_size_bytes
// (Maintenance.Status), rss_bytes and rss_peak_bytes (of Pid),
// data_dir_bytes and data_dir_apparent_bytes (of DataDir).
func measureServer(ctx context.Context, r *run, cli *clientv3.Client) {
	sctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	st, err := cli.Status(sctx, r.cfg.Endpoints[0])
	cancel()
	if err != nil {
		r.note("status: %v", err)
	} else {
		r.gauge("db_size_bytes", float64(st.DbSize))
		if st.DbSizeInUse > 0 {
			r.gauge("db_size_in_use_bytes", float64(st.DbSizeInUse))
		}
	}
	if r.cfg.Pid > 0 {
		rss, hwm, err := ProcessMemory(r.cfg.Pid)
		if err != nil {
			r.note("resident memory of pid %d: %v", r.cfg.Pid, err)
		} else {
			r.gauge("rss_bytes", float64(rss))
			r.gauge("rss_peak_bytes", float64(hwm))
		}
		// RSS counts the pages of memory-mapped files a server touched
		// (Badger's tables and logs, bbolt's file) as well as its own
		// memory: the split tells them apart.
		if anon, file, err := ProcessRSSSplit(r.cfg.Pid); err == nil {
			r.gauge("rss_anon_bytes", float64(anon))
			r.gauge("rss_file_bytes", float64(file))
		}
	}
	if r.cfg.DataDir != "" {
		alloc, apparent, err := DirSize(r.cfg.DataDir)
		if err != nil {
			r.note("size of %s: %v", r.cfg.DataDir, err)
		} else {
			r.gauge("data_dir_bytes", float64(alloc))
			r.gauge("data_dir_apparent_bytes", float64(apparent))
		}
	}
}
