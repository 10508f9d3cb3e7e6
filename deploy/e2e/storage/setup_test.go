package storage_test

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdk8s "go.etcd.io/etcd/client/v3/kubernetes"
	"go.uber.org/zap"

	"k8s.io/apimachinery/pkg/api/apitesting"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apiserver/pkg/apis/example"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/utils/clock"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

// The objects the generic tests store are the apiserver's "example" pods,
// encoded as examplev1 and wrapped by a prefix transformer, as kube-apiserver
// would with encryption at rest.
var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

// storedPrefix is what the test transformer prepends to every stored value.
const storedPrefix = "e2e-transformed:"

// etcd3's page-size ceiling for lists (its maxLimit), used to predict how
// many Range calls a paginated list makes.
const etcd3MaxPageSize = 10000

func init() {
	metav1.AddToGroupVersion(scheme, metav1.SchemeGroupVersion)
	utilruntime.Must(example.AddToScheme(scheme))
	utilruntime.Must(examplev1.AddToScheme(scheme))
}

// target is the key-value server the storage tests run against: one shared
// server for the whole child process, each test under its own key prefix.
type target struct {
	kind   harness.Kind
	shared *harness.Server
	dir    string
	seq    int
	mu     sync.Mutex
}

// newServer starts a server of the target's kind with a short progress-notify
// interval (the progress-notify tests need it; it only affects watchers that
// ask for notifications).
func (tg *target) newServer(t testing.TB, name string) *harness.Server {
	return harness.StartServer(t, harness.ServerConfig{
		Kind:           tg.kind,
		Name:           name,
		Dir:            tg.dir,
		Memory:         true,
		ProgressNotify: time.Second,
	})
}

// env is what one test gets: a store over its own prefix, the client under
// it (with the call recorders), and the knobs the generic tests need.
type env struct {
	ctx         context.Context
	store       storage.Interface
	client      *etcdk8s.Client
	codec       runtime.Codec
	transformer *swappableTransformer
	base        *storagetesting.PrefixTransformer
	prefix      string
	server      *harness.Server
}

type envOptions struct {
	fresh       bool // a dedicated server instead of the shared one
	noNewFunc   bool
	leaseReuse  int64
	resourcePfx string
}

// newEnv builds an etcd3 store the way kube-apiserver's storage factory
// does, with a compactor that does not compact on its own.
func (tg *target) newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	srv := tg.shared
	if o.fresh {
		srv = tg.newServer(t, "fresh-"+sanitize(t.Name()))
	}
	tg.mu.Lock()
	tg.seq++
	prefix := fmt.Sprintf("/e2e-%03d-%s", tg.seq, sanitize(t.Name()))
	tg.mu.Unlock()

	cli, err := etcdk8s.New(clientv3.Config{
		Endpoints:   []string{srv.URL()},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	cli.KV = storagetesting.NewKVRecorder(cli.KV)
	cli.Kubernetes = storagetesting.NewKubernetesRecorder(cli.Kubernetes)

	codec := apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)
	base := storagetesting.NewPrefixTransformer([]byte(storedPrefix), false)
	tr := &swappableTransformer{cur: base}
	versioner := storage.APIObjectVersioner{}
	compactor := etcd3.NewCompactor(cli.Client, 0, clock.RealClock{}, nil)
	t.Cleanup(compactor.Stop)
	lease := etcd3.NewDefaultLeaseManagerConfig()
	// Short lease reuse, so TTL tests do not wait for a long-lived lease.
	lease.ReuseDurationSeconds = 1
	if o.leaseReuse > 0 {
		lease.ReuseDurationSeconds = o.leaseReuse
	}
	newFunc := func() runtime.Object { return &example.Pod{} }
	if o.noNewFunc {
		newFunc = nil
	}
	resourcePfx := "/pods"
	if o.resourcePfx != "" {
		resourcePfx = o.resourcePfx
	}
	s := etcd3.New(cli, compactor, codec, newFunc, func() runtime.Object { return &example.PodList{} },
		prefix, resourcePfx, schema.GroupResource{Resource: "pods"}, tr, lease,
		etcd3.NewDefaultDecoder(codec, versioner), versioner)
	t.Cleanup(s.Close)
	return &env{
		ctx:         context.Background(),
		store:       s,
		client:      cli,
		codec:       codec,
		transformer: tr,
		base:        base,
		prefix:      prefix,
		server:      srv,
	}
}

func sanitize(name string) string {
	name = strings.TrimPrefix(name, "TestStorageTarget/")
	r := strings.NewReplacer("/", "_", " ", "_", "=", "_", "#", "_")
	return r.Replace(name)
}

// swappableTransformer lets a test replace the transformer of a store that
// is already built (the store and its watcher share this one instance).
type swappableTransformer struct {
	mu  sync.RWMutex
	cur value.Transformer
}

func (s *swappableTransformer) get() value.Transformer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur
}

func (s *swappableTransformer) swap(tr value.Transformer) (restore func()) {
	s.mu.Lock()
	old := s.cur
	s.cur = tr
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.cur = old
		s.mu.Unlock()
	}
}

func (s *swappableTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	return s.get().TransformFromStorage(ctx, data, dataCtx)
}

func (s *swappableTransformer) TransformToStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, error) {
	return s.get().TransformToStorage(ctx, data, dataCtx)
}

// withPrefixTransformer adds UpdatePrefixTransformer to the store.
type withPrefixTransformer struct {
	storage.Interface
	e *env
}

func (w withPrefixTransformer) UpdatePrefixTransformer(modify storagetesting.PrefixTransformerModifier) func() {
	clone := *w.e.base
	return w.e.transformer.swap(modify(&clone))
}

// withCorruptTransformer adds CorruptTransformer: reads fail as they do for
// data that cannot be decrypted.
type withCorruptTransformer struct {
	storage.Interface
	e *env
}

type failingReads struct{ value.Transformer }

func (f failingReads) TransformFromStorage(context.Context, []byte, value.Context) ([]byte, bool, error) {
	return nil, true, errors.New("e2e: stored bytes cannot be transformed")
}

func (w withCorruptTransformer) CorruptTransformer() func() {
	cur := w.e.transformer.get()
	return w.e.transformer.swap(etcd3.WithCorruptObjErrorHandlingTransformer(failingReads{cur}))
}

// storedObjectCheck verifies what is in the store under key: transformed,
// decodable, without resourceVersion or selfLink.
func (e *env) storedObjectCheck() storagetesting.KeyValidation {
	return func(ctx context.Context, t *testing.T, key string) {
		key = path.Join(e.prefix, key)
		resp, err := e.client.KV.Get(ctx, key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		if len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %d kvs, want 1", key, len(resp.Kvs))
		}
		raw := resp.Kvs[0].Value
		if !strings.HasPrefix(string(raw), storedPrefix) {
			t.Fatalf("stored value of %s lacks the transformer prefix", key)
		}
		obj, err := runtime.Decode(e.codec, raw[len(storedPrefix):])
		if err != nil {
			t.Fatalf("decode stored %s: %v", key, err)
		}
		pod := obj.(*example.Pod)
		if pod.ResourceVersion != "" || pod.SelfLink != "" {
			t.Errorf("stored %s has resourceVersion %q selfLink %q, want both empty", key, pod.ResourceVersion, pod.SelfLink)
		}
	}
}

// bumpRevision writes an unrelated key so the revision moves on.
func (e *env) bumpRevision() storagetesting.IncreaseRVFunc {
	return func(ctx context.Context, t *testing.T) {
		if _, err := e.client.KV.Put(ctx, e.prefix+"-bump", "x"); err != nil {
			t.Fatalf("bump revision: %v", err)
		}
	}
}

// compaction compacts the whole keyspace to the given resourceVersion with
// kube-apiserver's compaction transaction, retrying with the version of
// compact_rev_key that earlier tests on the shared server left, then waits
// until the store has seen it.
func (e *env) compaction() storagetesting.Compaction {
	return func(ctx context.Context, t *testing.T, resourceVersion string) {
		rv, err := storage.APIObjectVersioner{}.ParseResourceVersion(resourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		var version int64
		done := false
		for attempt := 0; attempt < 5 && !done; attempt++ {
			var compacted int64
			version, _, compacted, err = etcd3.Compact(ctx, e.client.Client, version, int64(rv))
			if err != nil {
				continue
			}
			done = compacted == int64(rv)
		}
		if err != nil {
			t.Fatalf("compact to %d: %v", rv, err)
		}
		if !done {
			t.Fatalf("compact to %d: compaction transaction kept losing on compact_rev_key", rv)
		}
		if !utilfeature.DefaultFeatureGate.Enabled(features.ListFromCacheSnapshot) {
			return
		}
		deadline := time.Now().Add(30 * time.Second)
		for e.store.CompactRevision() < int64(rv) {
			if time.Now().After(deadline) {
				t.Fatalf("store did not observe compaction to %d (sees %d)", rv, e.store.CompactRevision())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// callsCheck checks how many objects were read through the transformer and
// how many Range calls a list made: a paginated list grows its page size
// twofold per call when pages come back short, up to etcd3MaxPageSize.
func (e *env) callsCheck() storagetesting.CallsValidation {
	return func(t *testing.T, pageSize, processed uint64) {
		if got := e.base.GetReadsAndReset(); got != processed {
			t.Errorf("objects read through the transformer: %d, want %d", got, processed)
		}
		want := uint64(1)
		if pageSize != 0 {
			limit, seen := pageSize, uint64(1)
			for seen < processed {
				limit = min(limit*2, etcd3MaxPageSize)
				seen += limit
				want++
			}
		}
		if got := e.client.KV.(*storagetesting.KVRecorder).GetReadsAndReset(); got != want {
			t.Fatalf("range calls: %d, want %d", got, want)
		}
	}
}

// keysUnder lists the keys of the store's resource, keys only, as
// kube-apiserver does for its size-based list cost estimate.
func (e *env) keysUnder(resourcePfx string) storage.KeysFunc {
	return func(ctx context.Context) ([]string, error) {
		p := strings.TrimSuffix(e.prefix, "/") + "/" + strings.Trim(resourcePfx, "/") + "/"
		resp, err := e.client.KV.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			keys = append(keys, string(kv.Key))
		}
		return keys, nil
	}
}
