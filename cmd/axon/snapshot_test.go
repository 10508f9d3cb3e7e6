package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// runAxon runs `axon args...` in process and returns its output.
func runAxon(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd(nil, func(server.Config) error { return nil })
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// everything reads every key at rev (0: current).
func everything(t *testing.T, c *clientv3.Client, rev int64) (int64, []*mvccpb.KeyValue) {
	t.Helper()
	r, err := c.Get(context.Background(), "\x00", clientv3.WithFromKey(), clientv3.WithRev(rev))
	if err != nil {
		t.Fatalf("get at %d: %v", rev, err)
	}
	return r.Header.Revision, r.Kvs
}

// TestSnapshotSaveRestore: save from a running member with the command,
// restore into a new data dir, serve it: the same keys with the same
// revisions and history, and the restored member continues the revisions.
func TestSnapshotSaveRestore(t *testing.T) {
	_, c := testenv.StartAxon(t, server.Config{Backend: "badger"})
	ctx := context.Background()
	lease, err := c.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500; i++ {
		var opts []clientv3.OpOption
		if i%7 == 0 {
			opts = append(opts, clientv3.WithLease(lease.ID))
		}
		if _, err := c.Put(ctx, fmt.Sprintf("/registry/configmaps/ns%d/cm%03d", i%3, i%200), strings.Repeat("d", i), opts...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Delete(ctx, "/registry/configmaps/ns1/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	mid, _ := everything(t, c, 0)
	if _, err := c.Compact(ctx, mid-50); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		c.Put(ctx, fmt.Sprintf("/registry/late/%d", i), "x")
	}
	rev, want := everything(t, c, 0)

	dir := t.TempDir()
	file := filepath.Join(dir, "axon.snap")
	out, err := runAxon(t, "snapshot", "save", file, "--endpoints", c.Endpoints()[0])
	if err != nil {
		t.Fatalf("snapshot save: %v\n%s", err, out)
	}
	if !strings.Contains(out, fmt.Sprintf("revision:           %d", rev)) {
		t.Errorf("save output lacks the revision %d:\n%s", rev, out)
	}
	if _, err := os.Stat(file + ".part"); !os.IsNotExist(err) {
		t.Errorf("partial file left behind: %v", err)
	}
	if out, err := runAxon(t, "snapshot", "status", file); err != nil || !strings.Contains(out, "sha256:") {
		t.Errorf("snapshot status: %v\n%s", err, out)
	}

	dataDir := filepath.Join(dir, "restored")
	if out, err := runAxon(t, "snapshot", "restore", file, "--data-dir", dataDir); err != nil {
		t.Fatalf("snapshot restore: %v\n%s", err, out)
	}
	if _, err := runAxon(t, "snapshot", "restore", file, "--data-dir", dataDir); err == nil {
		t.Error("restore over an existing database succeeded")
	}
	// A damaged file is refused and leaves no data dir.
	b, _ := os.ReadFile(file)
	b[len(b)/2] ^= 1
	bad := filepath.Join(dir, "bad.snap")
	os.WriteFile(bad, b, 0o600)
	if _, err := runAxon(t, "snapshot", "restore", bad, "--data-dir", filepath.Join(dir, "bad")); err == nil {
		t.Error("restore of a damaged snapshot succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "bad")); !os.IsNotExist(err) {
		t.Errorf("damaged restore left %s behind", filepath.Join(dir, "bad"))
	}

	_, rc := testenv.StartAxon(t, server.Config{Backend: "badger", DataDir: dataDir})
	gotRev, got := everything(t, rc, 0)
	if gotRev != rev {
		t.Errorf("restored revision %d, want %d", gotRev, rev)
	}
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Errorf("restored keys differ (-want +got):\n%s", d)
	}
	_, wantOld := everything(t, c, mid)
	if _, gotOld := everything(t, rc, mid); cmp.Diff(wantOld, gotOld, protocmp.Transform()) != "" {
		t.Errorf("restored history at %d differs", mid)
	}
	if ttl, err := rc.TimeToLive(ctx, lease.ID); err != nil || ttl.TTL <= 0 {
		t.Errorf("restored lease: %v %v", ttl, err)
	}
	if r, err := rc.Put(ctx, "/registry/after", "v"); err != nil || r.Header.Revision != rev+1 {
		t.Errorf("put after restore: %v %v", r, err)
	}
}
