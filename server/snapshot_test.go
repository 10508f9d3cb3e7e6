package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

func fetchSnapshot(t testing.TB, c *clientv3.Client) []byte {
	t.Helper()
	rc, err := c.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// restoreInto restores snap into a fresh Badger data dir and serves it.
func restoreInto(t testing.TB, snap []byte) (*server.Server, *clientv3.Client, server.SnapshotInfo) {
	t.Helper()
	dir := t.TempDir()
	be, err := badger.Open(badger.Options{Dir: filepath.Join(dir, "badger")})
	if err != nil {
		t.Fatal(err)
	}
	info, err := server.RestoreSnapshot(bytes.NewReader(snap), int64(len(snap)), be)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	s, c := testenv.StartAxon(t, server.Config{Backend: "badger", DataDir: dir})
	return s, c, info
}

func dumpAt(t testing.TB, c *clientv3.Client, rev int64) []*mvccpb.KeyValue {
	t.Helper()
	r, err := c.Get(context.Background(), "\x00", clientv3.WithFromKey(), clientv3.WithRev(rev))
	if err != nil {
		t.Fatalf("get at %d: %v", rev, err)
	}
	return r.Kvs
}

// TestSnapshotRoundTrip: a snapshot taken while writers run is consistent
// at one revision; restored, it serves the same keys, revisions, history
// above the compaction point and leases.
func TestSnapshotRoundTrip(t *testing.T) {
	_, c := testenv.StartAxon(t, server.Config{})
	ctx := context.Background()
	lease, err := c.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		opts := []clientv3.OpOption{}
		if i%10 == 0 {
			opts = append(opts, clientv3.WithLease(lease.ID))
		}
		if _, err := c.Put(ctx, fmt.Sprintf("/registry/pods/ns/p%03d", i%150), fmt.Sprintf("v%d\x00\xff", i), opts...); err != nil {
			t.Fatal(err)
		}
	}
	del, err := c.Delete(ctx, "/registry/pods/ns/p01", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, del.Header.Revision-100, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	// Writers keep going while the snapshot streams.
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				c.Put(ctx, fmt.Sprintf("/registry/live/%d/%d", w, i), "x")
			}
		}()
	}
	snap := fetchSnapshot(t, c)
	stop.Store(true)
	wg.Wait()

	if len(snap)%512 != 32 {
		t.Errorf("snapshot size %d: etcdctl keeps only files of 512n+32 bytes", len(snap))
	}
	info, err := server.ReadSnapshot(bytes.NewReader(snap), int64(len(snap)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Revision < del.Header.Revision || info.CompactRevision != del.Header.Revision-100 || info.Records == 0 {
		t.Fatalf("snapshot info %+v", info)
	}

	_, rc, rinfo := restoreInto(t, snap)
	if rinfo != info {
		t.Errorf("restore info %+v, verify info %+v", rinfo, info)
	}
	// Same state at the snapshot revision, and the same history.
	for _, rev := range []int64{info.Revision, del.Header.Revision, info.CompactRevision} {
		if d := cmp.Diff(dumpAt(t, c, rev), dumpAt(t, rc, rev), protocmp.Transform()); d != "" {
			t.Errorf("restored state at %d differs (-source +restored):\n%s", rev, d)
		}
	}
	st, err := rc.Get(ctx, "x")
	if err != nil || st.Header.Revision != info.Revision {
		t.Errorf("restored revision %v %v, want %d", st.Header.Revision, err, info.Revision)
	}
	if _, err := rc.Get(ctx, "x", clientv3.WithRev(info.CompactRevision-1)); err == nil {
		t.Errorf("read below the compaction point of the restored member succeeded")
	}
	ttl, err := rc.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL <= 0 || len(ttl.Keys) == 0 {
		t.Errorf("restored lease: %+v %v", ttl, err)
	}
	// The restored member takes writes after the restored revision.
	r, err := rc.Put(ctx, "/registry/after-restore", "v")
	if err != nil || r.Header.Revision != info.Revision+1 {
		t.Errorf("put after restore: %v %v", r, err)
	}
}

func TestSnapshotCorruptionDetected(t *testing.T) {
	_, c := testenv.StartAxon(t, server.Config{})
	for i := 0; i < 50; i++ {
		c.Put(context.Background(), fmt.Sprintf("k%d", i), "v")
	}
	snap := fetchSnapshot(t, c)
	check := func(name string, b []byte) {
		t.Helper()
		if _, err := server.ReadSnapshot(bytes.NewReader(b), int64(len(b)), nil); !errors.Is(err, server.ErrBadSnapshot) {
			t.Errorf("%s: %v, want ErrBadSnapshot", name, err)
		}
	}
	for _, i := range []int{0, 10, 40, len(snap) / 2, len(snap) - 40, len(snap) - 1} {
		b := bytes.Clone(snap)
		b[i] ^= 0x40
		check(fmt.Sprintf("byte %d flipped", i), b)
	}
	check("truncated", snap[:len(snap)-512])
	check("empty", nil)
	check("extra block", append(bytes.Clone(snap), make([]byte, 512)...))
}
