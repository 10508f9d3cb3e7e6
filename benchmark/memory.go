package benchmark

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// memoryWL loads Objects objects (BatchSize puts per Txn) and then measures
// what they cost the server: resident memory of process Pid, size of
// DataDir on disk and the database size the server reports in
// Maintenance.Status, after compacting to the head revision (unless
// NoCompact) and waiting Settle. Its series, load, times each batch.
type memoryWL struct {
	kg      *KeyGen
	objects int
	bs      int
	next    atomic.Int64
	s       *series
	loaded  *atomic.Int64
}

func (m *memoryWL) setup(_ context.Context, r *run) error {
	m.objects = r.cfg.Objects
	m.bs = r.cfg.BatchSize
	m.kg = NewKeyGen("secrets", r.tag, r.cfg.Namespaces, r.cfg.KeySize)
	m.s = r.addSeries("load")
	m.loaded = r.counter("objects_loaded")
	r.total = int64((m.objects + m.bs - 1) / m.bs)
	r.untimed = true
	r.param("objects", m.objects)
	r.param("batch", m.bs)
	r.param("val_size", r.cfg.ValSize)
	return nil
}

func (m *memoryWL) op(ctx context.Context, w *worker) error {
	b := int(m.next.Add(1) - 1)
	lo, hi := b*m.bs, min((b+1)*m.bs, m.objects)
	if lo >= hi {
		return nil
	}
	ops := make([]clientv3.Op, 0, hi-lo)
	val := string(w.val)
	for i := lo; i < hi; i++ {
		w.key = m.kg.AppendKey(w.key[:0], i)
		ops = append(ops, clientv3.OpPut(string(w.key), val))
	}
	start := time.Now()
	_, err := w.cli.Txn(ctx).Then(ops...).Commit()
	m.s.record(start, err)
	if err == nil {
		m.loaded.Add(int64(hi - lo))
	}
	return err
}

func (m *memoryWL) finish(ctx context.Context, r *run) error {
	cli := r.client(0)
	if !r.cfg.NoCompact {
		resp, err := cli.Get(ctx, "compact-probe")
		if err != nil {
			return fmt.Errorf("read head revision: %w", err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*r.cfg.Timeout)
		start := time.Now()
		_, err = cli.Compact(cctx, resp.Header.Revision, clientv3.WithCompactPhysical())
		cancel()
		if err != nil {
			r.note("compact: %v", err)
		} else {
			r.gauge("compact_s", time.Since(start).Seconds())
		}
	}
	if r.cfg.Defrag {
		for _, ep := range r.cfg.Endpoints {
			dctx, cancel := context.WithTimeout(ctx, 5*r.cfg.Timeout)
			_, err := cli.Defragment(dctx, ep)
			cancel()
			if err != nil {
				r.note("defragment %s: %v", ep, err)
			}
		}
	}
	select {
	case <-time.After(r.cfg.Settle):
	case <-ctx.Done():
		return ctx.Err()
	}
	measureServer(ctx, r, cli)
	return nil
}

// ProcessMemory reads a process's resident set size and its peak (VmRSS,
// VmHWM) from /proc, in bytes.
func ProcessMemory(pid int) (rss, peak int64, err error) {
	v, err := procStatus(pid, "VmRSS", "VmHWM")
	if err != nil {
		return 0, 0, err
	}
	if v["VmRSS"] == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return v["VmRSS"], v["VmHWM"], nil
}

// ProcessRSSSplit reads how much of a process's resident set is its own
// memory (RssAnon) and how much pages of mapped files (RssFile), in bytes.
func ProcessRSSSplit(pid int) (anon, file int64, err error) {
	v, err := procStatus(pid, "RssAnon", "RssFile")
	return v["RssAnon"], v["RssFile"], err
}

// procStatus reads the named kB fields of /proc/PID/status, in bytes.
func procStatus(pid int, names ...string) (map[string]int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || !slices.Contains(names, name) {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) < 1 {
			continue
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", name, err)
		}
		out[name] = kb << 10
	}
	return out, sc.Err()
}

// DirSize is the space dir's files take on disk (allocated blocks, as du
// counts; preallocated sparse files count only what is written) and their
// apparent size.
func DirSize(dir string) (allocated, apparent int64, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		apparent += fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			allocated += st.Blocks * 512
		} else {
			allocated += fi.Size()
		}
		return nil
	})
	return allocated, apparent, err
}

// rssSampler reads a process's resident memory every rssSampleEvery and
// keeps the highest value.
type rssSampler struct {
	stopc chan struct{}
	done  chan struct{}
	peak  int64
	err   error
}

const rssSampleEvery = 50 * time.Millisecond

func startRSSSampler(pid int) *rssSampler {
	s := &rssSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(rssSampleEvery)
		defer t.Stop()
		for {
			rss, _, err := ProcessMemory(pid)
			if err != nil {
				s.err = err
				return
			}
			s.peak = max(s.peak, rss)
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peak.
func (s *rssSampler) stop() (int64, error) {
	close(s.stopc)
	<-s.done
	return s.peak, s.err
}
