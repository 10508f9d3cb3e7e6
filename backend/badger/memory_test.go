package badger

import (
	"testing"

	"github.com/axon-kv/axon/backend"
)

func TestAllocatorBytes(t *testing.T) {
	for report, want := range map[string]int64{
		"":                                     0,
		"Tag: Builder Num: 3 Size: 124 MiB . ": 124 << 20,
		"Tag: Builder Num: 1 Size: 4.0 MiB . Tag: TableBuilder Num: 2 Size: 512 KiB . ": 4<<20 + 512<<10,
		"Tag: x Num: 1 Size: 1.5 GiB . ":                                                3 << 29,
		"Tag: x Num: 1 Size: 9 B . ":                                                    9,
	} {
		if got := allocatorBytes(report); got != want {
			t.Errorf("allocatorBytes(%q) = %d, want %d", report, got, want)
		}
	}
}

func TestMemoryStats(t *testing.T) {
	d, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var b backend.Batch
	b.Put([]byte("k"), []byte("v"))
	if err := d.Commit(&b); err != nil {
		t.Fatal(err)
	}
	st := d.MemoryStats()
	if st.AllocatorBytes < 0 || st.CallocBytes < 0 || st.BlockCacheBytes < 0 {
		t.Errorf("negative figures: %+v", st)
	}
}
