package kube

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

var widgetGVR = schema.GroupVersionResource{Group: "e2e.axon.io", Version: "v1", Resource: "widgets"}

const crdName = "widgets.e2e.axon.io"

func widgetCRD() *apiextv1.CustomResourceDefinition {
	return &apiextv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: crdName},
		Spec: apiextv1.CustomResourceDefinitionSpec{
			Group: widgetGVR.Group,
			Names: apiextv1.CustomResourceDefinitionNames{Plural: "widgets", Singular: "widget", Kind: "Widget", ListKind: "WidgetList"},
			Scope: apiextv1.NamespaceScoped,
			Versions: []apiextv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Schema: &apiextv1.CustomResourceValidation{OpenAPIV3Schema: &apiextv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextv1.JSONSchemaProps{
						"spec": {Type: "object", Properties: map[string]apiextv1.JSONSchemaProps{
							"size":  {Type: "integer"},
							"color": {Type: "string"},
						}},
					},
				}},
			}},
		},
	}
}

func widget(ns, name string, size int64) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "e2e.axon.io/v1",
		"kind":       "Widget",
		"metadata":   map[string]any{"name": name, "namespace": ns},
		"spec":       map[string]any{"size": size, "color": "blue"},
	}}
}

func deployment(ns, name string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/e2e:1"}}},
			},
		},
	}
}

// partObjects creates namespaces, configmaps, secrets, deployments, a CRD
// and custom objects, reads them back, updates them, and checks the keys on
// the main store.
func partObjects(t *testing.T, c *cluster) {
	ctx := ctxT(t, 10*time.Minute)
	nsCount := harness.Pick(5, 2)
	perNS := harness.Pick(20, 5)
	deployPerNS := harness.Pick(10, 3)
	widgets := harness.Pick(50, 10)

	for i := 0; i < nsCount; i++ {
		ns := fmt.Sprintf("e2e-obj-%d", i)
		if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create namespace %s: %v", ns, err)
		}
		c.objNamespaces = append(c.objNamespaces, ns)
	}
	var updates atomic.Int64
	err := parallel(nsCount*perNS, 8, func(i int) error {
		ns, name := c.objNamespaces[i%nsCount], fmt.Sprintf("obj-%d", i/nsCount)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: map[string]string{"k": name, "n": fmt.Sprint(i)}}
		got, err := c.cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: map[string][]byte{"password": []byte("pw-" + name)}}
		if _, err := c.cs.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			return err
		}
		back, err := c.cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if back.Data["k"] != name || back.ResourceVersion != got.ResourceVersion {
			return fmt.Errorf("configmap %s/%s read back %v rv %s, want %s rv %s", ns, name, back.Data, back.ResourceVersion, name, got.ResourceVersion)
		}
		back.Data["updated"] = "yes"
		upd, err := c.cs.CoreV1().ConfigMaps(ns).Update(ctx, back, metav1.UpdateOptions{})
		if err != nil {
			return err
		}
		if upd.ResourceVersion == got.ResourceVersion {
			return fmt.Errorf("update of %s/%s kept resourceVersion %s", ns, name, got.ResourceVersion)
		}
		updates.Add(1)
		s, err := c.cs.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if string(s.Data["password"]) != "pw-"+name {
			return fmt.Errorf("secret %s/%s read back %q", ns, name, s.Data["password"])
		}
		return nil
	})
	if err != nil {
		t.Fatalf("configmaps/secrets: %v", err)
	}
	err = parallel(nsCount*deployPerNS, 8, func(i int) error {
		ns, name := c.objNamespaces[i%nsCount], fmt.Sprintf("deploy-%d", i/nsCount)
		d, err := c.cs.AppsV1().Deployments(ns).Create(ctx, deployment(ns, name), metav1.CreateOptions{})
		if err != nil {
			return err
		}
		d.Spec.Replicas = ptr.To[int32](3)
		if _, err := c.cs.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			return err
		}
		updates.Add(1)
		back, err := c.cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if *back.Spec.Replicas != 3 {
			return fmt.Errorf("deployment %s/%s replicas %d, want 3", ns, name, *back.Spec.Replicas)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("deployments: %v", err)
	}

	// CRD and custom objects.
	crdStart := time.Now()
	if _, err := c.ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, widgetCRD(), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD: %v", err)
	}
	if err := waitCRDEstablished(ctx, c); err != nil {
		t.Fatal(err)
	}
	// The CRD is established before its storage answers; retry the first create.
	crNS := c.objNamespaces[0]
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.dyn.Resource(widgetGVR).Namespace(crNS).Create(ctx, widget(crNS, "widget-0", 0), metav1.CreateOptions{})
		if err != nil && (apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err)) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		t.Fatalf("first custom object: %v", err)
	}
	crdReady := time.Since(crdStart)
	err = parallel(widgets-1, 8, func(i int) error {
		name := fmt.Sprintf("widget-%d", i+1)
		if _, err := c.dyn.Resource(widgetGVR).Namespace(crNS).Create(ctx, widget(crNS, name, int64(i+1)), metav1.CreateOptions{}); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("custom objects: %v", err)
	}
	err = parallel(widgets, 8, func(i int) error {
		name := fmt.Sprintf("widget-%d", i)
		u, err := c.dyn.Resource(widgetGVR).Namespace(crNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		size, _, _ := unstructured.NestedInt64(u.Object, "spec", "size")
		if size != int64(i) {
			return fmt.Errorf("%s size %d, want %d", name, size, i)
		}
		unstructured.SetNestedField(u.Object, "red", "spec", "color")
		if _, err := c.dyn.Resource(widgetGVR).Namespace(crNS).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
			return err
		}
		updates.Add(1)
		return nil
	})
	if err != nil {
		t.Fatalf("custom object updates: %v", err)
	}
	wl, err := c.dyn.Resource(widgetGVR).Namespace(crNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range wl.Items {
		if color, _, _ := unstructured.NestedString(u.Object, "spec", "color"); color != "red" {
			t.Fatalf("%s color %q after update, want red", u.GetName(), color)
		}
	}
	if len(wl.Items) != widgets {
		t.Fatalf("listed %d widgets, want %d", len(wl.Items), widgets)
	}

	// Keys on the main store.
	var cmKeys, secKeys, depKeys int64
	for _, ns := range c.objNamespaces {
		cmKeys += mustCount(t, c.mainKV, "/registry/configmaps/"+ns+"/")
		secKeys += mustCount(t, c.mainKV, "/registry/secrets/"+ns+"/")
		depKeys += mustCount(t, c.mainKV, "/registry/deployments/"+ns+"/")
	}
	crKeys := mustCount(t, c.mainKV, "/registry/e2e.axon.io/widgets/"+crNS+"/")
	crdKeys := mustCount(t, c.mainKV, "/registry/apiextensions.k8s.io/customresourcedefinitions/"+crdName)
	// kube-root-ca.crt configmaps are made by a controller that is not running.
	if cmKeys != int64(nsCount*perNS) || secKeys != int64(nsCount*perNS) || depKeys != int64(nsCount*deployPerNS) || crKeys != int64(widgets) || crdKeys != 1 {
		t.Fatalf("keys on main store: configmaps %d secrets %d deployments %d widgets %d crd %d; want %d %d %d %d 1",
			cmKeys, secKeys, depKeys, crKeys, crdKeys, nsCount*perNS, nsCount*perNS, nsCount*deployPerNS, widgets)
	}
	total := mustCount(t, c.mainKV, "/registry/")
	harness.Summary("objects", "%d namespaces, %d configmaps, %d secrets, %d deployments, 1 CRD (serving in %s), %d custom objects created, read back and %d updated; keys match on main store (%d keys under /registry)",
		nsCount, nsCount*perNS, nsCount*perNS, nsCount*deployPerNS, crdReady.Round(100*time.Millisecond), widgets, updates.Load(), total)
}

func waitCRDEstablished(ctx context.Context, c *cluster) error {
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		crd, err := c.ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crdName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range crd.Status.Conditions {
			if cond.Type == apiextv1.Established && cond.Status == apiextv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

// partConflicts: stale writes are refused with 409, and concurrent
// read-modify-write loops lose no increment.
func partConflicts(t *testing.T, c *cluster) {
	ctx := ctxT(t, 5*time.Minute)
	ns := c.objNamespaces[0]
	n := harness.Pick(20, 5)
	stale := 0
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("conflict-%d", i)
		cm, err := c.cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"v": "0"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		old := cm.DeepCopy()
		cm.Data["v"] = "1"
		if _, err := c.cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		old.Data["v"] = "stale"
		_, err = c.cs.CoreV1().ConfigMaps(ns).Update(ctx, old, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			t.Fatalf("stale update of %s: got %v, want 409 Conflict", name, err)
		}
		stale++
	}
	// Stale update of a custom object and of a deployment.
	u, err := c.dyn.Resource(widgetGVR).Namespace(ns).Get(ctx, "widget-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	staleU := u.DeepCopy()
	unstructured.SetNestedField(u.Object, int64(100), "spec", "size")
	if _, err := c.dyn.Resource(widgetGVR).Namespace(ns).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.dyn.Resource(widgetGVR).Namespace(ns).Update(ctx, staleU, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("stale custom object update: got %v, want 409 Conflict", err)
	}
	d, err := c.cs.AppsV1().Deployments(ns).Get(ctx, "deploy-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	staleD := d.DeepCopy()
	d.Spec.Replicas = ptr.To[int32](5)
	if _, err := c.cs.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cs.AppsV1().Deployments(ns).Update(ctx, staleD, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("stale deployment update: got %v, want 409 Conflict", err)
	}
	// Delete with a stale resourceVersion precondition.
	cm, err := c.cs.CoreV1().ConfigMaps(ns).Get(ctx, "conflict-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	staleRV := cm.ResourceVersion
	cm.Data["v"] = "2"
	if _, err := c.cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = c.cs.CoreV1().ConfigMaps(ns).Delete(ctx, "conflict-0", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &staleRV}})
	if !apierrors.IsConflict(err) {
		t.Fatalf("delete with stale precondition: got %v, want 409 Conflict", err)
	}
	// Create of an existing name.
	_, err = c.cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "conflict-1"}}, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		t.Fatalf("duplicate create: got %v, want 409 AlreadyExists", err)
	}

	// Concurrent increments with retry on conflict.
	writers, each := harness.Pick(4, 2), harness.Pick(25, 10)
	if _, err := c.cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "counter"}, Data: map[string]string{"n": "0"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var retried atomic.Int64
	err = parallel(writers*each, writers, func(int) error {
		first := true
		return retry.RetryOnConflict(wait.Backoff{Steps: 1000, Duration: time.Millisecond, Factor: 1.2, Cap: 50 * time.Millisecond}, func() error {
			if !first {
				retried.Add(1)
			}
			first = false
			cm, err := c.cs.CoreV1().ConfigMaps(ns).Get(ctx, "counter", metav1.GetOptions{})
			if err != nil {
				return err
			}
			var v int
			fmt.Sscan(cm.Data["n"], &v)
			cm.Data["n"] = fmt.Sprint(v + 1)
			_, err = c.cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
			return err
		})
	})
	if err != nil {
		t.Fatalf("concurrent increments: %v", err)
	}
	cm, err = c.cs.CoreV1().ConfigMaps(ns).Get(ctx, "counter", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["n"] != fmt.Sprint(writers*each) {
		t.Fatalf("counter %s after %d increments", cm.Data["n"], writers*each)
	}
	harness.Summary("conflicts", "%d stale configmap updates, 1 custom object, 1 deployment, 1 stale delete precondition -> all 409 Conflict; duplicate create -> 409 AlreadyExists; %d writers x %d increments = %s (%d conflicts retried)",
		stale, writers, each, cm.Data["n"], retried.Load())
}
