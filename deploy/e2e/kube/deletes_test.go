package kube

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

// partDeletes deletes what partObjects made — single deletes, collection
// deletes, the CRD (kube-apiserver's own finalizer removes its objects) and
// the namespaces (finalized by hand: no namespace controller runs) — and
// checks the keys are gone from the main store.
func partDeletes(t *testing.T, c *cluster) {
	ctx := ctxT(t, 10*time.Minute)
	if len(c.objNamespaces) == 0 {
		t.Skip("objects part did not run")
	}
	var cms, secs, deps int
	for _, ns := range c.objNamespaces {
		cl, err := c.cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cms += len(cl.Items)
		if err := c.cs.CoreV1().ConfigMaps(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatalf("delete configmaps in %s: %v", ns, err)
		}
		sl, err := c.cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sl.Items {
			if err := c.cs.CoreV1().Secrets(ns).Delete(ctx, s.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &s.ResourceVersion}}); err != nil {
				t.Fatalf("delete secret %s/%s: %v", ns, s.Name, err)
			}
			secs++
		}
		dl, err := c.cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dl.Items {
			if err := c.cs.AppsV1().Deployments(ns).Delete(ctx, d.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("delete deployment %s/%s: %v", ns, d.Name, err)
			}
			deps++
		}
		if _, err := c.cs.CoreV1().ConfigMaps(ns).Get(ctx, "obj-0", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("configmap %s/obj-0 after delete: %v, want 404", ns, err)
		}
	}
	crNS := c.objNamespaces[0]
	wl, err := c.dyn.Resource(widgetGVR).Namespace(crNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	widgets := len(wl.Items)
	// Delete half the custom objects one by one; the CRD deletion removes the rest.
	for i, u := range wl.Items {
		if i%2 == 0 {
			if err := c.dyn.Resource(widgetGVR).Namespace(crNS).Delete(ctx, u.GetName(), metav1.DeleteOptions{}); err != nil {
				t.Fatalf("delete widget %s: %v", u.GetName(), err)
			}
		}
	}
	if err := c.ext.ApiextensionsV1().CustomResourceDefinitions().Delete(ctx, crdName, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete CRD: %v", err)
	}
	crdGone := time.Now()
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crdName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("CRD still present after 2m")
	}
	crdTook := time.Since(crdGone)
	for _, ns := range c.objNamespaces {
		if err := c.cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete namespace %s: %v", ns, err)
		}
		n, err := c.cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n.Status.Phase != corev1.NamespaceTerminating {
			t.Fatalf("namespace %s phase %s after delete, want Terminating", ns, n.Status.Phase)
		}
		n.Spec.Finalizers = nil
		if _, err := c.cs.CoreV1().Namespaces().Finalize(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("finalize namespace %s: %v", ns, err)
		}
		// With its finalizers gone, the next delete removes it (the
		// namespace controller would make this call).
		if err := c.cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatalf("delete finalized namespace %s: %v", ns, err)
		}
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, ns := range c.objNamespaces {
			if _, err := c.cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("namespaces not gone after finalize")
	}
	var left []string
	for _, ns := range c.objNamespaces {
		for _, p := range []string{"configmaps", "secrets", "deployments", "e2e.axon.io/widgets"} {
			if n := mustCount(t, c.mainKV, fmt.Sprintf("/registry/%s/%s/", p, ns)); n != 0 {
				left = append(left, fmt.Sprintf("%s/%s: %d", p, ns, n))
			}
		}
		if n := mustCount(t, c.mainKV, "/registry/namespaces/"+ns); n != 0 {
			left = append(left, "namespace "+ns)
		}
	}
	if n := mustCount(t, c.mainKV, "/registry/apiextensions.k8s.io/customresourcedefinitions/"+crdName); n != 0 {
		left = append(left, "crd")
	}
	if len(left) > 0 {
		t.Fatalf("keys left on main store after deletes: %v", left)
	}
	harness.Summary("deletes", "%d configmaps (collection delete), %d secrets (with RV precondition), %d deployments, %d custom objects (%d single, rest by CRD cleanup in %s), 1 CRD, %d namespaces (finalized) deleted; 0 keys left under their prefixes on main store",
		cms, secs, deps, widgets, (widgets+1)/2, crdTook.Round(100*time.Millisecond), len(c.objNamespaces))
}
