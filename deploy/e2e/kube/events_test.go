package kube

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

const eventsNS = "e2e-events"

// partEvents creates events through both event APIs and checks they are
// stored, with leases, on the events store only (--etcd-servers-overrides),
// then that lease expiry removes them and kube-apiserver's watchers see the
// deletions.
func partEvents(t *testing.T, c *cluster) {
	ctx := ctxT(t, 10*time.Minute)
	nCore, nNew := harness.Pick(100, 20), harness.Pick(20, 5)
	total := nCore + nNew
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: eventsNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mainBefore := mustCount(t, c.mainKV, "/registry/events/")
	lst, err := c.cs.CoreV1().Events(eventsNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.cs.CoreV1().Events(eventsNS).Watch(ctx, metav1.ListOptions{ResourceVersion: lst.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	ref := corev1.ObjectReference{Kind: "ConfigMap", Namespace: eventsNS, Name: "subject", APIVersion: "v1"}
	now := metav1.Now()
	err = parallel(nCore, 8, func(i int) error {
		_, err := c.cs.CoreV1().Events(eventsNS).Create(ctx, &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprintf("core-%03d", i)},
			InvolvedObject: ref, Reason: "E2E", Message: fmt.Sprintf("event %d", i), Type: corev1.EventTypeNormal,
			FirstTimestamp: now, LastTimestamp: now, Count: 1, Source: corev1.EventSource{Component: "e2e"},
		}, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("core/v1 events: %v", err)
	}
	err = parallel(nNew, 4, func(i int) error {
		_, err := c.cs.EventsV1().Events(eventsNS).Create(ctx, &eventsv1.Event{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("new-%03d", i)},
			EventTime:  metav1.NowMicro(), ReportingController: "e2e.axon.io/e2e", ReportingInstance: "e2e-1",
			Action: "Test", Reason: "E2E", Regarding: ref, Type: corev1.EventTypeNormal, Note: "events.k8s.io/v1",
		}, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("events.k8s.io/v1 events: %v", err)
	}
	created := time.Now()

	// Where they are: all on the events store, with a lease; none on main.
	resp, err := c.eventsKV.Get(ctx, "/registry/events/"+eventsNS+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != total {
		t.Fatalf("events store holds %d events of %s, want %d", len(resp.Kvs), eventsNS, total)
	}
	leases := map[int64]bool{}
	for _, kv := range resp.Kvs {
		if kv.Lease == 0 {
			t.Fatalf("event key %s has no lease", kv.Key)
		}
		leases[kv.Lease] = true
	}
	var ttl int64 = -1
	for id := range leases {
		ttlResp, err := c.eventsKV.TimeToLive(ctx, clientv3.LeaseID(id), clientv3.WithAttachedKeys())
		if err != nil {
			t.Fatalf("lease %x TimeToLive: %v", id, err)
		}
		ttl = max(ttl, ttlResp.GrantedTTL)
	}
	mainAfter := mustCount(t, c.mainKV, "/registry/events/")
	if mainAfter != mainBefore || mainAfter != 0 {
		t.Fatalf("main store holds %d event keys (before: %d), want 0", mainAfter, mainBefore)
	}
	if n := mustCount(t, c.mainKV, "/registry/events/"+eventsNS+"/"); n != 0 {
		t.Fatalf("main store holds %d events of %s", n, eventsNS)
	}

	// Expiry: keys gone from the store, objects gone from the API, and a
	// DELETED watch event for each.
	deleted := map[string]bool{}
	var goneAfter time.Duration
	deadline := time.Now().Add(c.eventTTL + 90*time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				w, err = c.cs.CoreV1().Events(eventsNS).Watch(ctx, metav1.ListOptions{ResourceVersion: lst.ResourceVersion})
				if err != nil {
					t.Fatal(err)
				}
				continue
			}
			if ev.Type == watch.Deleted {
				if e, ok := ev.Object.(*corev1.Event); ok {
					deleted[e.Name] = true
				}
			}
			if ev.Type == watch.Error {
				t.Fatalf("events watch error: %v", ev.Object)
			}
		case <-time.After(500 * time.Millisecond):
		}
		if goneAfter == 0 {
			n, err := countKeys(ctx, c.eventsKV, "/registry/events/"+eventsNS+"/")
			if err == nil && n == 0 {
				goneAfter = time.Since(created)
			}
		}
		if goneAfter > 0 && len(deleted) == total {
			break
		}
		if time.Now().After(deadline) {
			left, _ := countKeys(ctx, c.eventsKV, "/registry/events/"+eventsNS+"/")
			t.Fatalf("after %s: %d event keys left on the events store, %d/%d DELETED watch events (event TTL %s, lease TTL %ds)",
				time.Since(created).Round(time.Second), left, len(deleted), total, c.eventTTL, ttl)
		}
	}
	apiLeft, err := c.cs.CoreV1().Events(eventsNS).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(apiLeft.Items) != 0 {
		t.Fatalf("API still lists %d events after expiry", len(apiLeft.Items))
	}
	harness.Summary("events", "%d created (%d core/v1, %d events.k8s.io/v1) -> %d keys on the events store on %d lease(s) (granted TTL %ds for --event-ttl=%s), 0 on main; all expired %s after creation, %d DELETED watch events, API lists 0",
		total, nCore, nNew, total, len(leases), ttl, c.eventTTL, goneAfter.Round(100*time.Millisecond), len(deleted))
}
