//go:build failpoints

// These tests need the failpoints compiled in: `make failpoints-test` runs
// them on a copy of the tree that gofail enabled (scripts/failpoints.sh test).

package server_test

import (
	"context"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	gofail "go.etcd.io/gofail/runtime"
)

// TestFailpointsSeveralNodes triggers the failpoints only several nodes
// reach — a follower failing or stalling while it applies the stored
// revisions it tails, and a leader stalling as it steps down — on three
// nodes sharing a mock TiKV, under writes sent to every node. The
// failpoints are process-wide here, so every follower is hit. Afterwards
// every surviving node answers linearizable reads with every acknowledged
// write, and each node's watch from revision 1 delivers the same gap-free
// history. Crashes at these points are not tried in-process (a panic would
// end the test binary); the single-process robustness test crashes the
// others.
func TestFailpointsSeveralNodes(t *testing.T) {
	cases := []struct {
		fp, term   string
		killLeader bool
	}{
		{"followerBeforeApply", "20*return", false},
		{"followerBeforeApply", "sleep(50)", false},
		{"leaderStepDown", "sleep(700)", true},
	}
	for _, tc := range cases {
		t.Run(tc.fp+"="+tc.term, func(t *testing.T) {
			nodes := startNodes(t, sharedBackends["tikv-mock"](t), 3)
			leader := waitLeader(t, nodes)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()

			type stream struct {
				n      *node
				events []*mvccpb.Event
				done   chan struct{}
			}
			var streams []*stream
			for _, n := range nodes {
				st := &stream{n: n, done: make(chan struct{})}
				streams = append(streams, st)
				wctx, wcancel := context.WithCancel(ctx)
				defer wcancel()
				ch := n.cli.Watch(wctx, "/fp/", clientv3.WithPrefix(), clientv3.WithRev(1))
				go func() {
					defer close(st.done)
					for wr := range ch {
						st.events = append(st.events, wr.Events...)
					}
				}()
			}

			if err := gofail.Enable(tc.fp, tc.term); err != nil {
				t.Fatalf("enable %s: %v (is the tree gofail-enabled?)", tc.fp, err)
			}
			defer gofail.Disable(tc.fp)

			acked := map[string]int64{} // key → revision of its acknowledged put
			var last int64
			rng := rand.New(rand.NewSource(1))
			for i := 0; i < 150; i++ {
				if tc.killLeader && i == 50 {
					leader.kill() // steps down through the stalled failpoint
				}
				n := nodes[rng.Intn(len(nodes))]
				if n.killed() {
					continue
				}
				k := fmt.Sprintf("/fp/k%03d", i%60)
				c, ccancel := context.WithTimeout(ctx, 10*time.Second)
				r, err := n.cli.Put(c, k, fmt.Sprintf("v%d", i))
				ccancel()
				if err != nil {
					continue // unknown outcome (a leader change); not counted
				}
				acked[k] = r.Header.Revision
				last = max(last, r.Header.Revision)
			}
			if len(acked) == 0 {
				t.Fatal("no write was acknowledged")
			}
			_, fired, err := gofail.Status(tc.fp)
			if err != nil || fired == 0 {
				t.Fatalf("%s did not fire (count %d, err %v)", tc.fp, fired, err)
			}
			gofail.Disable(tc.fp)

			var live []*stream
			for _, st := range streams {
				if st.n.killed() {
					continue
				}
				live = append(live, st)
				var resp *clientv3.GetResponse
				for attempt := 0; ; attempt++ {
					c, ccancel := context.WithTimeout(ctx, 10*time.Second)
					resp, err = st.n.cli.Get(c, "/fp/", clientv3.WithPrefix())
					ccancel()
					if err == nil || attempt == 20 {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					t.Fatalf("%s: linearizable read: %v", st.n.url, err)
				}
				if resp.Header.Revision < last {
					t.Errorf("%s: linearizable read at %d, below the acknowledged %d", st.n.url, resp.Header.Revision, last)
				}
				got := map[string]int64{}
				for _, kv := range resp.Kvs {
					got[string(kv.Key)] = kv.ModRevision
				}
				for k, rev := range acked {
					if got[k] < rev {
						t.Errorf("%s: %s at %d, acknowledged at %d", st.n.url, k, got[k], rev)
					}
				}
			}
			// Every watch reaches the last revision, with the same history.
			deadline := time.Now().Add(20 * time.Second)
			for _, st := range live {
				for {
					n := len(st.events)
					if n > 0 && st.events[n-1].Kv.ModRevision >= last {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: watch stuck below %d", st.n.url, last)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			cancel()
			for _, st := range streams {
				<-st.done
			}
			ref := live[0].events
			for _, st := range live {
				prev := int64(0)
				for i, ev := range st.events {
					if ev.Kv.ModRevision > last {
						break
					}
					if prev != 0 && ev.Kv.ModRevision != prev+1 {
						t.Fatalf("%s: watch jumps from %d to %d", st.n.url, prev, ev.Kv.ModRevision)
					}
					prev = ev.Kv.ModRevision
					if i >= len(ref) || string(ref[i].Kv.Key) != string(ev.Kv.Key) || ref[i].Kv.ModRevision != ev.Kv.ModRevision {
						t.Fatalf("%s: event %d differs between nodes", st.n.url, i)
					}
				}
			}
			t.Logf("%s fired %d times; %d keys acknowledged up to revision %d; %d nodes agree", tc.fp, fired, len(acked), last, len(live))
		})
	}
}
