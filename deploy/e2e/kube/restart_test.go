package kube

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

const restartNS = "e2e-restart"

type cmWatcher struct {
	c  *cluster
	ns string
}

func (w cmWatcher) WatchWithContext(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	return w.c.cs.CoreV1().ConfigMaps(w.ns).Watch(ctx, o)
}

// partRestart kills the main store with SIGKILL while writers create
// configmaps through kube-apiserver and a client watches them, restarts it
// on the same data dir and port, and measures the recovery. Every write
// that succeeded must exist afterwards and reach the watcher exactly once,
// and the objects of earlier parts must be intact.
func partRestart(t *testing.T, c *cluster) {
	ctx := ctxT(t, 10*time.Minute)
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: restartNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	lst, err := c.cs.CoreV1().ConfigMaps(restartNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, lst.ResourceVersion, cmWatcher{c, restartNS})
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Stop()
	var seenMu sync.Mutex
	seen := map[string]int{}
	watchErr := make(chan string, 1)
	go func() {
		for ev := range rw.ResultChan() {
			switch ev.Type {
			case watch.Added:
				if o, ok := ev.Object.(*corev1.ConfigMap); ok {
					seenMu.Lock()
					seen[o.Name]++
					seenMu.Unlock()
				}
			case watch.Error:
				select {
				case watchErr <- fmt.Sprint(ev.Object):
				default:
				}
			}
		}
	}()

	// Writers.
	var okMu sync.Mutex
	okNames := map[string]bool{}
	attempted := map[string]bool{}
	var failed atomic.Int64
	var firstOKAfter atomic.Int64 // unix nanos of the first success after the restart began
	var restartBegan atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	writers := harness.Pick(4, 2)
	for wi := 0; wi < writers; wi++ {
		wg.Add(1)
		go func(wi int) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("r%d-%05d", wi, n)
				okMu.Lock()
				attempted[name] = true
				okMu.Unlock()
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := c.cs.CoreV1().ConfigMaps(restartNS).Create(wctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"w": fmt.Sprint(wi)}}, metav1.CreateOptions{})
				cancel()
				if err != nil {
					failed.Add(1)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				okMu.Lock()
				okNames[name] = true
				okMu.Unlock()
				if rb := restartBegan.Load(); rb != 0 {
					firstOKAfter.CompareAndSwap(0, time.Now().UnixNano())
				}
				time.Sleep(10 * time.Millisecond)
			}
		}(wi)
	}

	time.Sleep(harness.Pick(3*time.Second, 2*time.Second))
	okMu.Lock()
	beforeKill := len(okNames)
	okMu.Unlock()
	killAt := time.Now()
	if err := c.main.Kill9(); err != nil {
		t.Fatalf("kill -9: %v", err)
	}
	outage := harness.Pick(3*time.Second, 2*time.Second)
	time.Sleep(outage)
	// Readiness while down, for the record.
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	downReadyz := c.kas.Readyz(rctx)
	cancel()
	restartAt := time.Now()
	restartBegan.Store(restartAt.UnixNano())
	storeReady, err := c.main.Start()
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("restart: %v", err)
	}
	// Write recovery, measured with short-timeout probes (the writers'
	// requests in flight during the outage wait out their own timeout).
	var probeOK time.Duration
	for i := 0; time.Since(restartAt) < 2*time.Minute; i++ {
		name := fmt.Sprintf("probe-%04d", i)
		okMu.Lock()
		attempted[name] = true
		okMu.Unlock()
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.cs.CoreV1().ConfigMaps(restartNS).Create(pctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		cancel()
		if err == nil {
			probeOK = time.Since(restartAt)
			okMu.Lock()
			okNames[name] = true
			okMu.Unlock()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.kas.WaitReady(2 * time.Minute); err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("kube-apiserver not ready after the store restart: %v", err)
	}
	readyAfter := time.Since(restartAt)
	// Let writers go on until one write succeeded after the restart, then a bit more.
	deadline := time.Now().Add(2 * time.Minute)
	for firstOKAfter.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if firstOKAfter.Load() == 0 {
		close(stop)
		wg.Wait()
		t.Fatal("no successful write within 2m after the restart")
	}
	writeAfter := time.Duration(firstOKAfter.Load() - restartAt.UnixNano())
	time.Sleep(harness.Pick(5*time.Second, 3*time.Second))
	close(stop)
	wg.Wait()

	// Nothing lost: every acknowledged create is there; nothing unattempted is.
	final, err := c.cs.CoreV1().ConfigMaps(restartNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, o := range final.Items {
		listed[o.Name] = true
		if !attempted[o.Name] {
			t.Errorf("listed %s was never written", o.Name)
		}
	}
	var lost []string
	for n := range okNames {
		if !listed[n] {
			lost = append(lost, n)
		}
	}
	sort.Strings(lost)
	if probeOK == 0 {
		t.Fatal("no probe write succeeded within 2m of the restart")
	}
	if len(lost) > 0 {
		t.Fatalf("%d acknowledged creates lost after kill -9: %v", len(lost), lost[:min(len(lost), 20)])
	}
	// The watcher sees every object exactly once.
	wdeadline := time.Now().Add(time.Minute)
	for {
		seenMu.Lock()
		missing, dup := 0, 0
		for n := range listed {
			switch seen[n] {
			case 0:
				missing++
			case 1:
			default:
				dup++
			}
		}
		extra := len(seen) - (len(listed) - missing)
		seenMu.Unlock()
		if dup > 0 || extra > 0 {
			t.Fatalf("watch: %d objects delivered more than once, %d delivered that are not listed", dup, extra)
		}
		if missing == 0 {
			break
		}
		select {
		case e := <-watchErr:
			t.Fatalf("watch error: %s", e)
		default:
		}
		if time.Now().After(wdeadline) {
			t.Fatalf("watch: %d of %d objects never delivered a minute after the writes", missing, len(listed))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The watch cache caught up: a list served from it (resourceVersion=0) matches.
	var cacheOK bool
	for i := 0; i < 50 && !cacheOK; i++ {
		cl, err := c.cs.CoreV1().ConfigMaps(restartNS).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err == nil && len(cl.Items) == len(final.Items) {
			cacheOK = true
		} else {
			time.Sleep(200 * time.Millisecond)
		}
	}
	if !cacheOK {
		t.Fatalf("watch cache list (resourceVersion=0) does not match the %d objects after restart", len(final.Items))
	}
	// Earlier parts' objects are intact.
	intact := ""
	if n := c.pageCounts["podtemplates"]; n > 0 {
		pl, err := c.cs.CoreV1().PodTemplates(pageNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cl, err := c.cs.CoreV1().ConfigMaps(pageNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(pl.Items) != n || len(cl.Items) != c.pageCounts["configmaps"] {
			t.Fatalf("after restart: %d podtemplates, %d configmaps in %s; want %d, %d", len(pl.Items), len(cl.Items), pageNS, n, c.pageCounts["configmaps"])
		}
		intact = fmt.Sprintf("; %d podtemplates + %d configmaps of the pagination part intact", len(pl.Items), len(cl.Items))
	}
	down := "ok?!"
	if downReadyz != nil {
		down = "failing"
	}
	harness.Summary("restart", "kill -9 of the main store after %d acknowledged creates, down %s (/readyz %s while down); store answered %s after restart, first write through kube-apiserver ok %s after restart (%s after the kill), /readyz ok %s after restart, first writer (5s request timeout) ok %s after restart; %d creates acknowledged (%d failed during the outage), all %d present, watch delivered each exactly once, watch cache in sync%s",
		beforeKill, outage, down, storeReady.Round(time.Millisecond), probeOK.Round(10*time.Millisecond), (probeOK + restartAt.Sub(killAt)).Round(100*time.Millisecond),
		readyAfter.Round(100*time.Millisecond), writeAfter.Round(100*time.Millisecond), len(okNames), failed.Load(), len(final.Items), intact)
}
