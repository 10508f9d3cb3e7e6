package badger

import (
	"bufio"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/axon-kv/axon/backend"
)

// BenchmarkMemoryCreates writes b.N kube-style creates (one ~80-byte key and
// a 600-byte value per Commit, from 64 concurrent committers, fsync on) and
// reports where memory stands afterwards and at its peak. It measures the
// engine options, not a limit: run it with a fixed count, e.g.
//
//	go test ./backend/badger -run '^$' -bench MemoryCreates -benchtime 300000x
//
// Metrics: commits/s; rss_MiB and rss_anon_MiB (VmRSS, RssAnon) and
// heap_inuse_MiB at the end, before Close; their peaks sampled every 200 ms
// (peak_*); builders_MiB (z.Allocator buffers, the table builders' memory,
// peak) and calloc_MiB (z.NumAllocBytes, which is 0 unless built with the
// jemalloc tag).
func BenchmarkMemoryCreates(b *testing.B) {
	d, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()

	// Kubernetes objects are protobuf with repeated names and labels: half
	// random bytes, half text, so compression finds something to do.
	rng := rand.New(rand.NewSource(1))
	val := func() []byte {
		v := make([]byte, 600)
		rng.Read(v[:300])
		copy(v[300:], strings.Repeat("app.kubernetes.io/name=axon ", 11))
		return v
	}
	vals := make([][]byte, 1024)
	for i := range vals {
		vals[i] = val()
	}

	var peak struct {
		sync.Mutex
		rss, anon, heap, builders int64
	}
	sample := func() {
		rss, anon := procRSS()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st := d.MemoryStats()
		peak.Lock()
		peak.rss = max(peak.rss, rss)
		peak.anon = max(peak.anon, anon)
		peak.heap = max(peak.heap, int64(ms.HeapInuse))
		peak.builders = max(peak.builders, st.AllocatorBytes)
		peak.Unlock()
	}
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				sample()
			}
		}
	}()

	const workers = 64
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				key := fmt.Appendf(nil, "/registry/pods/namespace-%04d/pod-name-with-a-generated-suffix-%010d", i%1000, i)
				var bt backend.Batch
				bt.Put(key, vals[i%int64(len(vals))])
				if err := d.Commit(&bt); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	<-sampled
	sample()

	rss, anon := procRSS()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := d.MemoryStats()
	const mib = 1 << 20
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "commits/s")
	b.ReportMetric(float64(rss)/mib, "rss_MiB")
	b.ReportMetric(float64(anon)/mib, "rss_anon_MiB")
	b.ReportMetric(float64(ms.HeapInuse)/mib, "heap_inuse_MiB")
	b.ReportMetric(float64(peak.rss)/mib, "peak_rss_MiB")
	b.ReportMetric(float64(peak.anon)/mib, "peak_anon_MiB")
	b.ReportMetric(float64(peak.heap)/mib, "peak_heap_MiB")
	b.ReportMetric(float64(peak.builders)/mib, "builders_MiB")
	b.ReportMetric(float64(st.CallocBytes)/mib, "calloc_MiB")
	b.ReportMetric(0, "ns/op")
}

// procRSS reads VmRSS and RssAnon from /proc/self/status, in bytes.
func procRSS() (rss, anon int64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = n << 10
		case "RssAnon":
			anon = n << 10
		}
	}
	return rss, anon
}
