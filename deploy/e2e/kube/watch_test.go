package kube

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

const watchNS = "e2e-watch"

// resourceOps abstracts configmaps (watch cache) and podtemplates (store).
type resourceOps struct {
	name   string
	create func(ctx context.Context, name string) (string, error) // returns resourceVersion
	update func(ctx context.Context, name string, gen int) (string, error)
	delete func(ctx context.Context, name string) error
	list   func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error)
	watch  func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error)
}

func opsFor(c *cluster, res, ns string) resourceOps {
	if res == "configmaps" {
		api := c.cs.CoreV1().ConfigMaps(ns)
		return resourceOps{
			name: res,
			create: func(ctx context.Context, name string) (string, error) {
				o, err := api.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"g": "0"}}, metav1.CreateOptions{})
				if err != nil {
					return "", err
				}
				return o.ResourceVersion, nil
			},
			update: func(ctx context.Context, name string, gen int) (string, error) {
				o, err := api.Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return "", err
				}
				o.Data["g"] = strconv.Itoa(gen)
				o, err = api.Update(ctx, o, metav1.UpdateOptions{})
				if err != nil {
					return "", err
				}
				return o.ResourceVersion, nil
			},
			delete: func(ctx context.Context, name string) error { return api.Delete(ctx, name, metav1.DeleteOptions{}) },
			list:   func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return api.List(ctx, o) },
			watch:  api.Watch,
		}
	}
	api := c.cs.CoreV1().PodTemplates(ns)
	tmpl := corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/e2e:1"}}}}
	return resourceOps{
		name: res,
		create: func(ctx context.Context, name string) (string, error) {
			o, err := api.Create(ctx, &corev1.PodTemplate{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"g": "0"}}, Template: tmpl}, metav1.CreateOptions{})
			if err != nil {
				return "", err
			}
			return o.ResourceVersion, nil
		},
		update: func(ctx context.Context, name string, gen int) (string, error) {
			o, err := api.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return "", err
			}
			o.Labels["g"] = strconv.Itoa(gen)
			o, err = api.Update(ctx, o, metav1.UpdateOptions{})
			if err != nil {
				return "", err
			}
			return o.ResourceVersion, nil
		},
		delete: func(ctx context.Context, name string) error { return api.Delete(ctx, name, metav1.DeleteOptions{}) },
		list:   func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return api.List(ctx, o) },
		watch:  api.Watch,
	}
}

type change struct {
	typ  watch.EventType
	name string
	rv   string // empty for deletes (the client does not learn it)
}

func (ch change) key() string { return string(ch.typ) + "/" + ch.name + "/" + ch.rv }

// runChanges makes n changes (creates, then updates and deletes among them)
// and returns them in the order made.
func runChanges(ctx context.Context, ops resourceOps, prefix string, n int) ([]change, error) {
	var out []change
	creates := n / 2
	for i := 0; i < creates; i++ {
		name := fmt.Sprintf("%s-%04d", prefix, i)
		rv, err := ops.create(ctx, name)
		if err != nil {
			return out, err
		}
		out = append(out, change{watch.Added, name, rv})
	}
	for i := 0; len(out) < n; i++ {
		name := fmt.Sprintf("%s-%04d", prefix, i%creates)
		if i < creates/2 {
			rv, err := ops.update(ctx, name, i+1) // never 0: a no-op update writes nothing
			if err != nil {
				return out, err
			}
			out = append(out, change{watch.Modified, name, rv})
		} else {
			if err := ops.delete(ctx, name); err != nil {
				return out, err
			}
			out = append(out, change{watch.Deleted, name, ""})
		}
	}
	return out, nil
}

type watchResult struct {
	changes   []change
	bookmarks int
	lastRV    string
	errs      []string
}

// collect reads a watch until the server closes it (timeoutSeconds) or the
// deadline passes, so duplicates after the expected events would be seen.
func collect(w watch.Interface, deadline time.Duration) watchResult {
	var r watchResult
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	defer w.Stop()
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return r
			}
			switch ev.Type {
			case watch.Bookmark:
				r.bookmarks++
				if a, err := meta.Accessor(ev.Object); err == nil {
					r.lastRV = a.GetResourceVersion()
				}
			case watch.Error:
				r.errs = append(r.errs, fmt.Sprintf("%v", ev.Object))
				return r
			default:
				a, err := meta.Accessor(ev.Object)
				if err != nil {
					r.errs = append(r.errs, err.Error())
					continue
				}
				r.changes = append(r.changes, change{ev.Type, a.GetName(), a.GetResourceVersion()})
				r.lastRV = a.GetResourceVersion()
			}
		case <-timer.C:
			return r
		}
	}
}

// checkExactlyOnce matches made changes to received events: same order,
// each once, RVs increasing.
func checkExactlyOnce(made []change, got []change) error {
	if len(got) != len(made) {
		want := map[string]int{}
		for _, m := range made {
			want[string(m.typ)+"/"+m.name]++
		}
		for _, g := range got {
			want[string(g.typ)+"/"+g.name]--
		}
		var diff []string
		for k, v := range want {
			if v != 0 {
				diff = append(diff, fmt.Sprintf("%s:%+d", k, -v))
			}
		}
		first, last := "", ""
		if len(got) > 0 {
			first, last = got[0].rv, got[len(got)-1].rv
		}
		return fmt.Errorf("received %d events for %d changes (rv %s..%s); received minus made: %v", len(got), len(made), first, last, diff)
	}
	var prev int64
	for i := range made {
		m, g := made[i], got[i]
		if m.typ != g.typ || m.name != g.name || (m.rv != "" && m.rv != g.rv) {
			return fmt.Errorf("event %d: got %s %s rv %s, want %s %s rv %s", i, g.typ, g.name, g.rv, m.typ, m.name, m.rv)
		}
		rv, err := strconv.ParseInt(g.rv, 10, 64)
		if err != nil || rv <= prev {
			return fmt.Errorf("event %d: resourceVersion %s not increasing after %d", i, g.rv, prev)
		}
		prev = rv
	}
	return nil
}

// partWatch watches from a resourceVersion, through the watch cache
// (configmaps) and straight from the store (podtemplates), and checks every
// later change arrives once, in order; with bookmarks requested the cached
// watch gets them. Then a WatchList (sendInitialEvents) stream.
func partWatch(t *testing.T, c *cluster) {
	ctx := ctxT(t, 10*time.Minute)
	n := harness.Pick(300, 100)
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: watchNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, res := range []string{"configmaps", "podtemplates"} {
		ops := opsFor(c, res, watchNS)
		lst, err := ops.list(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		la, _ := meta.ListAccessor(lst)
		fromRV := la.GetResourceVersion()
		// The server sends a bookmark shortly before timeoutSeconds.
		timeout := int64(harness.Pick(20, 12))
		w, err := ops.watch(ctx, metav1.ListOptions{ResourceVersion: fromRV, AllowWatchBookmarks: true, TimeoutSeconds: &timeout})
		if err != nil {
			t.Fatalf("%s watch from %s: %v", res, fromRV, err)
		}
		done := make(chan watchResult, 1)
		cached := res == "configmaps"
		go func() { done <- collect(w, time.Duration(timeout+10)*time.Second) }()
		start := time.Now()
		made, err := runChanges(ctx, ops, "w", n)
		if err != nil {
			t.Fatalf("%s changes: %v", res, err)
		}
		r := <-done
		if len(r.errs) > 0 {
			t.Fatalf("%s watch errors: %v", res, r.errs)
		}
		if err := checkExactlyOnce(made, r.changes); err != nil {
			t.Fatalf("%s watch from %s: %v", res, fromRV, err)
		}
		if cached && r.bookmarks == 0 {
			t.Fatalf("%s: no bookmark within %ds although requested", res, timeout)
		}
		// A second watch from the middle sees exactly the later half.
		mid := made[len(made)/2-1].rv
		short := int64(5)
		w2, err := ops.watch(ctx, metav1.ListOptions{ResourceVersion: mid, TimeoutSeconds: &short})
		if err != nil {
			t.Fatalf("%s watch from %s: %v", res, mid, err)
		}
		r2 := collect(w2, 30*time.Second)
		if err := checkExactlyOnce(made[len(made)/2:], r2.changes); err != nil {
			t.Fatalf("%s watch from mid rv %s: %v", res, mid, err)
		}
		lines = append(lines, fmt.Sprintf("%s (%s): %d changes -> %d events exactly once in order (+%d from mid rv), %d bookmarks, %s",
			res, map[bool]string{true: "watch cache", false: "store"}[cached], len(made), len(r.changes), len(r2.changes), r.bookmarks, time.Since(start).Round(100*time.Millisecond)))
	}

	// WatchList: initial state as ADDED events, then the initial-events-end bookmark.
	ops := opsFor(c, "configmaps", watchNS)
	lst, err := ops.list(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	items, _ := meta.ExtractList(lst)
	wl, err := ops.watch(ctx, metav1.ListOptions{
		SendInitialEvents:    ptr.To(true),
		ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan,
		AllowWatchBookmarks:  true,
	})
	if err != nil {
		t.Fatalf("watchlist: %v", err)
	}
	added, endSeen := 0, false
	deadline := time.After(60 * time.Second)
loop:
	for {
		select {
		case ev, ok := <-wl.ResultChan():
			if !ok {
				break loop
			}
			switch ev.Type {
			case watch.Added:
				added++
			case watch.Bookmark:
				a, _ := meta.Accessor(ev.Object)
				if a.GetAnnotations()[metav1.InitialEventsAnnotationKey] == "true" {
					endSeen = true
					break loop
				}
			case watch.Error:
				t.Fatalf("watchlist error: %v", ev.Object)
			}
		case <-deadline:
			break loop
		}
	}
	wl.Stop()
	if !endSeen || added != len(items) {
		t.Fatalf("watchlist: %d initial ADDED events (want %d), initial-events-end bookmark seen: %v", added, len(items), endSeen)
	}
	lines = append(lines, fmt.Sprintf("watchlist: %d initial events + initial-events-end bookmark", added))
	harness.Summary("watch", "%s", strings.Join(lines, "; "))
}
