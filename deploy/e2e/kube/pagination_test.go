package kube

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

// lister lists one resource in pageNS.
type lister func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error)

type item struct{ name, rv string }

type pageStats struct {
	pages     int
	remaining int64 // remainingItemCount of the first page
	items     []item
}

// listAll lists with the given page size (0: one unpaginated call), checking
// that every page carries the first page's resourceVersion.
func listAll(ctx context.Context, l lister, limit int64, rv, match string) (pageStats, string, error) {
	var st pageStats
	opts := metav1.ListOptions{Limit: limit, ResourceVersion: rv, ResourceVersionMatch: metav1.ResourceVersionMatch(match)}
	listRV := ""
	for {
		obj, err := l(ctx, opts)
		if err != nil {
			return st, "", fmt.Errorf("page %d: %w", st.pages+1, err)
		}
		st.pages++
		lm, err := meta.ListAccessor(obj)
		if err != nil {
			return st, "", err
		}
		if st.pages == 1 {
			listRV = lm.GetResourceVersion()
			if r := lm.GetRemainingItemCount(); r != nil {
				st.remaining = *r
			} else {
				st.remaining = -1
			}
		} else if lm.GetResourceVersion() != listRV {
			return st, "", fmt.Errorf("page %d at resourceVersion %s, first page at %s", st.pages, lm.GetResourceVersion(), listRV)
		}
		items, err := meta.ExtractList(obj)
		if err != nil {
			return st, "", err
		}
		if limit > 0 && int64(len(items)) > limit {
			return st, "", fmt.Errorf("page %d has %d items, limit %d", st.pages, len(items), limit)
		}
		for _, it := range items {
			a, _ := meta.Accessor(it)
			st.items = append(st.items, item{a.GetName(), a.GetResourceVersion()})
		}
		cont := lm.GetContinue()
		if cont == "" {
			return st, listRV, nil
		}
		// Continued pages carry neither resourceVersion nor match.
		opts = metav1.ListOptions{Limit: limit, Continue: cont}
	}
}

func sameItems(a, b []item) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d items vs %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Errorf("item %d: %v vs %v", i, a[i], b[i])
		}
	}
	return nil
}

// partPagination creates many podtemplates (served from the store: their
// watch cache is off) and configmaps (served by the watch cache) in one
// namespace and compares paginated with unpaginated lists.
func partPagination(t *testing.T, c *cluster) {
	ctx := ctxT(t, 20*time.Minute)
	counts := map[string]int{"podtemplates": harness.Pick(5000, 1000), "configmaps": harness.Pick(5000, 500)}
	limit := int64(harness.Pick(500, 200))
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pageNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	listers := map[string]lister{
		"podtemplates": func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.cs.CoreV1().PodTemplates(pageNS).List(ctx, o)
		},
		"configmaps": func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.cs.CoreV1().ConfigMaps(pageNS).List(ctx, o)
		},
	}
	var lines []string
	for _, res := range []string{"podtemplates", "configmaps"} {
		n := counts[res]
		start := time.Now()
		err := parallel(n, 16, func(i int) error {
			name := fmt.Sprintf("p-%05d", i)
			var err error
			if res == "podtemplates" {
				_, err = c.cs.CoreV1().PodTemplates(pageNS).Create(ctx, &corev1.PodTemplate{
					ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"i": fmt.Sprint(i % 7)}},
					Template:   corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/e2e:1"}}}},
				}, metav1.CreateOptions{})
			} else {
				_, err = c.cs.CoreV1().ConfigMaps(pageNS).Create(ctx, &corev1.ConfigMap{
					ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"payload": strings.Repeat("x", 200)},
				}, metav1.CreateOptions{})
			}
			return err
		})
		if err != nil {
			t.Fatalf("create %s: %v", res, err)
		}
		created := time.Since(start)
		c.pageCounts[res] = n

		full, fullRV, err := listAll(ctx, listers[res], 0, "", "")
		if err != nil {
			t.Fatalf("%s unpaginated list: %v", res, err)
		}
		if len(full.items) != n {
			t.Fatalf("%s unpaginated list: %d items, want %d", res, len(full.items), n)
		}
		pstart := time.Now()
		paged, pagedRV, err := listAll(ctx, listers[res], limit, "", "")
		if err != nil {
			t.Fatalf("%s paginated list: %v", res, err)
		}
		pagedTook := time.Since(pstart)
		if err := sameItems(full.items, paged.items); err != nil {
			t.Fatalf("%s paginated list (rv %s) differs from unpaginated (rv %s): %v", res, pagedRV, fullRV, err)
		}
		wantPages := (n + int(limit) - 1) / int(limit)
		if paged.pages != wantPages {
			t.Fatalf("%s: %d pages, want %d", res, paged.pages, wantPages)
		}
		if paged.remaining != int64(n)-limit {
			t.Fatalf("%s: first page remainingItemCount %d, want %d", res, paged.remaining, int64(n)-limit)
		}
		// The same pinned to the unpaginated list's revision.
		exact, exactRV, err := listAll(ctx, listers[res], limit, fullRV, string(metav1.ResourceVersionMatchExact))
		if err != nil {
			t.Fatalf("%s paginated list at exact rv %s: %v", res, fullRV, err)
		}
		if exactRV != fullRV {
			t.Fatalf("%s exact list at %s answered at %s", res, fullRV, exactRV)
		}
		if err := sameItems(full.items, exact.items); err != nil {
			t.Fatalf("%s paginated list at exact rv %s differs: %v", res, fullRV, err)
		}
		// A label-filtered paginated list: pages may be short, nothing lost.
		filtered := 0
		if res == "podtemplates" {
			fl := func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.LabelSelector = "i=3"
				return listers[res](ctx, o)
			}
			f, _, err := listAll(ctx, fl, limit/10, "", "")
			if err != nil {
				t.Fatalf("filtered list: %v", err)
			}
			want := 0
			for i := 0; i < n; i++ {
				if i%7 == 3 {
					want++
				}
			}
			if len(f.items) != want {
				t.Fatalf("filtered paginated list: %d items, want %d", len(f.items), want)
			}
			filtered = len(f.items)
		}
		path := map[string]string{"podtemplates": "store path, no watch cache", "configmaps": "watch-cache path"}[res]
		line := fmt.Sprintf("%s (%s): %d created in %s; %d pages of %d in %s == unpaginated list (%d items), remainingItemCount %d ok, exact-rv paginated list equal",
			res, path, n, created.Round(100*time.Millisecond), paged.pages, limit, pagedTook.Round(time.Millisecond), len(full.items), paged.remaining)
		if filtered > 0 {
			line += fmt.Sprintf(", label-filtered pages: %d items ok", filtered)
		}
		lines = append(lines, line)
		if keys := mustCount(t, c.mainKV, "/registry/"+res+"/"+pageNS+"/"); keys != int64(n) {
			t.Fatalf("%s keys on main store: %d, want %d", res, keys, n)
		}
	}
	harness.Summary("pagination", "%s", strings.Join(lines, "; "))
}
