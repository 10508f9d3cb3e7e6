package lazyfs

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mount serves a fresh backing directory (filled by setup first, if
// given) and returns the file system and its mount point. It skips the
// test where FUSE cannot be mounted.
func mount(t *testing.T, opts Options, setup func(backing string)) (fs *FS, backing, mnt string) {
	t.Helper()
	if err := Usable(); err != nil {
		t.Skipf("FUSE not usable here: %v", err)
	}
	dir := t.TempDir()
	backing, mnt = filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if setup != nil {
		setup(backing)
	}
	fs, err := Mount(backing, mnt, opts)
	if err != nil {
		t.Skipf("FUSE mount refused here: %v", err)
	}
	t.Cleanup(func() { _ = fs.Unmount() })
	return fs, backing, mnt
}

// powerLoss cuts the power and unmounts: the backing directory is then
// what survived.
func powerLoss(t *testing.T, fs *FS) {
	t.Helper()
	fs.CutPower()
	if err := fs.Unmount(); err != nil {
		t.Fatalf("unmount after the power cut: %v", err)
	}
}

func syncDir(t *testing.T, dir string) {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", dir, err)
	}
}

func mustWrite(t *testing.T, path string, data []byte, fsync bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if fsync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

func wantFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("after the power loss: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("after the power loss %s holds %d bytes %.40q, want %d bytes %.40q", path, len(got), got, len(want), want)
	}
}

func wantGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("after the power loss %s: %v, want it gone", path, err)
	}
}

func existing(name string, data []byte) func(string) {
	return func(backing string) {
		if err := os.WriteFile(filepath.Join(backing, name), data, 0o644); err != nil {
			panic(err)
		}
	}
}

func TestWriteWithoutFsyncIsLost(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, existing("f", []byte("durable")))
	mustWrite(t, filepath.Join(mnt, "f"), []byte("volatile-and-longer"), false)
	// The process sees its write.
	got, err := os.ReadFile(filepath.Join(mnt, "f"))
	if err != nil || string(got) != "volatile-and-longer" {
		t.Fatalf("read through the mount: %q, %v", got, err)
	}
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "f"), []byte("durable"))
}

func TestWriteWithFsyncIsKept(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, existing("f", []byte("durable")))
	mustWrite(t, filepath.Join(mnt, "f"), []byte("synced-and-longer"), true)
	mustWrite(t, filepath.Join(mnt, "f"), []byte("SYNCED"), false) // after the fsync: lost
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "f"), []byte("synced-and-longer"))
}

func TestTruncateWithoutFsyncIsUndone(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, existing("f", []byte("0123456789")))
	if err := os.Truncate(filepath.Join(mnt, "f"), 3); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(mnt, "f"), 6); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(mnt, "f"))
	if want := []byte("012\x00\x00\x00"); !bytes.Equal(got, want) {
		t.Fatalf("after truncating down and up the process reads %q, want %q", got, want)
	}
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "f"), []byte("0123456789"))
}

func TestTruncateWithFsyncIsKept(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, existing("f", []byte("0123456789")))
	f, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, size := range []int64{3, 6} {
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "f"), []byte("012\x00\x00\x00"))
}

// mmapWrite maps a file of size bytes shared and writable through the
// mount, writes data at off and calls msync if asked, then unmaps and
// closes it: the kernel holds any page not synced as dirty and writes it
// back when it likes (at close or unmount at the latest).
func mmapWrite(t *testing.T, path string, size int, off int, data []byte, msync bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("writable shared mmap through the mount: %v", err)
	}
	copy(m[off:], data)
	if msync {
		if err := unix.Msync(m, unix.MS_SYNC); err != nil {
			t.Fatalf("msync: %v", err)
		}
	}
	if err := syscall.Munmap(m); err != nil {
		t.Fatal(err)
	}
}

func TestMmapWriteWithMsyncIsKept(t *testing.T) {
	base := bytes.Repeat([]byte{'.'}, 3*pageSize)
	fs, backing, mnt := mount(t, Options{}, existing("wal", base))
	before := fs.Stats()
	mmapWrite(t, filepath.Join(mnt, "wal"), len(base), pageSize+100, []byte("acknowledged"), true)
	after := fs.Stats()
	// The msync must have reached this file system as writes and an
	// fsync: if the mount bypassed the page cache, or the kernel kept the
	// mapping to itself, the counts would not move.
	if after.Writes == before.Writes || after.FileSyncs == before.FileSyncs {
		t.Fatalf("msync did not reach the FUSE daemon: writes %d -> %d, fsyncs %d -> %d", before.Writes, after.Writes, before.FileSyncs, after.FileSyncs)
	}
	powerLoss(t, fs)
	want := bytes.Clone(base)
	copy(want[pageSize+100:], "acknowledged")
	wantFile(t, filepath.Join(backing, "wal"), want)
}

func TestMmapWriteWithoutMsyncIsLost(t *testing.T) {
	base := bytes.Repeat([]byte{'.'}, 3*pageSize)
	fs, backing, mnt := mount(t, Options{}, existing("wal", base))
	mmapWrite(t, filepath.Join(mnt, "wal"), len(base), pageSize+100, []byte("not-synced"), false)
	// Still visible to the running system.
	got, err := os.ReadFile(filepath.Join(mnt, "wal"))
	if err != nil || !bytes.Contains(got, []byte("not-synced")) {
		t.Fatalf("the mmap write is not visible through the mount: %v", err)
	}
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "wal"), base)
}

func TestCreateWithoutDirFsyncIsLost(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, nil)
	// Even with its data fsynced, the name was never made durable.
	mustWrite(t, filepath.Join(mnt, "new"), []byte("data"), true)
	powerLoss(t, fs)
	wantGone(t, filepath.Join(backing, "new"))
	if ents, _ := os.ReadDir(backing); len(ents) != 0 {
		t.Fatalf("backing dir holds %v after the power loss, want nothing", ents)
	}
}

func TestCreateWithDirFsyncIsKept(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, nil)
	mustWrite(t, filepath.Join(mnt, "new"), []byte("data"), true)
	syncDir(t, mnt)
	mustWrite(t, filepath.Join(mnt, "later"), []byte("data"), true) // after the dir fsync
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "new"), []byte("data"))
	wantGone(t, filepath.Join(backing, "later"))
}

// A name made durable before its data was fsynced holds only what was
// fsynced.
func TestDirFsyncDoesNotSyncData(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, nil)
	mustWrite(t, filepath.Join(mnt, "new"), []byte("data"), false)
	syncDir(t, mnt)
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "new"), nil)
}

func TestOrderedMetadataFileFsyncKeepsName(t *testing.T) {
	fs, backing, mnt := mount(t, Options{OrderedMetadata: true}, nil)
	mustWrite(t, filepath.Join(mnt, "unsynced"), []byte("data"), false)
	mustWrite(t, filepath.Join(mnt, "new"), []byte("data"), true)
	mustWrite(t, filepath.Join(mnt, "after"), []byte("data"), false)
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "new"), []byte("data"))
	// Its name was created before the fsync, so it is durable; its data
	// was never synced.
	wantFile(t, filepath.Join(backing, "unsynced"), nil)
	wantGone(t, filepath.Join(backing, "after"))
}

func TestRenameWithoutDirFsyncIsUndone(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, existing("MANIFEST", []byte("old")))
	mustWrite(t, filepath.Join(mnt, "MANIFEST.tmp"), []byte("new"), true)
	if err := os.Rename(filepath.Join(mnt, "MANIFEST.tmp"), filepath.Join(mnt, "MANIFEST")); err != nil {
		t.Fatal(err)
	}
	wantFileLive := func() {
		got, _ := os.ReadFile(filepath.Join(mnt, "MANIFEST"))
		if string(got) != "new" {
			t.Fatalf("the process reads %q after the rename", got)
		}
	}
	wantFileLive()
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "MANIFEST"), []byte("old"))
	wantGone(t, filepath.Join(backing, "MANIFEST.tmp"))
}

func TestRenameWithDirFsyncIsKept(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, existing("MANIFEST", []byte("old")))
	mustWrite(t, filepath.Join(mnt, "MANIFEST.tmp"), []byte("new"), true)
	if err := os.Rename(filepath.Join(mnt, "MANIFEST.tmp"), filepath.Join(mnt, "MANIFEST")); err != nil {
		t.Fatal(err)
	}
	syncDir(t, mnt)
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "MANIFEST"), []byte("new"))
	wantGone(t, filepath.Join(backing, "MANIFEST.tmp"))
}

func TestUnlinkWithoutDirFsyncIsUndone(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, existing("00001.mem", []byte("wal")))
	if err := os.Remove(filepath.Join(mnt, "00001.mem")); err != nil {
		t.Fatal(err)
	}
	powerLoss(t, fs)
	wantFile(t, filepath.Join(backing, "00001.mem"), []byte("wal"))
}

// An open file keeps its data after its name is removed durably, and a
// file renamed into a subdirectory moves only when both are synced.
func TestUnlinkedOpenFileAndSubdirRename(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, existing("a", []byte("aaa")))
	f, err := os.OpenFile(filepath.Join(mnt, "a"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Remove(filepath.Join(mnt, "a")); err != nil {
		t.Fatal(err)
	}
	syncDir(t, mnt)
	buf := make([]byte, 3)
	if _, err := f.ReadAt(buf, 0); err != nil || string(buf) != "aaa" {
		t.Fatalf("read of an unlinked open file: %q, %v", buf, err)
	}
	if err := os.Mkdir(filepath.Join(mnt, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(mnt, "b"), []byte("bbb"), true)
	syncDir(t, mnt)
	if err := os.Rename(filepath.Join(mnt, "b"), filepath.Join(mnt, "sub", "b")); err != nil {
		t.Fatal(err)
	}
	syncDir(t, filepath.Join(mnt, "sub"))
	powerLoss(t, fs)
	wantGone(t, filepath.Join(backing, "a"))
	wantGone(t, filepath.Join(backing, "b"))
	wantFile(t, filepath.Join(backing, "sub", "b"), []byte("bbb"))
}

// Without a power cut, unmounting is a clean shutdown: nothing is lost,
// and a new mount serves it again.
func TestCleanUnmountKeepsEverything(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, nil)
	mustWrite(t, filepath.Join(mnt, "f"), []byte("written"), false)
	if err := fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(backing, "f"), []byte("written"))
	fs2, err := Mount(backing, mnt, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer fs2.Unmount()
	got, err := os.ReadFile(filepath.Join(mnt, "f"))
	if err != nil || string(got) != "written" {
		t.Fatalf("after remount: %q, %v", got, err)
	}
}

// After the power cut nothing more is accepted.
func TestNothingAfterPowerCut(t *testing.T) {
	fs, backing, mnt := mount(t, Options{}, existing("f", []byte("durable")))
	f, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fs.CutPower()
	_, _ = f.WriteAt([]byte("late"), 0)
	if err := f.Sync(); err == nil {
		t.Errorf("fsync after the power cut succeeded")
	}
	f.Close()
	if err := fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(backing, "f"), []byte("durable"))
}
