package badger

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/axon-kv/axon/backend"
)

// liveLogs writes small and large values into an open store (so both its
// write-ahead log and value log hold records) and copies the data dir while
// it is still open, as a crash would leave it.
func liveLogs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	d, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		var b backend.Batch
		for j := 0; j < 4; j++ {
			size := 60 // under the value threshold: inline in the write-ahead log
			if (i+j)%7 == 0 {
				size = 6000 // value log
			}
			b.Put([]byte(fmt.Sprintf("key-%04d-%d", i, j)), bytes.Repeat([]byte{byte('a' + i%26)}, size))
		}
		if err := d.Commit(&b); err != nil {
			t.Fatal(err)
		}
	}
	crashed := t.TempDir()
	if out, err := exec.Command("cp", "-a", "--sparse=always", dir+"/.", crashed).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	d.Close()
	os.Remove(filepath.Join(crashed, "LOCK"))
	return crashed
}

func logsIn(t *testing.T, dir string) []string {
	t.Helper()
	var logs []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".mem") || strings.HasSuffix(e.Name(), ".vlog") {
			logs = append(logs, filepath.Join(dir, e.Name()))
		}
	}
	if len(logs) == 0 {
		t.Fatal("no logs written")
	}
	return logs
}

// TestValidLogEndMatchesBadger: validLogEnd finds the whole of an intact
// log valid, and for a log damaged in the middle names the very offset
// Badger cuts it at when it opens.
func TestValidLogEndMatchesBadger(t *testing.T) {
	crashed := liveLogs(t)
	for _, p := range logsIn(t, crashed) {
		valid, data, err := validLogEnd(p)
		if err != nil {
			t.Fatal(err)
		}
		if data > logHeaderSize && valid != data {
			t.Errorf("%s intact: valid end %d, data end %d", filepath.Base(p), valid, data)
		}
	}

	damaged := t.TempDir()
	if out, err := exec.Command("cp", "-a", "--sparse=always", crashed+"/.", damaged).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	want := map[string]int64{}
	for _, p := range logsIn(t, damaged) {
		_, data, err := validLogEnd(p)
		if err != nil {
			t.Fatal(err)
		}
		if data <= logHeaderSize {
			continue
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("\xde\xad\xbe\xef"), data/2); err != nil {
			t.Fatal(err)
		}
		f.Close()
		valid, data2, err := validLogEnd(p)
		if err != nil {
			t.Fatal(err)
		}
		if valid >= data2 || valid > data/2 {
			t.Fatalf("%s flipped at %d: valid end %d, data end %d", filepath.Base(p), data/2, valid, data2)
		}
		want[filepath.Base(p)] = valid
	}
	// Badger's own open cuts them at the same offsets; preflight kept
	// copies of what it cut.
	d, err := Open(Options{Dir: damaged})
	if err != nil {
		t.Fatal(err)
	}
	if d.Rescue() == "" {
		t.Error("no rescue dir for logs Badger cuts")
	}
	compared := 0
	for name, valid := range want {
		fi, err := os.Stat(filepath.Join(damaged, name))
		if err != nil {
			continue // a replayed write-ahead log may be flushed and removed
		}
		if strings.HasSuffix(name, ".mem") || fi.Size() < 1<<20 {
			compared++
			if fi.Size() != valid {
				t.Errorf("%s: Badger cut it to %d, validLogEnd said %d", name, fi.Size(), valid)
			}
		}
		if _, err := os.Stat(filepath.Join(d.Rescue(), name)); err != nil {
			t.Errorf("%s not kept in the rescue dir: %v", name, err)
		}
	}
	if compared == 0 {
		t.Error("no cut log left to compare with Badger's cut")
	}
	d.Close()
}

// TestDamagedFinishedValueLogRefused: Badger reads only the newest value
// log at open, so damage in an older one must be found by preflight, which
// refuses the store instead of serving it until that value is read.
func TestDamagedFinishedValueLogRefused(t *testing.T) {
	defer func(n int64) { valueLogFileSize = n }(valueLogFileSize)
	valueLogFileSize = 1 << 20 // Badger's smallest
	dir := t.TempDir()
	d, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	val := bytes.Repeat([]byte("v"), 1000)
	putKeys(t, d, 3000, 100, func(int) []byte { return val })
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	vlogs, _ := filepath.Glob(filepath.Join(dir, "*.vlog"))
	if len(vlogs) < 2 {
		t.Fatalf("want several value logs, got %v", vlogs)
	}

	// Intact: opens and reads every value back.
	d, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("intact store refused: %v", err)
	}
	snap, _ := d.Snapshot()
	n := 0
	if err := snap.Scan([]byte("key/"), []byte("key0"), backend.ScanOptions{}, func(k, v []byte) error {
		if !bytes.Equal(v, val) {
			t.Fatalf("%s: value of %d bytes read back wrong", k, len(v))
		}
		n++
		return nil
	}); err != nil || n != 3000 {
		t.Fatalf("scan: %d values, err %v", n, err)
	}
	snap.Close()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	oldest := vlogs[0] // Glob sorts; names are zero-padded file numbers
	f, err := os.OpenFile(oldest, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var c [1]byte
	if _, err := f.ReadAt(c[:], 500<<10); err != nil {
		t.Fatal(err)
	}
	c[0] ^= 0x40
	if _, err := f.WriteAt(c[:], 500<<10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d, err = Open(Options{Dir: dir})
	if err == nil {
		d.Close()
		t.Fatal("a store with a damaged finished value log was opened")
	}
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), filepath.Base(oldest)) {
		t.Fatalf("want ErrDamaged naming %s, got %v", filepath.Base(oldest), err)
	}
	t.Logf("refused: %v", err)
}
