package badger

import (
	"strconv"
	"strings"

	"github.com/dgraph-io/ristretto/v2/z"
)

// MemoryStats is the engine's share of process memory, for metrics.
type MemoryStats struct {
	// AllocatorBytes is what Badger's table builders hold through ristretto's
	// z.Allocator, pooled ones included: every flush and compaction builds
	// its tables there. Without the jemalloc build tag (the default) these
	// buffers live in the Go heap, so this is part of it, not in addition.
	AllocatorBytes int64
	// CallocBytes is z.NumAllocBytes: memory from z.Calloc outside the Go
	// heap. It only moves in builds with the jemalloc tag; 0 otherwise.
	CallocBytes int64
	// BlockCacheBytes is the cost held by the block cache (0 when disabled).
	BlockCacheBytes int64
}

// MemoryStats reports how much memory the engine holds.
func (d *DB) MemoryStats() MemoryStats {
	st := MemoryStats{
		AllocatorBytes: allocatorBytes(z.Allocators()),
		CallocBytes:    z.NumAllocBytes(),
	}
	if m := d.db.BlockCacheMetrics(); m != nil {
		st.BlockCacheBytes = int64(m.CostAdded()) - int64(m.CostEvicted())
	}
	return st
}

// allocatorBytes sums z.Allocators' report, the only public view of the
// allocators' sizes: "Tag: Builder Num: 3 Size: 124 MiB . " per tag, sizes
// printed by go-humanize's IBytes (so rounded to about three digits).
func allocatorBytes(report string) int64 {
	var total float64
	for _, part := range strings.Split(report, "Size: ")[1:] {
		f := strings.Fields(part)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		total += v * float64(iecUnit(f[1]))
	}
	return int64(total)
}

func iecUnit(u string) int64 {
	for i, name := range []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"} {
		if u == name {
			return 1 << (10 * i)
		}
	}
	return 0
}
