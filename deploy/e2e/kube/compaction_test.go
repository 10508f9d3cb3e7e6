package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

// watchOutcome describes how a watch from rv ended: "410" when the server
// refused it as expired (at establishment or as the first event).
func watchOutcome(ctx context.Context, ops resourceOps, rv string) (string, error) {
	timeout := int64(5)
	w, err := ops.watch(ctx, metav1.ListOptions{ResourceVersion: rv, TimeoutSeconds: &timeout})
	if err != nil {
		if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			return "410", nil
		}
		return "", err
	}
	defer w.Stop()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			return "closed without events", nil
		}
		if ev.Type == watch.Error {
			if st, ok := ev.Object.(*metav1.Status); ok {
				if st.Code == 410 {
					return "410", nil
				}
				return fmt.Sprintf("error %d %s", st.Code, st.Message), nil
			}
		}
		return "event " + string(ev.Type), nil
	case <-time.After(10 * time.Second):
		return "no event", nil
	}
}

// partCompaction waits for kube-apiserver's periodic compaction to pass a
// recorded resourceVersion, then checks that watches, exact lists and
// continue tokens from before it get 410 Gone, and that a relist and a new
// watch work.
func partCompaction(t *testing.T, c *cluster) {
	ctx := ctxT(t, 10*time.Minute)
	pt := opsFor(c, "podtemplates", watchNS)
	cm := opsFor(c, "configmaps", watchNS)
	oldRV, err := pt.create(ctx, "compact-probe")
	if err != nil {
		t.Fatal(err)
	}
	oldCM, err := cm.create(ctx, "compact-probe")
	if err != nil {
		t.Fatal(err)
	}
	// A continue token from before the compaction.
	first, err := c.cs.CoreV1().PodTemplates(pageNS).List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if first.Continue == "" {
		t.Fatalf("no continue token from a list of %d podtemplates with limit 1", c.pageCounts["podtemplates"])
	}
	for i := 0; i < 5; i++ {
		if _, err := pt.update(ctx, "compact-probe", i+1); err != nil {
			t.Fatal(err)
		}
	}
	var rv int64
	fmt.Sscan(oldRV, &rv)
	start := time.Now()
	deadline := start.Add(4*c.compaction + time.Minute)
	for {
		_, err := c.mainKV.Get(ctx, "/registry/podtemplates/"+watchNS+"/compact-probe", clientv3.WithRev(rv))
		if errors.Is(err, rpctypes.ErrCompacted) {
			break
		}
		if err != nil {
			t.Fatalf("read at %d: %v", rv, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("revision %d not compacted %s after it was written (--etcd-compaction-interval=%s)", rv, time.Since(start).Round(time.Second), c.compaction)
		}
		time.Sleep(500 * time.Millisecond)
	}
	waited := time.Since(start)
	crk, err := c.mainKV.Get(ctx, "compact_rev_key")
	if err != nil || len(crk.Kvs) != 1 {
		t.Fatalf("compact_rev_key: %v (%d kvs)", err, len(crk.Kvs))
	}
	evCrk, _ := c.eventsKV.Get(ctx, "compact_rev_key")

	ptWatch, err := watchOutcome(ctx, pt, oldRV)
	if err != nil {
		t.Fatal(err)
	}
	if ptWatch != "410" {
		t.Fatalf("podtemplates watch from compacted rv %s: %s, want 410 Gone", oldRV, ptWatch)
	}
	_, err = c.cs.CoreV1().PodTemplates(watchNS).List(ctx, metav1.ListOptions{ResourceVersion: oldRV, ResourceVersionMatch: metav1.ResourceVersionMatchExact})
	if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
		t.Fatalf("podtemplates list at exact compacted rv %s: %v, want 410 Gone", oldRV, err)
	}
	_, err = c.cs.CoreV1().PodTemplates(pageNS).List(ctx, metav1.ListOptions{Limit: 1, Continue: first.Continue})
	if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
		t.Fatalf("podtemplates continue token from rv %s: %v, want 410 Gone", first.ResourceVersion, err)
	}
	contMsg := ""
	if err != nil {
		contMsg = err.Error()
		if i := strings.Index(contMsg, "."); i > 0 {
			contMsg = contMsg[:i]
		}
	}
	// The watch cache answers configmaps; it keeps its own window of events.
	cmWatch, err := watchOutcome(ctx, cm, oldCM)
	if err != nil {
		t.Fatal(err)
	}

	// Relist and watch again.
	lst, err := c.cs.CoreV1().PodTemplates(pageNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("relist: %v", err)
	}
	if len(lst.Items) != c.pageCounts["podtemplates"] {
		t.Fatalf("relist: %d podtemplates, want %d", len(lst.Items), c.pageCounts["podtemplates"])
	}
	timeout := int64(10)
	w, err := c.cs.CoreV1().PodTemplates(pageNS).Watch(ctx, metav1.ListOptions{ResourceVersion: lst.ResourceVersion, TimeoutSeconds: &timeout})
	if err != nil {
		t.Fatalf("rewatch: %v", err)
	}
	if _, err := opsFor(c, "podtemplates", pageNS).update(ctx, "p-00000", 42); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-w.ResultChan():
		if ev.Type != watch.Modified {
			t.Fatalf("rewatch: got %s %v, want MODIFIED", ev.Type, ev.Object)
		}
		if p, ok := ev.Object.(*corev1.PodTemplate); !ok || p.Name != "p-00000" {
			t.Fatalf("rewatch: got %v", ev.Object)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("rewatch: no event in 20s")
	}
	w.Stop()
	evInfo := "no compaction yet"
	if evCrk != nil && len(evCrk.Kvs) == 1 {
		evInfo = fmt.Sprintf("compact_rev_key version %d", evCrk.Kvs[0].Version)
	}
	harness.Summary("compaction", "rv %s compacted %s after it was written (interval %s; main compact_rev_key version %d value %s; events store %s); podtemplates (store): watch@rv -> 410, exact list@rv -> 410, old continue token -> 410 (%q); relist %d items + new watch ok",
		oldRV, waited.Round(time.Second), c.compaction, crk.Kvs[0].Version, crk.Kvs[0].Value, evInfo, contMsg, len(lst.Items))
	harness.Summary("compaction", "configmaps (watch cache keeps its own event window) watch@rv %s -> %s", oldCM, cmWatch)
}
