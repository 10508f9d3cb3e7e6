package benchmark

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Workloads lists the workload names Run accepts.
var Workloads = []string{"create", "update", "get", "list", "watch", "lease", "mixed", "memory", "interference", "scale"}

// workload is one kind of load. setup runs before the clock starts (preload,
// watcher creation), op is one operation by one request loop, and finish,
// when implemented, runs after the loops stop (draining events, measuring).
type workload interface {
	setup(ctx context.Context, r *run) error
	op(ctx context.Context, w *worker) error
}

type finisher interface {
	finish(ctx context.Context, r *run) error
}

// sampledFinisher is a finisher whose finish phase still belongs in the
// timeline (watch events arriving after the writers stop).
type sampledFinisher interface {
	sampleFinish() bool
}

func newWorkload(name string, cfg Config) (workload, error) {
	switch name {
	case "create":
		return &createWL{}, nil
	case "update":
		return &updateWL{}, nil
	case "get":
		return &getWL{}, nil
	case "list":
		return &listWL{}, nil
	case "watch":
		return &watchWL{}, nil
	case "lease":
		return &leaseWL{}, nil
	case "mixed":
		return newMixedWL(cfg)
	case "memory":
		return &memoryWL{}, nil
	case "interference":
		return &interferenceWL{}, nil
	case "scale":
		return &scaleWL{}, nil
	}
	return nil, fmt.Errorf("unknown workload %q (one of %s)", name, strings.Join(Workloads, ", "))
}

// worker is one request loop's private state.
type worker struct {
	id  int
	cli *clientv3.Client
	rnd *rand.Rand
	val []byte // ValSize bytes, reused
	key []byte // scratch for key building
}

// series records one kind of request: latency of successes, errors by code.
type series struct {
	name string
	hist *Histogram
	ok   atomic.Int64
	errs atomic.Int64

	mu      sync.Mutex
	byCode  map[string]int64
	samples map[string]string

	// Sampler state, touched only by the sampler goroutine.
	timeline []TimePoint
	prevSnap *HistSnapshot
	prevOK   int64
	prevErr  int64
}

// record counts one request that started at start and ended now with err.
func (s *series) record(start time.Time, err error) {
	s.recordLatency(time.Since(start), err)
}

func (s *series) recordLatency(d time.Duration, err error) {
	if err == nil {
		s.hist.Record(d)
		s.ok.Add(1)
		return
	}
	s.errs.Add(1)
	code := Classify(err)
	s.mu.Lock()
	s.byCode[code]++
	if _, ok := s.samples[code]; !ok {
		s.samples[code] = err.Error()
	}
	s.mu.Unlock()
}

// run is the state of one Run call.
type run struct {
	cfg      Config
	workload string
	tag      string
	clients  []*clientv3.Client

	mu       sync.Mutex
	series   []*series
	counters map[string]*atomic.Int64
	gauges   map[string]float64
	params   map[string]string
	notes    []string

	// total bounds operations (0: none); untimed ignores Duration.
	total   int64
	untimed bool
	issued  atomic.Int64
	start   time.Time
	elapsed time.Duration
}

// addSeries registers a series; the first registered is the primary one.
func (r *run) addSeries(name string) *series {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.series {
		if s.name == name {
			return s
		}
	}
	s := &series{name: name, hist: NewHistogram(), byCode: map[string]int64{}, samples: map[string]string{}}
	r.series = append(r.series, s)
	return s
}

// counter registers (or finds) a named counter reported with the result.
func (r *run) counter(name string) *atomic.Int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.counters[name]
	if !ok {
		c = new(atomic.Int64)
		r.counters[name] = c
	}
	return c
}

func (r *run) gauge(name string, v float64) {
	r.mu.Lock()
	r.gauges[name] = v
	r.mu.Unlock()
}

func (r *run) param(name string, v any) {
	r.mu.Lock()
	r.params[name] = fmt.Sprint(v)
	r.mu.Unlock()
}

func (r *run) note(format string, args ...any) {
	r.mu.Lock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// client returns the connection a request loop (or preload goroutine) id uses.
func (r *run) client(id int) *clientv3.Client { return r.clients[id%len(r.clients)] }

// Run runs one workload against cfg.Endpoints and returns its result. An
// error means the run could not start (bad config, unreachable endpoint,
// failed preload); request errors during the run are counted, not returned.
func Run(ctx context.Context, workload string, cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(workload); err != nil {
		return nil, err
	}
	wl, err := newWorkload(workload, cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Label == "" {
		cfg.Label = workload
	}
	r := &run{
		cfg:      cfg,
		workload: workload,
		tag:      runTag(),
		counters: map[string]*atomic.Int64{},
		gauges:   map[string]float64{},
		params:   map[string]string{},
		total:    cfg.Total,
	}
	r.clients, err = Connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range r.clients {
			_ = c.Close()
		}
	}()
	if err := WaitReady(ctx, r.clients[0], cfg.Endpoints, cfg.DialTimeout); err != nil {
		return nil, err
	}
	if err := wl.setup(ctx, r); err != nil {
		return nil, fmt.Errorf("%s setup: %w", workload, err)
	}

	// The measured phase.
	stopCtx := ctx
	var cancelStop context.CancelFunc = func() {}
	if cfg.Duration > 0 && !r.untimed {
		stopCtx, cancelStop = context.WithTimeout(ctx, cfg.Duration)
	}
	defer cancelStop()
	var pace *pacer
	r.start = time.Now()
	if cfg.Rate > 0 {
		pace = &pacer{start: r.start, interval: float64(time.Second) / cfg.Rate}
	}
	samplerDone := make(chan struct{})
	stopSampler := make(chan struct{})
	go r.sampleLoop(stopSampler, samplerDone)

	var wg sync.WaitGroup
	for i := 0; i < cfg.Clients; i++ {
		w := &worker{
			id:  i,
			cli: r.client(i),
			rnd: rand.New(rand.NewPCG(uint64(i)+1, uint64(r.start.UnixNano()))),
		}
		w.val = newValue(cfg.ValSize, w.rnd)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.loop(ctx, stopCtx, w, wl, pace)
		}()
	}
	wg.Wait()
	r.elapsed = time.Since(r.start)
	cancelStop()

	f, hasFinish := wl.(finisher)
	sf, _ := wl.(sampledFinisher)
	var finishErr error
	if hasFinish && sf != nil && sf.sampleFinish() {
		finishErr = f.finish(ctx, r)
	}
	close(stopSampler)
	<-samplerDone
	if hasFinish && (sf == nil || !sf.sampleFinish()) {
		finishErr = f.finish(ctx, r)
	}
	if finishErr != nil {
		r.note("%s finish: %v", workload, finishErr)
	}
	if ctx.Err() != nil {
		r.note("interrupted: %v", ctx.Err())
	}
	return r.result(), nil
}

// loop is one request loop.
func (r *run) loop(ctx, stopCtx context.Context, w *worker, wl workload, pace *pacer) {
	for {
		if stopCtx.Err() != nil {
			return
		}
		if r.total > 0 && r.issued.Add(1) > r.total {
			return
		}
		if pace != nil && !pace.wait(stopCtx) {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		_ = wl.op(rctx, w)
		cancel()
	}
}

// pacer spaces operations evenly at a fixed rate across all request loops.
type pacer struct {
	start    time.Time
	interval float64 // ns
	n        atomic.Int64
}

func (p *pacer) wait(ctx context.Context) bool {
	k := p.n.Add(1) - 1
	d := time.Until(p.start.Add(time.Duration(float64(k) * p.interval)))
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Connect opens cfg.Conns clients to cfg.Endpoints.
func Connect(ctx context.Context, cfg Config) ([]*clientv3.Client, error) {
	cfg = cfg.withDefaults()
	var out []*clientv3.Client
	for i := 0; i < cfg.Conns; i++ {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:          cfg.Endpoints,
			DialTimeout:        cfg.DialTimeout,
			Context:            ctx,
			Logger:             zap.NewNop(),
			MaxCallSendMsgSize: 64 << 20,
			MaxCallRecvMsgSize: math.MaxInt32,
		})
		if err != nil {
			for _, o := range out {
				_ = o.Close()
			}
			return nil, fmt.Errorf("connect to %v: %w", cfg.Endpoints, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// WaitReady polls Maintenance.Status on every endpoint until each answers,
// for at most timeout.
func WaitReady(ctx context.Context, c *clientv3.Client, endpoints []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, ep := range endpoints {
		for {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := c.Status(sctx, ep)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("endpoint %s not ready after %v: %w", ep, timeout, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

// sampleLoop records the timeline and prints progress until stop closes.
func (r *run) sampleLoop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(r.cfg.SampleInterval)
	defer tick.Stop()
	lastSample := r.start
	lastProgress := r.start
	var prog *progress
	if r.cfg.Progress != nil {
		prog = &progress{w: r.cfg.Progress, tty: r.cfg.ProgressTTY}
	}
	for {
		select {
		case <-stop:
			// A last sliver of an interval gives a noisy rate: keep it only
			// when it is most of an interval or the timeline is empty.
			if now := time.Now(); now.Sub(lastSample) >= r.cfg.SampleInterval/2 || lastSample.Equal(r.start) {
				r.sample(now, lastSample)
			}
			if prog != nil {
				prog.final(r)
			}
			return
		case now := <-tick.C:
			r.sample(now, lastSample)
			lastSample = now
			if prog != nil && now.Sub(lastProgress) >= r.cfg.ProgressInterval {
				prog.update(r, now)
				lastProgress = now
			}
		}
	}
}

// sample appends one timeline point per series covering (last, now].
func (r *run) sample(now, last time.Time) {
	dt := now.Sub(last).Seconds()
	if dt <= 0 {
		return
	}
	r.mu.Lock()
	ss := append([]*series(nil), r.series...)
	r.mu.Unlock()
	for _, s := range ss {
		snap := s.hist.Snapshot()
		ok, errs := s.ok.Load(), s.errs.Load()
		d := snap.Sub(s.prevSnap)
		s.timeline = append(s.timeline, TimePoint{
			T:         now.Sub(r.start).Seconds(),
			OpsPerSec: float64(ok-s.prevOK) / dt,
			ErrPerSec: float64(errs-s.prevErr) / dt,
			P50Ms:     nsToMs(d.Percentile(0.5)),
			P99Ms:     nsToMs(d.Percentile(0.99)),
		})
		s.prevSnap, s.prevOK, s.prevErr = snap, ok, errs
	}
}

func nsToMs(ns int64) float64 { return float64(ns) / 1e6 }

// result freezes the run into a Result.
func (r *run) result() *Result {
	res := &Result{
		Label:      r.cfg.Label,
		Workload:   r.workload,
		Target:     r.cfg.Target,
		Endpoints:  r.cfg.Endpoints,
		Clients:    r.cfg.Clients,
		Conns:      r.cfg.Conns,
		Started:    r.start,
		ElapsedSec: r.elapsed.Seconds(),
		Params:     r.params,
		Counters:   map[string]int64{},
		Gauges:     r.gauges,
		Notes:      r.notes,
	}
	for k, c := range r.counters {
		res.Counters[k] = c.Load()
	}
	for _, s := range r.series {
		res.Series = append(res.Series, s.result(r.elapsed))
	}
	return res
}

func (s *series) result(elapsed time.Duration) *SeriesResult {
	snap := s.hist.Snapshot()
	out := &SeriesResult{
		Name:        s.name,
		Ops:         s.ok.Load(),
		Errors:      s.errs.Load(),
		Latency:     latencyOf(snap),
		Histogram:   snap.Coarse(10),
		Percentiles: percentileCurve(snap),
		Timeline:    s.timeline,
		snap:        snap,
	}
	if elapsed > 0 {
		out.Throughput = float64(out.Ops) / elapsed.Seconds()
	}
	s.mu.Lock()
	if len(s.byCode) > 0 {
		out.ErrorsByCode = map[string]int64{}
		out.ErrorSamples = map[string]string{}
		for k, v := range s.byCode {
			out.ErrorsByCode[k] = v
			out.ErrorSamples[k] = s.samples[k]
		}
	}
	s.mu.Unlock()
	return out
}

func latencyOf(s *HistSnapshot) Latency {
	return Latency{
		MinMs:  nsToMs(s.Min),
		AvgMs:  s.Mean() / 1e6,
		P50Ms:  nsToMs(s.Percentile(0.5)),
		P90Ms:  nsToMs(s.Percentile(0.9)),
		P99Ms:  nsToMs(s.Percentile(0.99)),
		P999Ms: nsToMs(s.Percentile(0.999)),
		MaxMs:  nsToMs(s.Max),
	}
}

// parallel runs fn(i) for i in [0,n) on at most conc goroutines and returns
// the first error; the rest stop early once one fails.
func parallel(parent context.Context, n, conc int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	var (
		next     atomic.Int64
		firstErr error
		once     sync.Once
		wg       sync.WaitGroup
	)
	if conc > n {
		conc = n
	}
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && parent.Err() != nil {
		return parent.Err()
	}
	return firstErr
}

// preload writes objects [0,n) of kg with fresh values, BatchSize per
// transaction on PreloadClients goroutines. onBatch (optional) learns each
// batch's object range and the revision it was written at.
func (r *run) preload(ctx context.Context, kg *KeyGen, n int, onBatch func(lo, hi int, rev int64)) error {
	if n <= 0 {
		return nil
	}
	bs := r.cfg.BatchSize
	batches := (n + bs - 1) / bs
	start := time.Now()
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, "[%s] preloading %d objects under %s\n", r.label(), n, kg.Prefix())
	}
	rnd := rand.New(rand.NewPCG(7, uint64(start.UnixNano())))
	val := string(newValue(r.cfg.ValSize, rnd))
	err := parallel(ctx, batches, r.cfg.PreloadClients, func(ctx context.Context, b int) error {
		lo, hi := b*bs, min((b+1)*bs, n)
		ops := make([]clientv3.Op, 0, hi-lo)
		for i := lo; i < hi; i++ {
			ops = append(ops, clientv3.OpPut(kg.Key(i), val))
		}
		var resp *clientv3.TxnResponse
		var err error
		for attempt := 0; attempt < 5; attempt++ {
			tctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
			resp, err = r.client(b).Txn(tctx).Then(ops...).Commit()
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("preload batch %d: %w", b, err)
		}
		if onBatch != nil {
			onBatch(lo, hi, resp.Header.Revision)
		}
		return nil
	})
	if err == nil && r.cfg.Progress != nil {
		el := time.Since(start)
		fmt.Fprintf(r.cfg.Progress, "[%s] preloaded %d objects in %.1fs (%.0f objects/s)\n",
			r.label(), n, el.Seconds(), float64(n)/el.Seconds())
	}
	return err
}

func (r *run) label() string {
	if r.cfg.Target != "" {
		return r.cfg.Label + " " + r.cfg.Target
	}
	return r.cfg.Label
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
