// Package lazyfs is a FUSE file system for power-loss tests, in the spirit
// of LazyFS (used by etcd's robustness tests). It serves a backing
// directory, and everything a process does through the mount is visible at
// once through the mount, but only what was made durable reaches the
// backing directory. A simulated power cut (CutPower, then Unmount) throws
// the rest away, so the backing directory is afterwards exactly the durable
// state a machine would find after losing power.
//
// What is modeled:
//
//   - File data and size. Writes (write(2), or dirty pages of a shared
//     mmap that the kernel writes back) go to an in-memory overlay of 4 KiB
//     pages; truncation changes the size in memory only. They reach the
//     backing file on fsync or fdatasync of that file (msync reaches a FUSE
//     daemon as writes followed by FSYNC). close is not durability, and
//     neither is writeback by the kernel.
//   - Names of regular files. Creating, renaming and unlinking a file
//     change the namespace the process sees at once; the backing directory
//     changes only on fsync of the directory holding the name, which makes
//     every name in that directory durable as it is then. Until then a new
//     file is kept in a scratch directory next to the backing directory
//     (holding only its fsynced data), an unlinked file keeps its durable
//     name, and a rename is not done. With Options.OrderedMetadata, any
//     fsync (of a file or a directory) makes every earlier namespace change
//     durable, as journaling file systems (ext4, XFS) do in practice; the
//     default is the strict POSIX reading, where only a directory fsync
//     does.
//
// What is not modeled:
//
//   - Directories themselves: mkdir, rmdir and a directory rename are done
//     on the backing directory at once, and are durable at once.
//   - Torn or reordered writes within a file: a page either reached the
//     backing file by an fsync or it did not; LazyFS's torn-write faults
//     are not reproduced.
//   - Modes and times are kept in memory and written at fsync (mode only);
//     hard links, symlinks, special files, xattrs, fallocate and copy ranges
//     are refused (ENOTSUP or ENOSYS), and POSIX locks stay in the kernel.
//   - The backing directory is not fsynced itself: it stands for the disk,
//     and the disk of the simulated machine does not lose power here.
//   - syncfs and sync(2): FUSE does not forward them.
package lazyfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

const pageSize = 4096

// Options configure Mount.
type Options struct {
	// OrderedMetadata makes any fsync also make every earlier namespace
	// change durable (file creations, renames, unlinks in any directory),
	// like a journaling file system. Without it only a directory fsync
	// makes the names in that directory durable.
	OrderedMetadata bool
	// Debug logs every FUSE request.
	Debug bool
}

// Stats count what the file system saw.
type Stats struct {
	Writes, FileSyncs, DirSyncs int64
	BytesSynced                 int64
}

// FS is a mounted lazy file system.
type FS struct {
	fuse.RawFileSystem

	opts       Options
	backing    string
	scratch    string
	mountPoint string
	server     *fuse.Server

	mu       sync.Mutex
	nodes    map[uint64]*node
	nextIno  uint64
	handles  map[uint64]*dirHandle
	nextFh   uint64
	cut      bool
	gone     bool // unmounted
	stats    Stats
	scratchN int64
}

type node struct {
	ino    uint64
	isDir  bool
	mode   uint32 // permission bits and type
	owner  fuse.Owner
	mtime  time.Time
	parent *node  // where the process sees it; nil once unlinked
	name   string // its name in parent

	// Directories.
	children map[string]*node // the names the process sees
	durable  map[string]*node // the regular files the backing directory holds

	// Regular files. Their data lives in one storage file, which holds
	// exactly the fsynced data: at dDir/dName in the backing directory
	// when the file has a durable name, else in the scratch directory.
	dDir     *node
	dName    string
	scrName  string
	f        *os.File
	dsize    int64            // size of the storage file
	size     int64            // size the process sees
	zeroFrom int64            // storage bytes at or past this were cut by a truncate
	dirty    map[int64][]byte // page index -> page
}

type dirHandle struct {
	names []string
}

// Mount serves backing at mountPoint (both must exist) until Unmount. A
// scratch directory is made next to backing for files without a durable
// name. Mount fails if FUSE is not usable here (no /dev/fuse, no
// fusermount3, no permission), with the reason.
func Mount(backing, mountPoint string, opts Options) (*FS, error) {
	backing, err := filepath.Abs(backing)
	if err != nil {
		return nil, err
	}
	fs := &FS{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		opts:          opts,
		backing:       backing,
		scratch:       backing + ".lazyfs-scratch",
		mountPoint:    mountPoint,
		nodes:         map[uint64]*node{},
		nextIno:       fuse.FUSE_ROOT_ID,
		handles:       map[uint64]*dirHandle{},
	}
	if err := os.RemoveAll(fs.scratch); err != nil {
		return nil, err
	}
	if err := os.Mkdir(fs.scratch, 0o700); err != nil {
		return nil, err
	}
	root, err := fs.load(nil, "", backing)
	if err != nil {
		fs.closeFiles()
		return nil, err
	}
	if root.ino != fuse.FUSE_ROOT_ID {
		panic("lazyfs: root is not the first inode")
	}
	srv, err := fuse.NewServer(fs, mountPoint, &fuse.MountOptions{
		FsName:             "lazyfs:" + backing,
		Name:               "lazyfs",
		DisableReadDirPlus: true,
		DisableXAttrs:      true,
		Debug:              opts.Debug,
	})
	if err != nil {
		fs.closeFiles()
		return nil, fmt.Errorf("lazyfs: mount %s: %w", mountPoint, err)
	}
	fs.server = srv
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		_ = srv.Unmount()
		fs.closeFiles()
		return nil, fmt.Errorf("lazyfs: mount %s: %w", mountPoint, err)
	}
	return fs, nil
}

// Usable says why FUSE cannot be mounted here, or nil if it probably can.
func Usable() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse: %w", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		if _, err2 := exec.LookPath("fusermount"); err2 != nil {
			return fmt.Errorf("no fusermount3 or fusermount on PATH (apt-get install fuse3): %w", err)
		}
	}
	return nil
}

// load builds the nodes for what the backing directory holds: it is all
// durable.
func (fs *FS) load(parent *node, name, path string) (*node, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	sys := st.Sys().(*syscall.Stat_t)
	n := fs.newNode(st.IsDir(), sys.Mode, fuse.Owner{Uid: sys.Uid, Gid: sys.Gid})
	n.mtime = st.ModTime()
	n.parent, n.name = parent, name
	if !st.IsDir() {
		if n.f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
			return nil, err
		}
		n.dsize, n.size, n.zeroFrom = st.Size(), st.Size(), st.Size()
		n.dDir, n.dName = parent, name
		return n, nil
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !e.Type().IsDir() && !e.Type().IsRegular() {
			continue // not served: see the package comment
		}
		c, err := fs.load(n, e.Name(), filepath.Join(path, e.Name()))
		if err != nil {
			return nil, err
		}
		n.children[e.Name()] = c
		if !c.isDir {
			n.durable[e.Name()] = c
		}
	}
	return n, nil
}

func (fs *FS) newNode(dir bool, mode uint32, owner fuse.Owner) *node {
	n := &node{ino: fs.nextIno, isDir: dir, mode: mode, owner: owner, mtime: time.Now()}
	fs.nextIno++
	if dir {
		n.children, n.durable = map[string]*node{}, map[string]*node{}
	} else {
		n.dirty = map[int64][]byte{}
	}
	fs.nodes[n.ino] = n
	return n
}

// backingPath is where a directory is in the backing directory
// (directories are durable at once).
func (fs *FS) backingPath(d *node) string {
	var parts []string
	for ; d.parent != nil; d = d.parent {
		parts = append(parts, d.name)
	}
	slices.Reverse(parts)
	return filepath.Join(append([]string{fs.backing}, parts...)...)
}

func (fs *FS) storagePath(n *node) string {
	if n.dDir != nil {
		return filepath.Join(fs.backingPath(n.dDir), n.dName)
	}
	return filepath.Join(fs.scratch, n.scrName)
}

func (fs *FS) newScratchName() string {
	fs.scratchN++
	return fmt.Sprintf("f%08d", fs.scratchN)
}

// CutPower is the moment the power goes: from now on writes are dropped
// and every other request fails with EIO, so nothing more becomes durable.
// Kill the processes using the mount, then call Unmount.
func (fs *FS) CutPower() {
	fs.mu.Lock()
	fs.cut = true
	fs.mu.Unlock()
}

// Unmount unmounts. After CutPower it throws away everything not durable
// (the kernel may still write dirty pages back while unmounting: they are
// dropped), leaving the backing directory as the durable state. Without a
// power cut it is a clean shutdown: everything written is made durable
// first, as the kernel would before unmounting a disk.
func (fs *FS) Unmount() error {
	fs.mu.Lock()
	if fs.gone {
		fs.mu.Unlock()
		return nil
	}
	var err error
	if !fs.cut {
		err = fs.syncAll()
	}
	fs.mu.Unlock()
	// The server must keep answering while the kernel unmounts.
	if uerr := fs.server.Unmount(); uerr != nil {
		// Something still holds the mount (a process not yet reaped):
		// detach it lazily; the kernel finishes when it lets go.
		// The serve loop runs on until then, refusing everything, since
		// the power is cut below.
		out, lerr := exec.Command(fusermount(), "-u", "-z", fs.mountPoint).CombinedOutput()
		if lerr != nil {
			err = errors.Join(err, uerr, fmt.Errorf("%v: %s", lerr, out))
		}
	}
	fs.mu.Lock()
	fs.gone, fs.cut = true, true
	fs.closeFiles()
	fs.mu.Unlock()
	return errors.Join(err, os.RemoveAll(fs.scratch))
}

func fusermount() string {
	if p, err := exec.LookPath("fusermount3"); err == nil {
		return p
	}
	return "fusermount"
}

func (fs *FS) closeFiles() {
	for _, n := range fs.nodes {
		if n.f != nil {
			n.f.Close()
			n.f = nil
		}
	}
}

// Stats returns counts so far.
func (fs *FS) Stats() Stats {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.stats
}

// Pending describes what a power cut now would lose: files whose data or
// size is not durable, and names that differ from the durable ones. For
// test failure messages.
func (fs *FS) Pending() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var out []string
	for _, n := range fs.nodes {
		if n.isDir && n.children == nil {
			continue // removed
		}
		if n.isDir {
			dp := fs.backingPath(n)
			for name, c := range n.children {
				if !c.isDir && n.durable[name] != c {
					out = append(out, fmt.Sprintf("name %s/%s not durable", dp, name))
				}
			}
			for name, c := range n.durable {
				if n.children[name] != c {
					out = append(out, fmt.Sprintf("durable name %s/%s is gone or renamed, not yet durably", dp, name))
				}
			}
			continue
		}
		if len(n.dirty) > 0 || n.size != n.dsize || n.zeroFrom < n.dsize {
			where := "(unlinked)"
			if n.parent != nil {
				where = filepath.Join(fs.backingPath(n.parent), n.name)
			}
			out = append(out, fmt.Sprintf("file %s: %d dirty pages, size %d, durable size %d", where, len(n.dirty), n.size, n.dsize))
		}
	}
	sort.Strings(out)
	return out
}

// --- durability ---

// syncFile writes n's overlay into its storage file.
func (fs *FS) syncFile(n *node) error {
	if n.zeroFrom < n.dsize {
		if err := n.f.Truncate(n.zeroFrom); err != nil {
			return err
		}
	}
	for idx, pg := range n.dirty {
		off := idx * pageSize
		if off >= n.size {
			continue
		}
		end := min(int64(pageSize), n.size-off)
		if _, err := n.f.WriteAt(pg[:end], off); err != nil {
			return err
		}
		fs.stats.BytesSynced += end
	}
	if err := n.f.Truncate(n.size); err != nil {
		return err
	}
	if err := n.f.Chmod(os.FileMode(n.mode & 0o7777)); err != nil {
		return err
	}
	n.dirty = map[int64][]byte{}
	n.dsize, n.zeroFrom = n.size, n.size
	return nil
}

// syncDir makes the names of regular files in d durable as the process
// sees them now.
func (fs *FS) syncDir(d *node) error {
	dp := fs.backingPath(d)
	// Durable names the process no longer sees (unlinked, renamed away or
	// replaced) go first: their storage moves to scratch.
	for name, c := range d.durable {
		if d.children[name] == c {
			continue
		}
		scr := fs.newScratchName()
		if err := os.Rename(filepath.Join(dp, name), filepath.Join(fs.scratch, scr)); err != nil {
			return err
		}
		delete(d.durable, name)
		c.dDir, c.dName, c.scrName = nil, "", scr
	}
	for name, c := range d.children {
		if c.isDir || d.durable[name] == c {
			continue
		}
		from := fs.storagePath(c)
		if err := os.Rename(from, filepath.Join(dp, name)); err != nil {
			return err
		}
		if c.dDir != nil { // renamed from another directory, which loses it
			delete(c.dDir.durable, c.dName)
		}
		d.durable[name] = c
		c.dDir, c.dName, c.scrName = d, name, ""
	}
	return nil
}

func (fs *FS) syncAllDirs() error {
	for _, n := range fs.nodes {
		if n.isDir && n.children != nil {
			if err := fs.syncDir(n); err != nil {
				return err
			}
		}
	}
	return nil
}

func (fs *FS) syncAll() error {
	for _, n := range fs.nodes {
		if !n.isDir && n.f != nil {
			if err := fs.syncFile(n); err != nil {
				return err
			}
		}
	}
	return fs.syncAllDirs()
}

// --- data ---

// readPage returns the content of page idx as the process sees it,
// without the overlay: the storage file, zeros past its durable end or a
// truncation.
func (fs *FS) readStoragePage(n *node, idx int64, buf []byte) error {
	clear(buf)
	off := idx * pageSize
	valid := min(n.dsize, n.zeroFrom)
	if off >= valid {
		return nil
	}
	want := min(int64(len(buf)), valid-off)
	_, err := n.f.ReadAt(buf[:want], off)
	if err == io.EOF {
		err = nil
	}
	return err
}

func (fs *FS) truncate(n *node, size int64) {
	if size < n.size {
		for idx, pg := range n.dirty {
			off := idx * pageSize
			switch {
			case off >= size:
				delete(n.dirty, idx)
			case off+pageSize > size:
				clear(pg[size-off:])
			}
		}
		n.zeroFrom = min(n.zeroFrom, size)
	}
	n.size = size
	n.mtime = time.Now()
}

// --- FUSE requests ---

func (fs *FS) String() string { return "lazyfs" }

func (fs *FS) lookupNode(id uint64) (*node, fuse.Status) {
	if fs.cut {
		return nil, fuse.EIO
	}
	n := fs.nodes[id]
	if n == nil {
		return nil, fuse.Status(syscall.ESTALE)
	}
	return n, fuse.OK
}

func (fs *FS) dirNode(id uint64) (*node, fuse.Status) {
	n, st := fs.lookupNode(id)
	if !st.Ok() {
		return nil, st
	}
	if !n.isDir {
		return nil, fuse.ENOTDIR
	}
	if n.children == nil { // removed
		return nil, fuse.ENOENT
	}
	return n, fuse.OK
}

func (fs *FS) fillAttr(n *node, a *fuse.Attr) {
	a.Ino = n.ino
	a.Mode = n.mode
	a.Owner = n.owner
	a.Blksize = pageSize
	if n.isDir {
		a.Nlink = 2
		a.Size = pageSize
	} else {
		if n.parent != nil {
			a.Nlink = 1
		}
		a.Size = uint64(n.size)
		// Allocated, not apparent, size: Badger preallocates sparse
		// files of gigabytes, and Axon's quota counts st_blocks.
		var st syscall.Stat_t
		if n.f != nil && syscall.Fstat(int(n.f.Fd()), &st) == nil {
			a.Blocks = uint64(st.Blocks)
		}
		a.Blocks += uint64(len(n.dirty)) * pageSize / 512
	}
	sec, nsec := uint64(n.mtime.Unix()), uint32(n.mtime.Nanosecond())
	a.Mtime, a.Mtimensec = sec, nsec
	a.Ctime, a.Ctimensec = sec, nsec
	a.Atime, a.Atimensec = sec, nsec
}

const cacheTimeout = time.Second

func (fs *FS) fillEntry(n *node, out *fuse.EntryOut) {
	out.NodeId = n.ino
	out.Generation = 1
	out.SetEntryTimeout(cacheTimeout)
	out.SetAttrTimeout(cacheTimeout)
	fs.fillAttr(n, &out.Attr)
}

func (fs *FS) Lookup(_ <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dirNode(h.NodeId)
	if !st.Ok() {
		return st
	}
	c := d.children[name]
	if c == nil {
		return fuse.ENOENT
	}
	fs.fillEntry(c, out)
	return fuse.OK
}

// Forget is a no-op: nodes are kept for the life of the mount (a data dir
// holds few files).
func (fs *FS) Forget(nodeid, nlookup uint64) {}

func (fs *FS) GetAttr(_ <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.lookupNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	out.SetTimeout(cacheTimeout)
	fs.fillAttr(n, &out.Attr)
	return fuse.OK
}

func (fs *FS) SetAttr(_ <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.lookupNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	if in.Valid&fuse.FATTR_SIZE != 0 {
		if n.isDir {
			return fuse.Status(syscall.EISDIR)
		}
		fs.truncate(n, int64(in.Size))
	}
	if in.Valid&fuse.FATTR_MODE != 0 {
		n.mode = n.mode&syscall.S_IFMT | in.Mode&0o7777
	}
	if in.Valid&fuse.FATTR_UID != 0 {
		n.owner.Uid = in.Uid
	}
	if in.Valid&fuse.FATTR_GID != 0 {
		n.owner.Gid = in.Gid
	}
	if in.Valid&fuse.FATTR_MTIME != 0 {
		n.mtime = time.Unix(int64(in.Mtime), int64(in.Mtimensec))
	} else if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
		n.mtime = time.Now()
	}
	out.SetTimeout(cacheTimeout)
	fs.fillAttr(n, &out.Attr)
	return fuse.OK
}

func (fs *FS) Mkdir(_ <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dirNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	if d.children[name] != nil {
		return fuse.Status(syscall.EEXIST)
	}
	if err := os.Mkdir(filepath.Join(fs.backingPath(d), name), os.FileMode(in.Mode&0o7777)); err != nil {
		return fuse.ToStatus(err)
	}
	c := fs.newNode(true, syscall.S_IFDIR|in.Mode&0o7777, in.Owner)
	c.parent, c.name = d, name
	d.children[name] = c
	fs.fillEntry(c, out)
	return fuse.OK
}

func (fs *FS) Create(_ <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dirNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	c := d.children[name]
	switch {
	case c != nil && in.Flags&syscall.O_EXCL != 0:
		return fuse.Status(syscall.EEXIST)
	case c != nil && c.isDir:
		return fuse.Status(syscall.EISDIR)
	case c != nil:
		if in.Flags&syscall.O_TRUNC != 0 {
			fs.truncate(c, 0)
		}
	default:
		c = fs.newNode(false, syscall.S_IFREG|in.Mode&0o7777, in.Owner)
		c.scrName = fs.newScratchName()
		f, err := os.OpenFile(filepath.Join(fs.scratch, c.scrName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			delete(fs.nodes, c.ino)
			return fuse.ToStatus(err)
		}
		c.f = f
		c.parent, c.name = d, name
		d.children[name] = c
		d.mtime = time.Now()
	}
	fs.fillEntry(c, &out.EntryOut)
	return fuse.OK
}

func (fs *FS) Open(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.lookupNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	if n.isDir {
		return fuse.Status(syscall.EISDIR)
	}
	if in.Flags&syscall.O_TRUNC != 0 {
		fs.truncate(n, 0)
	}
	// No FOPEN_DIRECT_IO: the page cache must stay on, or the kernel
	// refuses writable shared mmaps (Badger's WAL is one).
	return fuse.OK
}

func (fs *FS) Read(_ <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.lookupNode(in.NodeId)
	if !st.Ok() {
		return nil, st
	}
	off := int64(in.Offset)
	if off >= n.size {
		return fuse.ReadResultData(nil), fuse.OK
	}
	end := min(n.size, off+int64(in.Size))
	out := buf[:0]
	if int64(cap(buf)) < end-off {
		out = make([]byte, 0, end-off)
	}
	page := make([]byte, pageSize)
	for pos := off; pos < end; {
		idx := pos / pageSize
		in := pos - idx*pageSize
		take := min(pageSize-in, end-pos)
		src := n.dirty[idx]
		if src == nil {
			if err := fs.readStoragePage(n, idx, page); err != nil {
				return nil, fuse.ToStatus(err)
			}
			src = page
		}
		out = append(out, src[in:in+take]...)
		pos += take
	}
	return fuse.ReadResultData(out), fuse.OK
}

func (fs *FS) Write(_ <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.cut {
		// The power is gone: the kernel's writeback (at unmount, or of a
		// killed process's mmap) lands nowhere.
		return uint32(len(data)), fuse.OK
	}
	n, st := fs.lookupNode(in.NodeId)
	if !st.Ok() {
		return 0, st
	}
	if n.isDir {
		return 0, fuse.Status(syscall.EISDIR)
	}
	fs.stats.Writes++
	off := int64(in.Offset)
	for pos := 0; pos < len(data); {
		idx := (off + int64(pos)) / pageSize
		in := (off + int64(pos)) - idx*pageSize
		pg := n.dirty[idx]
		if pg == nil {
			pg = make([]byte, pageSize)
			if err := fs.readStoragePage(n, idx, pg); err != nil {
				return 0, fuse.ToStatus(err)
			}
			n.dirty[idx] = pg
		}
		pos += copy(pg[in:], data[pos:])
	}
	n.size = max(n.size, off+int64(len(data)))
	n.mtime = time.Now()
	return uint32(len(data)), fuse.OK
}

func (fs *FS) Flush(_ <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.OK }

func (fs *FS) Release(_ <-chan struct{}, in *fuse.ReleaseIn) {}

func (fs *FS) Fsync(_ <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.lookupNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	if n.isDir {
		return fs.fsyncDirLocked(n)
	}
	fs.stats.FileSyncs++
	if fs.opts.OrderedMetadata {
		if err := fs.syncAllDirs(); err != nil {
			return fuse.ToStatus(err)
		}
	}
	return fuse.ToStatus(fs.syncFile(n))
}

func (fs *FS) FsyncDir(_ <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dirNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	return fs.fsyncDirLocked(d)
}

func (fs *FS) fsyncDirLocked(d *node) fuse.Status {
	fs.stats.DirSyncs++
	if fs.opts.OrderedMetadata {
		return fuse.ToStatus(fs.syncAllDirs())
	}
	return fuse.ToStatus(fs.syncDir(d))
}

func (fs *FS) Unlink(_ <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dirNode(h.NodeId)
	if !st.Ok() {
		return st
	}
	c := d.children[name]
	switch {
	case c == nil:
		return fuse.ENOENT
	case c.isDir:
		return fuse.Status(syscall.EISDIR)
	}
	delete(d.children, name)
	c.parent, c.name = nil, ""
	d.mtime = time.Now()
	return fuse.OK
}

func (fs *FS) Rmdir(_ <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dirNode(h.NodeId)
	if !st.Ok() {
		return st
	}
	c := d.children[name]
	switch {
	case c == nil:
		return fuse.ENOENT
	case !c.isDir:
		return fuse.ENOTDIR
	case len(c.children) > 0:
		return fuse.Status(syscall.ENOTEMPTY)
	}
	// Directories are durable at once, and a removed one must be empty on
	// the backing side too: its leftover durable names go now.
	if err := fs.syncDir(c); err != nil {
		return fuse.ToStatus(err)
	}
	if err := os.Remove(fs.backingPath(c)); err != nil {
		return fuse.ToStatus(err)
	}
	delete(d.children, name)
	c.parent, c.name = nil, ""
	c.children, c.durable = nil, nil
	return fuse.OK
}

func (fs *FS) Rename(_ <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	from, st := fs.dirNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	to, st := fs.dirNode(in.Newdir)
	if !st.Ok() {
		return st
	}
	const renameNoReplace = 1
	if in.Flags&^renameNoReplace != 0 {
		return fuse.Status(syscall.EINVAL) // RENAME_EXCHANGE, RENAME_WHITEOUT
	}
	c := from.children[oldName]
	if c == nil {
		return fuse.ENOENT
	}
	old := to.children[newName]
	if old == c {
		return fuse.OK
	}
	if old != nil && in.Flags&renameNoReplace != 0 {
		return fuse.Status(syscall.EEXIST)
	}
	if c.isDir {
		if old != nil {
			return fuse.Status(syscall.ENOTSUP) // replacing a directory: not modeled
		}
		for p := to; p != nil; p = p.parent {
			if p == c {
				return fuse.EINVAL
			}
		}
		if err := os.Rename(fs.backingPath(c), filepath.Join(fs.backingPath(to), newName)); err != nil {
			return fuse.ToStatus(err)
		}
	} else if old != nil && old.isDir {
		return fuse.Status(syscall.EISDIR)
	}
	if old != nil {
		old.parent, old.name = nil, ""
	}
	delete(from.children, oldName)
	to.children[newName] = c
	c.parent, c.name = to, newName
	from.mtime, to.mtime = time.Now(), time.Now()
	return fuse.OK
}

func (fs *FS) OpenDir(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dirNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	h := &dirHandle{names: []string{".", ".."}}
	var names []string
	for name := range d.children {
		names = append(names, name)
	}
	sort.Strings(names)
	h.names = append(h.names, names...)
	fs.nextFh++
	fs.handles[fs.nextFh] = h
	out.Fh = fs.nextFh
	return fuse.OK
}

func (fs *FS) ReadDir(_ <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dirNode(in.NodeId)
	if !st.Ok() {
		return st
	}
	h := fs.handles[in.Fh]
	if h == nil {
		return fuse.EBADF
	}
	for i := int(in.Offset); i < len(h.names); i++ {
		name := h.names[i]
		e := fuse.DirEntry{Name: name, Off: uint64(i + 1), Mode: syscall.S_IFDIR}
		switch name {
		case ".":
			e.Ino = d.ino
		case "..":
			e.Ino = d.ino
			if d.parent != nil {
				e.Ino = d.parent.ino
			}
		default:
			c := d.children[name]
			if c == nil {
				continue // removed since the directory was opened
			}
			e.Ino, e.Mode = c.ino, c.mode
		}
		if !out.AddDirEntry(e) {
			break
		}
	}
	return fuse.OK
}

func (fs *FS) ReleaseDir(in *fuse.ReleaseIn) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	delete(fs.handles, in.Fh)
}

func (fs *FS) StatFs(_ <-chan struct{}, _ *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	var s syscall.Statfs_t
	if err := syscall.Statfs(fs.backing, &s); err != nil {
		return fuse.ToStatus(err)
	}
	out.Blocks, out.Bfree, out.Bavail = s.Blocks, s.Bfree, s.Bavail
	out.Files, out.Ffree = s.Files, s.Ffree
	out.Bsize, out.Frsize, out.NameLen = uint32(s.Bsize), uint32(s.Frsize), uint32(s.Namelen)
	return fuse.OK
}

func (fs *FS) Link(_ <-chan struct{}, _ *fuse.LinkIn, _ string, _ *fuse.EntryOut) fuse.Status {
	return fuse.Status(syscall.ENOTSUP)
}

func (fs *FS) Symlink(_ <-chan struct{}, _ *fuse.InHeader, _, _ string, _ *fuse.EntryOut) fuse.Status {
	return fuse.Status(syscall.ENOTSUP)
}

func (fs *FS) Mknod(_ <-chan struct{}, _ *fuse.MknodIn, _ string, _ *fuse.EntryOut) fuse.Status {
	return fuse.Status(syscall.ENOTSUP)
}
