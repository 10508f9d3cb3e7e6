package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/axon-kv/axon/internal/testenv"
)

// load writes n keys prefix%08d in transactions of 128 puts (etcd's
// default --max-txn-ops) from 8 clients and returns the revision after.
func load(t *testing.T, cli *clientv3.Client, prefix string, n int) int64 {
	t.Helper()
	const perTxn = 128
	var (
		g   errgroup.Group
		mu  sync.Mutex
		rev int64
	)
	g.SetLimit(8)
	for start := 0; start < n; start += perTxn {
		g.Go(func() error {
			ops := make([]clientv3.Op, 0, perTxn)
			for i := start; i < min(start+perTxn, n); i++ {
				ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%08d", prefix, i), "v"))
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			resp, err := cli.Txn(ctx).Then(ops...).Commit()
			if err != nil {
				return err
			}
			mu.Lock()
			rev = max(rev, resp.Header.Revision)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("loading %d keys: %v", n, err)
	}
	return rev
}

func count(t *testing.T, cli *clientv3.Client, prefix string, rev int64) (int64, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := cli.Get(ctx, prefix, opts...)
	if err != nil {
		t.Fatalf("count %s at %d: %v", prefix, rev, err)
	}
	return resp.Count, resp.Header.Revision
}

// TestDeleteMillionKeysOneRevision: `etcdctl del --prefix` over a million
// keys is one revision, as on etcd, however many backend batches it takes;
// a watch sees every deletion at that revision, and the store reopens
// with the same answer.
func TestDeleteMillionKeysOneRevision(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a million keys through a real axon process; skipped with -short")
	}
	const n = 1_000_000
	bin := testenv.BuildAxon(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	p := testenv.StartAxonProcess(t, bin, dataDir)
	cli := p.WaitReady(t)

	start := time.Now()
	loaded := load(t, cli, "big/", n)
	t.Logf("loaded %d keys in %v, revision %d", n, time.Since(start).Round(time.Millisecond), loaded)

	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := cli.Watch(wctx, "big/", clientv3.WithPrefix(), clientv3.WithRev(loaded+1))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start = time.Now()
	del, err := cli.Delete(ctx, "big/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("delete a million keys: %v", err)
	}
	t.Logf("deleted %d keys in %v", del.Deleted, time.Since(start).Round(time.Millisecond))
	if del.Deleted != n || del.Header.Revision != loaded+1 {
		t.Fatalf("delete: deleted %d at revision %d, want %d at %d", del.Deleted, del.Header.Revision, n, loaded+1)
	}
	if c, _ := count(t, cli, "big/", 0); c != 0 {
		t.Fatalf("%d keys left after the delete", c)
	}
	if c, _ := count(t, cli, "big/", loaded); c != n {
		t.Fatalf("at the revision before the delete: %d keys, want %d", c, n)
	}
	events := 0
	for events < n {
		resp, ok := <-wch
		if !ok {
			t.Fatalf("watch closed after %d events", events)
		}
		for _, ev := range resp.Events {
			if ev.Type != clientv3.EventTypeDelete || ev.Kv.ModRevision != loaded+1 {
				t.Fatalf("event %d: %v at %d, want DELETE at %d", events, ev.Type, ev.Kv.ModRevision, loaded+1)
			}
			events++
		}
	}
	wcancel()

	// The same answer after a restart (index rebuilt from the store).
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if err := p.WaitExit(t, exitTimeout); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	p = testenv.StartAxonProcess(t, bin, dataDir)
	cli = p.WaitReady(t)
	if c, rev := count(t, cli, "big/", 0); c != 0 || rev != loaded+1 {
		t.Fatalf("after restart: %d keys at revision %d, want 0 at %d", c, rev, loaded+1)
	}
	if c, _ := count(t, cli, "big/", loaded); c != n {
		t.Fatalf("after restart, before the delete: %d keys, want %d", c, n)
	}
}

// TestBigDeleteKilledMidway kill -9s axon while a delete of many keys is
// being written in several backend batches: after the restart the store
// holds all the keys or none (never part), at a revision without a gap,
// and writes continue from there.
func TestBigDeleteKilledMidway(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the axon binary; skipped with -short")
	}
	const n = 300_000
	bin := testenv.BuildAxon(t)
	// The delete takes seconds; the first batches reach the store well
	// within the first.
	delays := []time.Duration{2 * time.Second, time.Second, 4 * time.Second, 500 * time.Millisecond}
	for attempt := 1; ; attempt++ {
		delay := delays[attempt-1]
		dataDir := filepath.Join(t.TempDir(), "data")
		p := testenv.StartAxonProcess(t, bin, dataDir)
		cli := p.WaitReady(t)
		loaded := load(t, cli, "big/", n)

		done := make(chan error, 1)
		go func() {
			_, err := cli.Delete(context.Background(), "big/", clientv3.WithPrefix())
			done <- err
		}()
		time.Sleep(delay)
		acked := false
		select {
		case err := <-done:
			acked = err == nil
		default:
		}
		if err := p.Cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		p.WaitExit(t, exitTimeout)
		cli.Close()

		p = testenv.StartAxonProcess(t, bin, dataDir)
		cli = p.WaitReady(t)
		c, rev := count(t, cli, "big/", 0)
		switch {
		case acked && (c != 0 || rev != loaded+1):
			t.Fatalf("acknowledged delete lost: %d keys at revision %d", c, rev)
		case c != 0 && c != n:
			t.Fatalf("after kill -9 mid-delete: %d of %d keys left: the revision was not atomic", c, n)
		case c == n && rev != loaded:
			t.Fatalf("all keys present but revision %d, want %d", rev, loaded)
		case c == 0 && rev != loaded+1:
			t.Fatalf("all keys gone but revision %d, want %d", rev, loaded+1)
		}
		put, err := cli.Put(context.Background(), "after", "x")
		if err != nil || put.Header.Revision != rev+1 {
			t.Fatalf("next write: %v at revision %d, want %d", err, put.Header.Revision, rev+1)
		}
		rolledBack := strings.Contains(p.Output(), "rolled back an unfinished revision")
		t.Logf("attempt %d: killed %v into the delete; after restart %d keys at revision %d; partial batches rolled back: %v",
			attempt, delay, c, rev, rolledBack)
		cli.Close()
		if rolledBack {
			return // the kill landed between batches of the revision
		}
		if attempt == len(delays) {
			t.Fatalf("the kill never landed inside the delete in %d attempts", attempt)
		}
	}
}
