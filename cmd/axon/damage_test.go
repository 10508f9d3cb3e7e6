package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/witness"
)

// damageStore is a data dir written through a real axon process and the
// writes it acknowledged.
type damageStore struct {
	dir   string
	rev   int64
	kvs   map[string]string // latest acknowledged value per key
	files []string          // engine files, relative to dir/badger
}

// writeDamageStore loads keys with kube-sized values and some large ones
// (Badger keeps values over 4 KiB in its value log), compacts, and stops
// the server cleanly, or with kill -9 after more writes so that the
// engine's write-ahead logs hold data.
func writeDamageStore(t *testing.T, bin string, crash bool) damageStore {
	t.Helper()
	dir := t.TempDir()
	p := testenv.StartAxonProcess(t, bin, dir)
	cli := p.WaitReady(t)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := damageStore{dir: dir, kvs: map[string]string{}}
	put := func(k, v string) {
		resp, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		st.kvs[k] = v
		st.rev = resp.Header.Revision
	}
	for i := 0; i < 4000; i++ {
		put(fmt.Sprintf("/registry/configmaps/ns-%02d/cm-%05d", i%20, i), strings.Repeat(string(rune('a'+i%26)), 512))
	}
	for i := 0; i < 20; i++ {
		put(fmt.Sprintf("/registry/secrets/big-%02d", i), strings.Repeat(string(rune('A'+i)), 6000))
	}
	if _, err := cli.Compact(ctx, st.rev-1000, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	for i := 0; i < 1000; i++ {
		put(fmt.Sprintf("/registry/configmaps/ns-%02d/cm-%05d", i%20, i), strings.Repeat("u", 512))
	}
	if crash {
		if err := p.Cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		p.WaitExit(t, 10*time.Second)
	} else {
		if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitExit(t, 30*time.Second); err != nil {
			t.Fatalf("axon exited with %v", err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(dir, "badger"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		st.files = append(st.files, e.Name())
	}
	return st
}

// contents maps every regular file under dir to the hash of its bytes up
// to the last non-zero one: Badger preallocates logs with zeros and cuts
// them back to their end at open, which loses nothing.
func contents(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	m := map[string][32]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "LOCK" {
			return err
		}
		h, err := hashTrimmed(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		m[rel] = h
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// hashTrimmed hashes a file without its trailing zeros, reading it in
// chunks: value logs are preallocated sparse files of 2 GiB.
func hashTrimmed(path string) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	zeros := 0 // zero bytes seen but not yet hashed
	for {
		n, err := f.Read(buf)
		chunk := buf[:n]
		if end := len(bytes.TrimRight(chunk, "\x00")); end > 0 {
			h.Write(make([]byte, zeros))
			h.Write(chunk[:end])
			zeros = n - end
		} else {
			zeros += n
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return [32]byte{}, err
		}
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

func mustDamage(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("damaging the data dir: %v", err)
	}
}

func flipBytes(path string, at float64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	i := int(float64(len(bytes.TrimRight(b, "\x00"))) * at)
	for j := i; j < i+8 && j < len(b); j++ {
		b[j] ^= 0x5a
	}
	return os.WriteFile(path, b, 0o600)
}

func truncateTo(path string, frac float64) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	n := int64(float64(len(bytes.TrimRight(b, "\x00"))) * frac)
	if n >= fi.Size() {
		n = fi.Size() - 1
	}
	return os.Truncate(path, n)
}

// pick returns the first engine file of st with the suffix, in name order
// (the oldest table holds the oldest, compacted data).
func (st damageStore) pick(t *testing.T, suffix string, last bool) string {
	t.Helper()
	var names []string
	for _, f := range st.files {
		if strings.HasSuffix(f, suffix) {
			names = append(names, f)
		}
	}
	if len(names) == 0 {
		t.Fatalf("no %s file in %v", suffix, st.files)
	}
	sort.Strings(names)
	if last {
		return names[len(names)-1]
	}
	return names[0]
}

// TestDamagedDataDir damages each kind of file in a stopped data dir
// (truncate, delete, flip bytes) and starts a real axon on it: it must
// either refuse with a one-line error, exit non-zero and keep every byte
// it found (in place or in a rescue dir), or repair what it can rebuild
// and serve every acknowledged write. Serving an older or emptier store
// fails the test.
func TestDamagedDataDir(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs axon processes")
	}
	bin := testenv.BuildAxon(t)
	clean := writeDamageStore(t, bin, false)
	crashed := writeDamageStore(t, bin, true)
	eng := func(dir string) string { return filepath.Join(dir, "badger") }

	type outcome int
	const (
		refuse outcome = iota
		serve
	)
	cases := []struct {
		name   string
		store  damageStore
		damage func(t *testing.T, dir string)
		want   outcome
	}{
		{"MANIFEST truncated to its header", clean, func(t *testing.T, d string) {
			mustDamage(t, os.Truncate(filepath.Join(eng(d), "MANIFEST"), 8))
		}, refuse},
		{"MANIFEST truncated to half", clean, func(t *testing.T, d string) {
			mustDamage(t, truncateTo(filepath.Join(eng(d), "MANIFEST"), 0.5))
		}, refuse},
		{"MANIFEST deleted", clean, func(t *testing.T, d string) {
			mustDamage(t, os.Remove(filepath.Join(eng(d), "MANIFEST")))
		}, refuse},
		{"MANIFEST bytes flipped", clean, func(t *testing.T, d string) {
			mustDamage(t, flipBytes(filepath.Join(eng(d), "MANIFEST"), 0.5))
		}, refuse},
		{"table truncated", clean, func(t *testing.T, d string) {
			mustDamage(t, truncateTo(filepath.Join(eng(d), clean.pick(t, ".sst", false)), 0.5))
		}, refuse},
		{"table deleted", clean, func(t *testing.T, d string) {
			mustDamage(t, os.Remove(filepath.Join(eng(d), clean.pick(t, ".sst", true))))
		}, refuse},
		{"table bytes flipped", clean, func(t *testing.T, d string) {
			mustDamage(t, flipBytes(filepath.Join(eng(d), clean.pick(t, ".sst", false)), 0.3))
		}, refuse},
		{"witness deleted", clean, func(t *testing.T, d string) {
			mustDamage(t, os.Remove(filepath.Join(d, witness.FileName)))
		}, serve},
		{"witness bytes flipped", clean, func(t *testing.T, d string) {
			mustDamage(t, flipBytes(filepath.Join(d, witness.FileName), 0.02))
			mustDamage(t, flipBytes(filepath.Join(d, witness.FileName), 0.52))
		}, serve},
		{"witness truncated", clean, func(t *testing.T, d string) {
			mustDamage(t, os.Truncate(filepath.Join(d, witness.FileName), 100))
		}, serve},
		{"KEYREGISTRY deleted", clean, func(t *testing.T, d string) {
			mustDamage(t, os.Remove(filepath.Join(eng(d), "KEYREGISTRY")))
		}, serve},
		{"KEYREGISTRY truncated", clean, func(t *testing.T, d string) {
			mustDamage(t, os.Truncate(filepath.Join(eng(d), "KEYREGISTRY"), 10))
		}, refuse},
		{"DISCARD deleted", clean, func(t *testing.T, d string) {
			mustDamage(t, os.Remove(filepath.Join(eng(d), "DISCARD")))
		}, serve},
		{"write-ahead log bytes flipped", crashed, func(t *testing.T, d string) {
			mustDamage(t, flipBytes(filepath.Join(eng(d), crashed.pick(t, ".mem", false)), 0.3))
		}, refuse},
		{"write-ahead log truncated", crashed, func(t *testing.T, d string) {
			mustDamage(t, truncateTo(filepath.Join(eng(d), crashed.pick(t, ".mem", false)), 0.3))
		}, refuse},
		{"write-ahead log deleted", crashed, func(t *testing.T, d string) {
			mustDamage(t, os.Remove(filepath.Join(eng(d), crashed.pick(t, ".mem", false))))
		}, refuse},
		{"value log bytes flipped", clean, func(t *testing.T, d string) {
			mustDamage(t, flipBytes(filepath.Join(eng(d), clean.pick(t, ".vlog", false)), 0.5))
		}, refuse},
		{"value log deleted", clean, func(t *testing.T, d string) {
			mustDamage(t, os.Remove(filepath.Join(eng(d), clean.pick(t, ".vlog", false))))
		}, refuse},
		{"no damage after a crash", crashed, func(t *testing.T, d string) {}, serve},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := testenv.CopyDir(t, tc.store.dir)
			tc.damage(t, dir)
			before := contents(t, dir)
			p := testenv.StartAxonProcess(t, bin, dir)
			switch tc.want {
			case refuse:
				err := p.WaitExit(t, time.Minute)
				out := p.Output()
				if err == nil {
					t.Fatalf("axon served a damaged data dir (exit 0); output:\n%s", out)
				}
				if strings.Contains(out, "goroutine ") || strings.Contains(out, "panic:") {
					t.Fatalf("axon crashed instead of refusing:\n%s", out)
				}
				var errLines []string
				for _, l := range strings.Split(out, "\n") {
					if strings.HasPrefix(l, "Error:") {
						errLines = append(errLines, l)
					}
				}
				if len(errLines) != 1 {
					t.Fatalf("want one Error: line, got %d in:\n%s", len(errLines), out)
				}
				t.Logf("refused: %s", errLines[0])
				assertKept(t, before, contents(t, dir))
			case serve:
				cli := p.WaitReady(t)
				defer cli.Close()
				assertServes(t, cli, tc.store)
				if _, ok, err := witness.Read(dir); err != nil || !ok {
					t.Fatalf("witness not rewritten: ok=%v err=%v", ok, err)
				}
			}
		})
	}
}

// assertKept: every file found before the refused start still exists with
// the same bytes, in place or under a rescue dir.
func assertKept(t *testing.T, before, after map[string][32]byte) {
	t.Helper()
	have := map[[32]byte]bool{}
	for _, h := range after {
		have[h] = true
	}
	for name, h := range before {
		if ah, ok := after[name]; ok && ah == h {
			continue
		}
		if !have[h] {
			t.Errorf("%s was changed or deleted by the refused start", name)
		}
	}
}

func assertServes(t *testing.T, cli *clientv3.Client, st damageStore) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := cli.Get(ctx, "/registry/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if resp.Header.Revision != st.rev {
		t.Errorf("serves revision %d, acknowledged %d", resp.Header.Revision, st.rev)
	}
	got := map[string]string{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	if len(got) != len(st.kvs) {
		t.Errorf("serves %d keys, acknowledged %d", len(got), len(st.kvs))
	}
	for k, v := range st.kvs {
		if got[k] != v {
			t.Fatalf("key %s: value of %d bytes, acknowledged %d bytes", k, len(got[k]), len(v))
		}
	}
}
