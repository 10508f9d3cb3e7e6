package server_test

import (
	"context"
	"fmt"
	"sort"
	"testing"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// TestMemoryMetrics checks that the memory split is exported and that the
// figures that are never zero in a running server are not.
func TestMemoryMetrics(t *testing.T) {
	s := opsStartServer(t, server.Config{Backend: "badger", ListenMetricsURLs: []string{"http://127.0.0.1:0"}})
	c := testenv.NewClient(t, s.ClientURLs()...)
	for i := range 100 {
		if _, err := c.Put(context.Background(), fmt.Sprintf("/registry/pods/default/p%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	have := scrape(t, s.MetricsURLs()[0])
	for _, name := range []string{
		"axon_memory_go_heap_inuse_bytes",
		"axon_memory_go_runtime_bytes",
		"axon_memory_go_limit_bytes",
		"axon_memory_badger_alloc_bytes",
		"axon_memory_badger_calloc_bytes",
		"axon_memory_badger_block_cache_bytes",
		"axon_memory_index_bytes",
	} {
		if _, ok := have[name]; !ok {
			t.Errorf("/metrics does not export %s", name)
		}
	}
	// The index estimate counts its leaves' bytes: at least each key's
	// bytes not shared with the key before it and its revision, and far
	// less than a tree node and a string per key (80 bytes and the key).
	var keys []string
	for i := range 100 {
		keys = append(keys, fmt.Sprintf("/registry/pods/default/p%d", i))
	}
	sort.Strings(keys)
	least, most := 0, 0
	for i, k := range keys {
		shared := 0
		if i > 0 {
			for shared < len(k) && shared < len(keys[i-1]) && k[shared] == keys[i-1][shared] {
				shared++
			}
		}
		least += len(k) - shared + 2
		most += 80 + len(k)
	}
	if got := have["axon_memory_index_bytes"]; got < float64(least) || got >= float64(most) {
		t.Errorf("axon_memory_index_bytes = %v for 100 keys, want between %d and %d", got, least, most)
	}
	for _, name := range []string{"axon_memory_go_heap_inuse_bytes", "axon_memory_go_runtime_bytes"} {
		if have[name] <= 0 {
			t.Errorf("%s = %v, want > 0", name, have[name])
		}
	}
	if heap, rt := have["axon_memory_go_heap_inuse_bytes"], have["axon_memory_go_runtime_bytes"]; heap > rt {
		t.Errorf("heap in use %v exceeds what the runtime holds %v", heap, rt)
	}
}
