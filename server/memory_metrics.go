package server

import (
	"math"
	rtmetrics "runtime/metrics"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
)

// Where the process's memory goes, read at scrape time:
//
//	axon_memory_go_heap_inuse_bytes       Go heap spans in use (live and not yet swept objects)
//	axon_memory_go_runtime_bytes          everything the Go runtime holds from the OS, minus what it released
//	axon_memory_go_limit_bytes            the soft limit (--memory-limit); 0 when none
//	axon_memory_badger_alloc_bytes        Badger's table-builder buffers (ristretto z.Allocator, pooled ones included)
//	axon_memory_badger_calloc_bytes       ristretto z.Calloc memory outside the Go heap (jemalloc builds only)
//	axon_memory_badger_block_cache_bytes  Badger's block cache
//	axon_memory_index_bytes               the in-memory key index (estimate: entries and keys; Go heap)
//
// The Badger figures are 0 for other engines. In the default build (no
// jemalloc tag) the builder buffers are Go heap, so badger_alloc_bytes is
// part of go_heap_inuse_bytes, not in addition to it. Memtables (arenas of
// about 42 MiB each, at most three) are Go heap too but Badger does not
// expose them. Mmapped tables and value log show in process_resident_memory_bytes only.
type memoryCollector struct{ s *Server }

var (
	descGoHeapInuse = prometheus.NewDesc("axon_memory_go_heap_inuse_bytes",
		"Bytes in in-use Go heap spans: live objects and garbage not yet swept.", nil, nil)
	descGoRuntime = prometheus.NewDesc("axon_memory_go_runtime_bytes",
		"Bytes the Go runtime has mapped and not released to the OS (heap, stacks, runtime metadata).", nil, nil)
	descGoLimit = prometheus.NewDesc("axon_memory_go_limit_bytes",
		"The Go soft memory limit (--memory-limit or GOMEMLIMIT); 0 when there is none.", nil, nil)
	descBadgerAlloc = prometheus.NewDesc("axon_memory_badger_alloc_bytes",
		"Bytes of Badger's table-builder buffers (ristretto z.Allocator), pooled ones included; Go heap in the default build.", nil, nil)
	descBadgerCalloc = prometheus.NewDesc("axon_memory_badger_calloc_bytes",
		"Bytes ristretto's z.Calloc holds outside the Go heap (z.NumAllocBytes); 0 unless built with the jemalloc tag.", nil, nil)
	descBadgerBlockCache = prometheus.NewDesc("axon_memory_badger_block_cache_bytes",
		"Bytes held by Badger's block cache (0 when it is disabled).", nil, nil)
	descIndex = prometheus.NewDesc("axon_memory_index_bytes",
		"Estimated bytes of the in-memory key index (entries and keys); part of the Go heap.", nil, nil)
)

var memorySamples = []string{
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/released:bytes",
	"/gc/gomemlimit:bytes",
}

func (memoryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGoHeapInuse, descGoRuntime, descGoLimit,
		descBadgerAlloc, descBadgerCalloc, descBadgerBlockCache, descIndex} {
		ch <- d
	}
}

func (c memoryCollector) Collect(ch chan<- prometheus.Metric) {
	samples := make([]rtmetrics.Sample, len(memorySamples))
	for i, name := range memorySamples {
		samples[i].Name = name
	}
	rtmetrics.Read(samples)
	v := func(i int) float64 {
		if samples[i].Value.Kind() != rtmetrics.KindUint64 {
			return 0
		}
		return float64(samples[i].Value.Uint64())
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(descGoHeapInuse, v(0)+v(1))
	gauge(descGoRuntime, v(2)-v(3))
	limit := v(4)
	if limit >= math.MaxInt64 {
		limit = 0
	}
	gauge(descGoLimit, limit)
	if c.s.idx != nil {
		gauge(descIndex, float64(c.s.idx.MemoryBytes()))
	}

	var st badger.MemoryStats
	if e, ok := engineOf(c.s.be).(interface{ MemoryStats() badger.MemoryStats }); ok {
		st = e.MemoryStats()
	}
	gauge(descBadgerAlloc, float64(st.AllocatorBytes))
	gauge(descBadgerCalloc, float64(st.CallocBytes))
	gauge(descBadgerBlockCache, float64(st.BlockCacheBytes))
}

// engineOf unwraps the metrics wrapper around the backend.
func engineOf(be backend.Backend) backend.Backend {
	if i, ok := be.(instrumented); ok {
		return i.Backend
	}
	return be
}
