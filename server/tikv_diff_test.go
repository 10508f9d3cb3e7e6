package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/axon-kv/axon/backend/tikv/tikvtest"
	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// TestTiKVDifferentialKV runs the core differential workload against Axon
// on client-go's in-process mock TiKV cluster (the real client-go
// transaction path), elected leader of a one-node group.
func TestTiKVDifferentialKV(t *testing.T) {
	n := diffOps()
	for _, seed := range diffSeeds(t) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			etcd := testenv.StartEtcd(t, testenv.WithEtcdMaxTxnOps(diffMaxTxnOps))
			s, axon := testenv.StartAxon(t, server.Config{SharedBackend: tikvtest.NewMock(t), MaxTxnOps: diffMaxTxnOps,
				LeaderLease: time.Second})
			deadline := time.Now().Add(10 * time.Second)
			for !s.IsLeader() {
				if time.Now().After(deadline) {
					t.Fatal("the node did not elect itself")
				}
				time.Sleep(10 * time.Millisecond)
			}
			ref := newDiffTarget(t, "etcd", etcd.Endpoints())
			cand := newDiffTarget(t, "axon/tikv-mock", axon.Endpoints())
			start := time.Now()
			st, err := runDiff(t.Name(), seed, n, ref, cand)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("seed=%d: %d ops in %v; %s", seed, n, time.Since(start).Round(time.Millisecond), st)
		})
	}
}
