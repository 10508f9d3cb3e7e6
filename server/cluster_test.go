package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/backend/tikv/tikvtest"
	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// sharedBackends are the engines several nodes can share in one process:
// each returns an opener giving every node its own handle on one store.
// The TiKV mock cluster is the real multi-node engine (each node gets its
// own client-go client, as separate processes would); one Badger database
// shared in-process stands in for comparison.
var sharedBackends = map[string]func(t *testing.T) func() backend.Backend{
	"tikv-mock": func(t *testing.T) func() backend.Backend {
		c := tikvtest.NewCluster(t)
		return func() backend.Backend {
			db := c.Open(t, tikvtest.Options())
			return db
		}
	},
	"badger-shared": func(t *testing.T) func() backend.Backend {
		be, err := badger.Open(badger.Options{InMemory: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { be.Close() })
		return func() backend.Backend { return be }
	},
}

type node struct {
	s    *server.Server
	cli  *clientv3.Client
	url  string
	dead sync.Once
	gone chan struct{}
}

// kill stops the node as a crash would.
func (n *node) kill() {
	n.dead.Do(func() {
		n.s.Kill()
		close(n.gone)
	})
}

func (n *node) killed() bool {
	select {
	case <-n.gone:
		return true
	default:
		return false
	}
}

func startNodes(t *testing.T, open func() backend.Backend, n int) []*node {
	var nodes []*node
	for i := 0; i < n; i++ {
		cfg := server.Config{
			ListenClientURLs: []string{"http://127.0.0.1:0"},
			SharedBackend:    open(),
			NodeID:           fmt.Sprintf("node-%d", i),
			LeaderLease:      600 * time.Millisecond,
			FollowerPoll:     10 * time.Millisecond,
		}
		if !testing.Verbose() {
			cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		}
		s, err := server.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		url := s.ClientURLs()[0]
		nodes = append(nodes, &node{s: s, cli: testenv.NewClient(t, url), url: url, gone: make(chan struct{})})
	}
	return nodes
}

func waitLeader(t *testing.T, nodes []*node) *node {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n.s.IsLeader() {
				return n
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no leader elected")
	return nil
}

type ack struct {
	key string
	rev int64
}

// TestFailoverThreeNodes: concurrent writers through different nodes; the
// leader is killed mid-load. Every acknowledged write is present exactly
// once at its acknowledged revision, revisions have no gaps, and watches on
// the surviving nodes saw every revision exactly once, in order.
func TestFailoverThreeNodes(t *testing.T) {
	for name, open := range sharedBackends {
		t.Run(name, func(t *testing.T) {
			nodes := startNodes(t, open(t), 3)
			lead := waitLeader(t, nodes)

			// Watches on every node from the start.
			type seen struct {
				mu   sync.Mutex
				revs []int64
			}
			watched := map[*node]*seen{}
			wctx, wcancel := context.WithCancel(context.Background())
			defer wcancel()
			for _, n := range nodes {
				sn := &seen{}
				watched[n] = sn
				wc := n.cli.Watch(wctx, "/k/", clientv3.WithPrefix(), clientv3.WithRev(2))
				go func() {
					for r := range wc {
						sn.mu.Lock()
						for _, ev := range r.Events {
							sn.revs = append(sn.revs, ev.Kv.ModRevision)
						}
						sn.mu.Unlock()
					}
				}()
			}

			var mu sync.Mutex
			var acks []ack
			var wg sync.WaitGroup
			stop := make(chan struct{})
			for i, n := range nodes {
				for w := 0; w < 2; w++ {
					wg.Add(1)
					go func(n *node, id int) {
						defer wg.Done()
						for j := 0; ; j++ {
							select {
							case <-stop:
								return
							default:
							}
							key := fmt.Sprintf("/k/%d/%d", id, j)
							ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
							r, err := n.cli.Put(ctx, key, "v")
							cancel()
							if err != nil {
								if n == lead {
									return // the killed node's clients give up
								}
								continue
							}
							mu.Lock()
							acks = append(acks, ack{key, r.Header.Revision})
							mu.Unlock()
						}
					}(n, i*10+w)
				}
			}
			time.Sleep(700 * time.Millisecond)
			mu.Lock()
			before := len(acks)
			mu.Unlock()
			start := time.Now()
			lead.kill()
			var survivors []*node
			for _, n := range nodes {
				if n != lead {
					survivors = append(survivors, n)
				}
			}
			next := waitLeader(t, survivors)
			t.Logf("failover: %d writes acked before the kill; new leader %s after %v", before, next.url, time.Since(start).Round(time.Millisecond))
			time.Sleep(700 * time.Millisecond)
			close(stop)
			wg.Wait()

			// Every acked write is stored at its acked revision.
			ctx := context.Background()
			all, err := survivors[0].cli.Get(ctx, "/k/", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			stored := map[string]int64{}
			for _, kv := range all.Kvs {
				stored[string(kv.Key)] = kv.ModRevision
			}
			revOwner := map[int64]string{}
			for _, a := range acks {
				if got, ok := stored[a.key]; !ok || got != a.rev {
					t.Fatalf("acked %s at %d: stored at %d (present %v)", a.key, a.rev, got, ok)
				}
				if other, dup := revOwner[a.rev]; dup {
					t.Fatalf("revision %d acked twice (%s, %s)", a.rev, other, a.key)
				}
				revOwner[a.rev] = a.key
			}
			// The stored history has one revision per write, without gaps.
			var revs []int64
			for _, kv := range all.Kvs {
				revs = append(revs, kv.ModRevision)
			}
			sort.Slice(revs, func(i, j int) bool { return revs[i] < revs[j] })
			for i, r := range revs {
				if r != int64(i+2) {
					t.Fatalf("stored revisions have a gap at #%d: %d", i, r)
				}
			}
			final := all.Header.Revision
			// Surviving watchers saw 2..final exactly once, in order.
			deadline := time.Now().Add(10 * time.Second)
			for _, n := range survivors {
				sn := watched[n]
				for {
					sn.mu.Lock()
					got := append([]int64(nil), sn.revs...)
					sn.mu.Unlock()
					if int64(len(got)) >= final-1 || time.Now().After(deadline) {
						for i, r := range got {
							if r != int64(i+2) {
								t.Fatalf("watch on %s: event #%d has revision %d, want %d", n.url, i, r, i+2)
							}
						}
						if int64(len(got)) != final-1 {
							t.Fatalf("watch on %s saw %d events, want %d", n.url, len(got), final-1)
						}
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			t.Logf("%d acked writes, final revision %d, watchers complete on %d survivors", len(acks), final, len(survivors))
			_ = mvccpb.PUT
		})
	}
}
