package server_test

// Differential watch test: the seeded random KV/lease/compaction workload of
// diff_test.go runs against embedded etcd and Axon while watches are opened
// at random points on raw gRPC Watch streams (several watches multiplexed per
// stream), with random key ranges, start revisions (0, current, future, old,
// below the compaction point, negative), prev_kv, NOPUT/NODELETE filters,
// progress_notify, fragment and client-chosen or automatic watch IDs. Some
// watches are canceled by the client. At the end every watch's created
// response, exact event sequence, compaction cancellation, cancel
// acknowledgement and final progress notification are compared between the
// two servers, and each server's stream is checked for ordering invariants
// (no event at or below a revision already announced by a progress
// response). A clientv3 watch on each server also checks
// Watcher.RequestProgress answers.
//
// Timing: etcd and Axon may deliver a catching-up watcher's events at
// different times. Before anything whose outcome depends on that timing (a
// compaction, a client cancel, the final comparison) the test "settles" the
// streams: it sends progress requests until each stream answers at the
// current revision, which both servers do only once every watcher of the
// stream has been sent everything up to it. Watchers canceled by compaction
// are canceled by the test first (as clientv3 does), since a stream holding
// one never answers progress requests — in etcd as in Axon.
//
// Reproduce with the flags of diff_test.go:
//
//	go test ./server -run 'TestDifferentialWatch/memory/seed=42$' -seed=42 -diff-ops=3000 -v

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

const (
	// wdProgressInterval is the progress_notify interval of both servers.
	wdProgressInterval = 250 * time.Millisecond
	// wdNormalStreams hold watches starting at or before the current
	// revision; one more stream holds those starting in the future (a
	// stream with such a watcher answers no progress request until the
	// revision reaches its start, so it cannot be settled).
	wdNormalStreams = 3
	// wdMaxWatches bounds the raw watches of one run.
	wdMaxWatches = 80
	// wdWait bounds every wait for a server's answer.
	wdWait = 15 * time.Second
)

// wdOps is the number of operations per seed (-diff-ops overrides it).
func wdOps() int {
	if *diffOpsFlag > 0 {
		return *diffOpsFlag
	}
	if testing.Short() {
		return 800
	}
	return 2000
}

func TestDifferentialWatch(t *testing.T) {
	// etcd's progress interval is a process-wide variable: restore it.
	prev := v3rpc.GetProgressReportInterval()
	t.Cleanup(func() { v3rpc.SetProgressReportInterval(prev) })

	n := wdOps()
	for _, backend := range []string{"memory", "badger"} {
		t.Run(backend, func(t *testing.T) {
			// By default the fixed seeds are shared out between the
			// backends to keep the run short; -seed runs one on both.
			seeds := diffSeeds(t)
			if *diffSeedFlag == 0 && os.Getenv("AXON_DIFF_SEED") == "" && len(seeds) == 3 {
				if backend == "memory" {
					seeds = seeds[:2]
				} else {
					seeds = seeds[2:]
				}
			}
			for _, seed := range seeds {
				t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
					etcd := testenv.StartEtcd(t, testenv.WithEtcdMaxTxnOps(diffMaxTxnOps),
						testenv.WithEtcdProgressNotifyInterval(wdProgressInterval))
					_, axon := testenv.StartAxon(t, server.Config{Backend: backend, MaxTxnOps: diffMaxTxnOps,
						WatchProgressNotifyInterval: wdProgressInterval})
					ref := newDiffTarget(t, "etcd", etcd.Endpoints())
					cand := newDiffTarget(t, "axon/"+backend, axon.Endpoints())
					start := time.Now()
					r := newWDRun(t, seed, n, ref, cand)
					r.run()
					t.Logf("seed=%d: %d ops in %v; %s", seed, n, time.Since(start).Round(time.Millisecond), r.st)
				})
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Streams.

// wdStream is one raw gRPC Watch stream and everything it received.
type wdStream struct {
	name    string
	ws      pb.Watch_WatchClient
	mu      sync.Mutex
	log     []*pb.WatchResponse
	err     error
	wake    chan struct{}
	creates int // create requests sent
}

func newWDStream(t *testing.T, name string, cli *clientv3.Client) *wdStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ws, err := pb.NewWatchClient(cli.ActiveConnection()).Watch(ctx)
	if err != nil {
		t.Fatalf("%s: open watch stream: %v", name, err)
	}
	s := &wdStream{name: name, ws: ws, wake: make(chan struct{}, 1)}
	go func() {
		for {
			resp, err := ws.Recv()
			s.mu.Lock()
			if err != nil {
				s.err = err
			} else {
				s.log = append(s.log, resp)
			}
			s.mu.Unlock()
			select {
			case s.wake <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	return s
}

func (s *wdStream) send(req *pb.WatchRequest) error {
	return s.ws.Send(req)
}

func (s *wdStream) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.log)
}

// waitFor waits until pred, given the log, returns true, or d passes.
func (s *wdStream) waitFor(d time.Duration, pred func([]*pb.WatchResponse) bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok := pred(s.log)
		failed := s.err != nil
		s.mu.Unlock()
		if ok {
			return true
		}
		if failed {
			return false
		}
		select {
		case <-s.wake:
		case <-deadline.C:
			return false
		}
	}
}

func (s *wdStream) snapshot() ([]*pb.WatchResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log), s.err
}

func isStreamProgress(r *pb.WatchResponse) bool {
	return r.WatchId == -1 && !r.Created && !r.Canceled && len(r.Events) == 0
}

// ---------------------------------------------------------------------------
// The clientv3 watch used for Watcher.RequestProgress.

type wdClientWatch struct {
	cli    *clientv3.Client
	ctx    context.Context
	mu     sync.Mutex
	log    []clientv3.WatchResponse
	closed bool
	wake   chan struct{}
}

func newWDClientWatch(t *testing.T, cli *clientv3.Client, start int64) *wdClientWatch {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	t.Cleanup(cancel)
	c := &wdClientWatch{cli: cli, ctx: ctx, wake: make(chan struct{}, 1)}
	ch := cli.Watch(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(start), clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
	go func() {
		for wr := range ch {
			c.mu.Lock()
			c.log = append(c.log, wr)
			c.mu.Unlock()
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}()
	return c
}

func (c *wdClientWatch) waitFor(d time.Duration, pred func([]clientv3.WatchResponse) bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		ok := pred(c.log)
		closed := c.closed
		c.mu.Unlock()
		if ok {
			return true
		}
		if closed {
			return false
		}
		select {
		case <-c.wake:
		case <-deadline.C:
			return false
		}
	}
}

// ---------------------------------------------------------------------------
// The run.

type wdSide struct {
	name    string
	dt      *diffTarget
	streams []*wdStream
	cw      *wdClientWatch
}

// wdWatch is one watch as the test created it on both servers.
type wdWatch struct {
	n          int
	op         int // operation index before which it was created
	stream     int
	req        *pb.WatchCreateRequest
	kind       string // how the start revision was chosen
	curAt      int64  // current revision at creation
	compactAt  int64  // compaction point at creation
	id         [2]int64
	ok         [2]bool // created without error
	canceled   bool    // the test canceled it (after a compaction cancel, or at random)
	canceledOn [2]bool // ... on this server
	cancelHdr  [2]int64
}

func (w *wdWatch) String() string {
	return fmt.Sprintf("watch #%d (stream %d, created before op %d, start=%s, current=%d, compacted=%d): %s",
		w.n, w.stream, w.op, w.kind, w.curAt, w.compactAt, prototext.MarshalOptions{}.Format(w.req))
}

type wdStats struct {
	watches       int
	kinds         map[string]int
	failedCreates int
	compacted     int
	canceled      int
	events        int
	progressReq   int
	clientProg    int
	settles       int
	compactions   int
}

func (s wdStats) String() string {
	var ks []string
	for _, k := range slices.Sorted(maps.Keys(s.kinds)) {
		ks = append(ks, fmt.Sprintf("%s=%d", k, s.kinds[k]))
	}
	return fmt.Sprintf("watches=%d{%s} failed-creates=%d compaction-canceled=%d client-canceled=%d events-compared=%d "+
		"stream-progress-answers=%d clientv3-progress-answers=%d settles=%d compactions=%d",
		s.watches, strings.Join(ks, " "), s.failedCreates, s.compacted, s.canceled, s.events, s.progressReq, s.clientProg,
		s.settles, s.compactions)
}

type wdRun struct {
	t       *testing.T
	seed    int64
	nops    int
	g       *diffGen
	sides   [2]*wdSide
	watches []*wdWatch
	byStrm  [][]*wdWatch // per stream, in creation order
	recent  []string
	st      wdStats
	compRev []int64 // successful compactions, in order
	probs   []string
	cwStart int64
	cwOp    int
}

func newWDRun(t *testing.T, seed int64, nops int, ref, cand *diffTarget) *wdRun {
	r := &wdRun{
		t: t, seed: seed, nops: nops,
		g:      newWDGen(seed),
		byStrm: make([][]*wdWatch, wdNormalStreams+1),
		st:     wdStats{kinds: map[string]int{}},
	}
	for i, dt := range []*diffTarget{ref, cand} {
		sd := &wdSide{name: dt.name, dt: dt}
		for j := 0; j <= wdNormalStreams; j++ {
			sd.streams = append(sd.streams, newWDStream(t, fmt.Sprintf("%s stream %d", dt.name, j), dt.cli))
		}
		r.sides[i] = sd
	}
	return r
}

// newWDGen is diff_test.go's generator with its own stream of numbers (the
// watch decisions draw from it too).
func newWDGen(seed int64) *diffGen {
	return &diffGen{rnd: rand.New(rand.NewPCG(uint64(seed), 0x3a7c4)), cur: 1}
}

// problem records a discrepancy; the run goes on so that all are reported.
func (r *wdRun) problem(format string, args ...any) {
	r.probs = append(r.probs, fmt.Sprintf(format, args...))
}

func (r *wdRun) fatal(format string, args ...any) {
	r.t.Helper()
	r.report()
	r.t.Fatalf("seed=%d: "+format+"\n%s", append([]any{r.seed}, append(args, r.repro())...)...)
}

func (r *wdRun) repro() string {
	return fmt.Sprintf("reproduce: go test ./server -run '^%s$' -seed=%d -diff-ops=%d -v", runPattern(r.t.Name()), r.seed, r.nops)
}

func (r *wdRun) report() {
	r.t.Helper()
	for i, p := range r.probs {
		if i == 12 {
			r.t.Errorf("seed=%d: ... and %d more discrepancies", r.seed, len(r.probs)-i)
			break
		}
		r.t.Errorf("seed=%d: %s", r.seed, p)
	}
	if len(r.probs) > 0 {
		r.t.Errorf("%d discrepancies; successful compactions: %v\n%s", len(r.probs), r.compRev, r.repro())
	}
}

func (r *wdRun) run() {
	t := r.t
	// Setup as in runDiff: two leases exist from the start.
	for i, id := range diffLeases[:2] {
		r.exec(i-2, "setup", diffOp{grant: id})
	}
	for i := 0; i < r.nops; i++ {
		r.g.seq = i
		if len(r.watches) < wdMaxWatches && r.g.chance(4) {
			r.openWatch(i)
		}
		if r.g.chance(1) {
			r.cancelRandom()
		}
		if i == r.nops/5 {
			r.openClientWatch(i)
		}
		if i%250 == 249 {
			r.progressCheck(i)
		}
		var op diffOp
		var kind string
		if r.g.chance(1) {
			op, kind = diffOp{compact: r.g.compactRev(), physical: r.g.chance(50)}, "compact"
		} else {
			for op, kind = r.g.next(); kind == "get"; op, kind = r.g.next() {
			}
		}
		if op.compact != 0 {
			r.settleAll(fmt.Sprintf("before compaction at op %d", i))
		}
		resp := r.exec(i, kind, op)
		if resp.Compact != nil {
			r.compRev = append(r.compRev, op.compact)
			r.st.compactions++
		}
	}
	r.settleAll("at the end")
	r.settleFuture()
	r.waitFinalProgress()
	r.compare()
	r.report()
	if testing.Verbose() {
		t.Logf("successful compactions: %v", r.compRev)
	}
}

// exec runs op on both servers; a different answer ends the run (every
// later revision would differ too).
func (r *wdRun) exec(i int, kind string, op diffOp) nResp {
	var a, b nResp
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a = r.sides[0].dt.exec(op) }()
	go func() { defer wg.Done(); b = r.sides[1].dt.exec(op) }()
	wg.Wait()
	if !cmp.Equal(a, b) {
		m := &diffMismatch{test: r.t.Name(), seed: r.seed, index: i, nops: r.nops, what: kind, req: op.String(),
			refName: r.sides[0].name, candName: r.sides[1].name, ref: a, cand: b, recent: slices.Clone(r.recent)}
		r.report()
		r.t.Fatal(m)
	}
	r.g.observe(op, a)
	r.recent = append(r.recent, fmt.Sprintf("#%d %s -> %s", i, op, strings.TrimSpace(strings.SplitN(a.String(), "\n", 2)[0])))
	if len(r.recent) > 8 {
		r.recent = r.recent[1:]
	}
	return a
}

// genWatch chooses a watch request and its stream.
func (r *wdRun) genWatch(i int) *wdWatch {
	g := r.g
	w := &wdWatch{n: len(r.watches), op: i, curAt: g.cur, compactAt: g.compacted}
	req := &pb.WatchCreateRequest{}
	if g.chance(3) {
		req.Key, req.RangeEnd = nil, []byte{0} // empty key: etcd reads it as "\x00"
	} else {
		k, e := g.keyRange(12)
		req.Key, req.RangeEnd = []byte(k), bytesOrNil(e)
	}
	cur, comp := g.cur, g.compacted
	switch n := g.intn(100); {
	case n < 22:
		w.kind = "0"
	case n < 32:
		w.kind, req.StartRevision = "current", cur
	case n < 42:
		w.kind, req.StartRevision = "future", cur+1+int64(g.intn(3))
	case n < 47:
		w.kind, req.StartRevision = "one", 1
	case n < 80:
		lo := max(comp, 1)
		w.kind, req.StartRevision = "old", lo+int64(g.intn(int(cur-lo+1)))
	case n < 85 && comp > 0:
		w.kind, req.StartRevision = "at-compaction", comp
	case n < 97 && comp > 1:
		w.kind, req.StartRevision = "compacted", 1+int64(g.intn(int(comp-1)))
	case n < 97:
		w.kind, req.StartRevision = "one", 1
	default:
		w.kind, req.StartRevision = "negative", -1-int64(g.intn(3))
	}
	if req.StartRevision == 1 && comp > 1 {
		w.kind = "compacted"
	}
	req.PrevKv = g.chance(50)
	if g.chance(15) {
		req.Filters = append(req.Filters, pb.WatchCreateRequest_NOPUT)
	}
	if g.chance(15) {
		req.Filters = append(req.Filters, pb.WatchCreateRequest_NODELETE)
	}
	req.ProgressNotify = g.chance(35)
	req.Fragment = g.chance(10)
	if g.chance(35) {
		req.WatchId = 1 + int64(g.intn(12)) // may collide with a live watch: etcd refuses it
	}
	if req.StartRevision > cur {
		w.stream = wdNormalStreams
	} else {
		w.stream = g.intn(wdNormalStreams)
	}
	w.req = req
	return w
}

func (r *wdRun) openWatch(i int) {
	w := r.genWatch(i)
	r.watches = append(r.watches, w)
	r.byStrm[w.stream] = append(r.byStrm[w.stream], w)
	r.st.watches++
	r.st.kinds[w.kind]++
	var created [2]*pb.WatchResponse
	for side, sd := range r.sides {
		s := sd.streams[w.stream]
		s.creates++
		if err := s.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: w.req}}); err != nil {
			r.fatal("%s: send watch create: %v", s.name, err)
		}
		want := s.creates
		ok := s.waitFor(wdWait, func(log []*pb.WatchResponse) bool {
			n := 0
			for _, resp := range log {
				if resp.Created {
					n++
					if n == want {
						created[side] = resp
						return true
					}
				}
			}
			return false
		})
		if !ok {
			_, err := s.snapshot()
			r.fatal("%s: no created response within %v for %s (stream error: %v)", s.name, wdWait, w, err)
		}
		w.id[side] = created[side].WatchId
		w.ok[side] = !created[side].Canceled
	}
	a, b := wdNormCreated(created[0]), wdNormCreated(created[1])
	if a != b {
		r.problem("created response differs for %s:\n  %s: %+v\n  %s: %+v", w, r.sides[0].name, a, r.sides[1].name, b)
	}
	if !w.ok[0] {
		r.st.failedCreates++
	}
}

type wdCreated struct {
	ID       int64
	Rev      int64
	Canceled bool
	Reason   string
	Compact  int64
}

func wdNormCreated(c *pb.WatchResponse) wdCreated {
	return wdCreated{ID: c.WatchId, Rev: hdrRev(c.Header), Canceled: c.Canceled, Reason: c.CancelReason, Compact: c.CompactRevision}
}

// active reports whether w is still watching on side (created, not
// canceled by the test).
func (r *wdRun) active(w *wdWatch, side int) bool {
	return w.ok[side] && !w.canceledOn[side]
}

// compactCanceled returns the watches of stream si that server side has
// canceled by compaction and the test has not canceled there yet.
func (r *wdRun) compactCanceled(si, side int) []*wdWatch {
	var out []*wdWatch
	log, _ := r.sides[side].streams[si].snapshot()
	// Watch IDs are reused after a cancel: a response belongs to the watch
	// whose created response last announced its ID.
	cur := map[int64]*wdWatch{}
	k := 0
	for _, resp := range log {
		switch {
		case resp.Created:
			if k < len(r.byStrm[si]) {
				cur[resp.WatchId] = r.byStrm[si][k]
			}
			k++
		case resp.Canceled && resp.CompactRevision != 0:
			if w := cur[resp.WatchId]; w != nil && r.active(w, side) && !slices.Contains(out, w) {
				out = append(out, w)
			}
		}
	}
	return out
}

// cancel sends a cancel request for w to the given servers and waits for
// the acknowledgements (a compaction-canceled watch is still registered
// until the client cancels it, in etcd as in Axon).
func (r *wdRun) cancel(w *wdWatch, why string, sides ...int) {
	w.canceled = true
	for _, side := range sides {
		sd := r.sides[side]
		if !w.ok[side] || w.canceledOn[side] {
			continue
		}
		w.canceledOn[side] = true
		s := sd.streams[w.stream]
		mark := s.len()
		id := w.id[side]
		if err := s.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}}); err != nil {
			r.fatal("%s: send cancel: %v", s.name, err)
		}
		ok := s.waitFor(5*time.Second, func(log []*pb.WatchResponse) bool {
			for _, resp := range log[mark:] {
				if resp.WatchId == id && resp.Canceled && !resp.Created && resp.CompactRevision == 0 {
					w.cancelHdr[side] = hdrRev(resp.Header)
					return true
				}
			}
			return false
		})
		if !ok {
			r.problem("%s: no cancel acknowledgement (%s) within 5s for %s", s.name, why, w)
		}
	}
	if len(sides) == 2 && w.ok[0] && w.ok[1] && w.cancelHdr[0] != w.cancelHdr[1] {
		r.problem("cancel acknowledgement header revision differs for %s: %s %d, %s %d",
			w, r.sides[0].name, w.cancelHdr[0], r.sides[1].name, w.cancelHdr[1])
	}
}

// settleStream waits until stream si of every server has sent everything up
// to the current revision, by asking for progress until the answer comes.
func (r *wdRun) settleStream(si int, why string) {
	r.st.settles++
	for side, sd := range r.sides {
		s := sd.streams[si]
		deadline := time.Now().Add(wdWait)
		for {
			for _, w := range r.compactCanceled(si, side) {
				r.cancel(w, "after its compaction cancel", side)
			}
			n := 0
			for _, w := range r.byStrm[si] {
				if r.active(w, side) {
					n++
				}
			}
			if n == 0 {
				break // no watcher: nothing to wait for (and no answer comes)
			}
			mark := s.len()
			if err := s.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}); err != nil {
				r.fatal("%s: send progress request: %v", s.name, err)
			}
			var got int64 = -1
			s.waitFor(150*time.Millisecond, func(log []*pb.WatchResponse) bool {
				for _, resp := range log[mark:] {
					if isStreamProgress(resp) {
						got = hdrRev(resp.Header)
						return true
					}
				}
				return false
			})
			if got >= 0 {
				r.st.progressReq++
				if got != r.g.cur {
					r.problem("%s: progress request (%s) answered at revision %d, current revision is %d", s.name, why, got, r.g.cur)
				}
				break
			}
			if time.Now().After(deadline) {
				r.fatal("%s: progress request (%s) not answered within %v; %d active watches on the stream",
					s.name, why, wdWait, n)
			}
		}
	}
}

func (r *wdRun) settleAll(why string) {
	for si := 0; si < wdNormalStreams; si++ {
		r.settleStream(si, why)
	}
	if r.sides[0].cw != nil {
		r.clientProgress(why)
	}
}

// settleFuture settles the future stream if every watcher on it has
// reached its start revision; otherwise it gives live delivery a moment.
func (r *wdRun) settleFuture() {
	for _, w := range r.byStrm[wdNormalStreams] {
		if r.active(w, 0) && w.req.StartRevision > r.g.cur {
			time.Sleep(300 * time.Millisecond)
			return
		}
	}
	r.settleStream(wdNormalStreams, "at the end (future stream)")
}

// cancelRandom cancels a random active watch on a normal stream, once that
// stream has been settled (so both servers have sent the same events).
func (r *wdRun) cancelRandom() {
	var cands []*wdWatch
	for _, w := range r.watches {
		if w.stream < wdNormalStreams && r.active(w, 0) && r.active(w, 1) && !w.canceled {
			cands = append(cands, w)
		}
	}
	if len(cands) == 0 {
		return
	}
	w := cands[r.g.intn(len(cands))]
	r.settleStream(w.stream, "before a cancel")
	if w.canceled { // canceled after a compaction meanwhile
		return
	}
	r.cancel(w, "client cancel", 0, 1)
	r.st.canceled++
}

// openClientWatch starts the clientv3 watch on every key from a past
// revision and asks for progress at once (answered once caught up).
func (r *wdRun) openClientWatch(i int) {
	r.cwOp = i
	r.cwStart = max(r.g.compacted, 1)
	for _, sd := range r.sides {
		sd.cw = newWDClientWatch(r.t, sd.dt.cli, r.cwStart)
		ok := sd.cw.waitFor(wdWait, func(log []clientv3.WatchResponse) bool {
			return len(log) > 0 && log[0].Created
		})
		if !ok {
			r.fatal("%s: clientv3 watch from revision %d not created", sd.name, r.cwStart)
		}
	}
	r.clientProgress("right after the clientv3 watch was created")
}

// clientProgress calls Watcher.RequestProgress on each server until it
// answers; both must answer at the current revision.
func (r *wdRun) clientProgress(why string) {
	var got [2]int64
	for side, sd := range r.sides {
		c := sd.cw
		deadline := time.Now().Add(wdWait)
		for got[side] == 0 {
			c.mu.Lock()
			mark := len(c.log)
			c.mu.Unlock()
			if err := c.cli.RequestProgress(c.ctx); err != nil {
				r.fatal("%s: RequestProgress: %v", sd.name, err)
			}
			c.waitFor(150*time.Millisecond, func(log []clientv3.WatchResponse) bool {
				for _, wr := range log[mark:] {
					if wr.IsProgressNotify() {
						got[side] = wr.Header.Revision
						return true
					}
				}
				return false
			})
			if got[side] == 0 && time.Now().After(deadline) {
				r.fatal("%s: clientv3 RequestProgress (%s) not answered within %v", sd.name, why, wdWait)
			}
		}
		r.st.clientProg++
	}
	if got[0] != got[1] || got[0] != r.g.cur {
		r.problem("clientv3 RequestProgress (%s): %s answered revision %d, %s %d; current revision %d",
			why, r.sides[0].name, got[0], r.sides[1].name, got[1], r.g.cur)
	}
}

func (r *wdRun) progressCheck(i int) {
	if r.sides[0].cw != nil {
		r.clientProgress(fmt.Sprintf("after op %d", i))
	}
	r.settleStream(r.g.intn(wdNormalStreams), fmt.Sprintf("after op %d", i))
}

// ---------------------------------------------------------------------------
// What each watch received.

type wdEvent struct {
	Type string
	KV   nKV
	Prev *nKV
}

func (e wdEvent) String() string {
	s := fmt.Sprintf("%s %s", e.Type, e.KV)
	if e.Prev != nil {
		s += " prev=" + e.Prev.String()
	}
	return s
}

// wdObs is what one server sent for one watch.
type wdObs struct {
	created   *pb.WatchResponse
	events    []*mvccpb.Event
	compact   *pb.WatchResponse
	cancelAck *pb.WatchResponse
	lastProg  int64 // header revision of the last per-watch progress notification with no event after it
	floor     int64 // highest revision announced as complete for this watch
	trace     []string
}

// collect attributes one server's responses on stream si to its watches and
// checks the stream's invariants, telling report what is wrong.
func (r *wdRun) collect(side, si int, report func(format string, args ...any)) map[*wdWatch]*wdObs {
	sd := r.sides[side]
	s := sd.streams[si]
	log, err := s.snapshot()
	if err != nil {
		report("%s: stream failed: %v", s.name, err)
	}
	obs := map[*wdWatch]*wdObs{}
	for _, w := range r.byStrm[si] {
		obs[w] = &wdObs{}
	}
	cur := map[int64]*wdWatch{}
	k := 0
	for pos, resp := range log {
		switch {
		case resp.Created:
			if k >= len(r.byStrm[si]) {
				report("%s: unexpected created response #%d: %v", s.name, pos, resp)
				continue
			}
			w := r.byStrm[si][k]
			k++
			obs[w].created = resp
			obs[w].trace = append(obs[w].trace, fmt.Sprintf("#%d %s", pos, shortResp(resp)))
			if !resp.Canceled {
				cur[resp.WatchId] = w
			}
		case isStreamProgress(resp):
			// Everything up to this revision has been sent for every
			// watcher of the stream.
			for _, w := range cur {
				obs[w].floor = max(obs[w].floor, hdrRev(resp.Header))
			}
		default:
			w := cur[resp.WatchId]
			if w == nil {
				report("%s: response #%d for unknown or canceled watch ID %d: %v", s.name, pos, resp.WatchId, shortResp(resp))
				continue
			}
			o := obs[w]
			o.trace = append(o.trace, fmt.Sprintf("#%d %s", pos, shortResp(resp)))
			switch {
			case resp.Canceled && resp.CompactRevision != 0:
				o.compact = resp
			case resp.Canceled:
				if resp.CancelReason != "" {
					report("%s: %s canceled by the server: %q", s.name, w, resp.CancelReason)
				}
				o.cancelAck = resp
				delete(cur, resp.WatchId)
			case len(resp.Events) == 0:
				rev := hdrRev(resp.Header)
				o.floor = max(o.floor, rev)
				o.lastProg = rev
				if !w.req.ProgressNotify {
					report("%s: progress notification (revision %d) for a watch without progress_notify: %s", s.name, rev, w)
				}
			default:
				o.lastProg = 0
				for _, ev := range resp.Events {
					mod := ev.Kv.GetModRevision()
					if mod <= o.floor {
						report("%s: event at revision %d after a progress notification at revision %d for %s", s.name, mod, o.floor, w)
					}
					if n := len(o.events); n > 0 && o.events[n-1].Kv.GetModRevision() > mod {
						report("%s: events out of order (%d after %d) for %s", s.name, mod, o.events[n-1].Kv.GetModRevision(), w)
					}
					if w.req.StartRevision > 0 && mod < w.req.StartRevision || w.req.StartRevision == 0 && mod <= w.curAt {
						report("%s: event at revision %d before the start of %s", s.name, mod, w)
					}
					o.events = append(o.events, ev)
				}
			}
		}
	}
	return obs
}

func shortResp(r *pb.WatchResponse) string {
	return fmt.Sprintf("{id=%d rev=%d created=%v canceled=%v compact=%d reason=%q events=%d}",
		r.WatchId, hdrRev(r.Header), r.Created, r.Canceled, r.CompactRevision, r.CancelReason, len(r.Events))
}

func (r *wdRun) normEvents(w *wdWatch, evs []*mvccpb.Event) []wdEvent {
	out := make([]wdEvent, 0, len(evs))
	for _, ev := range evs {
		e := wdEvent{Type: ev.Type.String(), KV: normKV(ev.Kv)}
		if w.req.PrevKv && ev.PrevKv != nil {
			p := normKV(ev.PrevKv)
			e.Prev = &p
		}
		out = append(out, e)
	}
	return out
}

// wantFinalProgress is the revision of the last progress notification an
// idle progress_notify watcher must have been sent once the run is over (0:
// none, its start revision is not reached), or -1 when it is not checked.
func (r *wdRun) wantFinalProgress(w *wdWatch) int64 {
	if !w.req.ProgressNotify || !w.ok[0] || !w.ok[1] || w.canceled {
		return -1
	}
	if w.req.StartRevision > r.g.cur {
		return 0
	}
	return r.g.cur
}

// waitFinalProgress gives the periodic progress notifications of the idle
// watchers a few intervals to arrive (it returns early once all have).
func (r *wdRun) waitFinalProgress() {
	nop := func(string, ...any) {}
	deadline := time.Now().Add(20 * wdProgressInterval)
	time.Sleep(2 * wdProgressInterval)
	for time.Now().Before(deadline) {
		done := true
		for si := 0; si <= wdNormalStreams && done; si++ {
			for side := range r.sides {
				obs := r.collect(side, si, nop)
				for _, w := range r.byStrm[si] {
					if want := r.wantFinalProgress(w); want > 0 && obs[w].compact == nil && obs[w].lastProg != want {
						done = false
					}
				}
			}
		}
		if done {
			return
		}
		time.Sleep(wdProgressInterval / 2)
	}
}

func (r *wdRun) compare() {
	for si := 0; si <= wdNormalStreams; si++ {
		a, b := r.collect(0, si, r.problem), r.collect(1, si, r.problem)
		for _, w := range r.byStrm[si] {
			r.compareWatch(w, a[w], b[w])
		}
	}
	r.compareClientWatch()
}

func (r *wdRun) compareWatch(w *wdWatch, a, b *wdObs) {
	names := [2]string{r.sides[0].name, r.sides[1].name}
	if a.created == nil || b.created == nil {
		r.problem("missing created response for %s", w)
		return
	}
	// Axon must not send prev_kv to watchers that did not ask for it.
	// (etcd sometimes does: it fills prev_kv into event objects shared
	// between watchers, so it is ignored on the etcd side.)
	if !w.req.PrevKv {
		for _, ev := range b.events {
			if ev.PrevKv != nil {
				r.problem("%s sent prev_kv (event at revision %d) to %s", names[1], ev.Kv.ModRevision, w)
				break
			}
		}
	}
	ea, eb := r.normEvents(w, a.events), r.normEvents(w, b.events)
	r.st.events += len(ea)
	if d := cmp.Diff(ea, eb); d != "" {
		r.problem("event sequence differs for %s\n%s", w, wdEventDiff(names, ea, eb))
	}
	var ca, cb int64
	if a.compact != nil {
		ca = a.compact.CompactRevision
	}
	if b.compact != nil {
		cb = b.compact.CompactRevision
	}
	if ca != cb {
		r.problem("compaction cancel differs for %s: %s compact_revision=%d, %s compact_revision=%d\n  %s responses: %s\n  %s responses: %s",
			w, names[0], ca, names[1], cb, names[0], strings.Join(a.trace, " "), names[1], strings.Join(b.trace, " "))
	} else if a.compact != nil && hdrRev(a.compact.Header) != hdrRev(b.compact.Header) {
		r.problem("compaction cancel header revision differs for %s: %s %d, %s %d", w, names[0], hdrRev(a.compact.Header), names[1], hdrRev(b.compact.Header))
	}
	if a.compact != nil {
		r.st.compacted++
	}
	if w.canceled && w.ok[0] && w.ok[1] && (a.cancelAck == nil) != (b.cancelAck == nil) {
		r.problem("cancel acknowledgement: %s %v, %s %v for %s", names[0], a.cancelAck != nil, names[1], b.cancelAck != nil, w)
	}
	// Final progress notification: an idle, active progress_notify watcher
	// whose start has been reached is told the final revision.
	if want := r.wantFinalProgress(w); want >= 0 && a.compact == nil && b.compact == nil {
		for i, o := range []*wdObs{a, b} {
			if o.lastProg != want {
				r.problem("%s: last progress notification for %s is at revision %d (0 = none after the last event), want %d",
					names[i], w, o.lastProg, want)
			}
		}
	}
}

func wdEventDiff(names [2]string, a, b []wdEvent) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "  %s sent %d events, %s sent %d\n", names[0], len(a), names[1], len(b))
	i := 0
	for i < len(a) && i < len(b) && cmp.Equal(a[i], b[i]) {
		i++
	}
	fmt.Fprintf(&sb, "  first difference at event %d:\n", i)
	for j := max(0, i-2); j < i+3; j++ {
		var x, y string
		if j < len(a) {
			x = a[j].String()
		}
		if j < len(b) {
			y = b[j].String()
		}
		mark := " "
		if x != y {
			mark = "!"
		}
		fmt.Fprintf(&sb, "  %s [%d] %s: %s\n  %s [%d] %s: %s\n", mark, j, names[0], x, mark, j, names[1], y)
	}
	return sb.String()
}

// compareClientWatch compares the clientv3 watch's events.
func (r *wdRun) compareClientWatch() {
	if r.sides[0].cw == nil {
		return
	}
	var evs [2][]wdEvent
	for side, sd := range r.sides {
		c := sd.cw
		c.mu.Lock()
		floor := int64(0)
		for _, wr := range c.log {
			if wr.Canceled {
				r.problem("%s: clientv3 watch canceled: compact_revision=%d err=%v", sd.name, wr.CompactRevision, wr.Err())
			}
			if wr.IsProgressNotify() {
				floor = max(floor, wr.Header.Revision)
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision <= floor {
					r.problem("%s: clientv3 watch: event at revision %d after progress at %d", sd.name, ev.Kv.ModRevision, floor)
				}
				e := wdEvent{Type: ev.Type.String(), KV: normKV(ev.Kv)}
				if ev.PrevKv != nil {
					p := normKV(ev.PrevKv)
					e.Prev = &p
				}
				evs[side] = append(evs[side], e)
			}
		}
		c.mu.Unlock()
	}
	r.st.events += len(evs[0])
	if !cmp.Equal(evs[0], evs[1]) {
		r.problem("clientv3 watch (every key, from revision %d, prev_kv, opened before op %d) events differ\n%s",
			r.cwStart, r.cwOp, wdEventDiff([2]string{r.sides[0].name, r.sides[1].name}, evs[0], evs[1]))
	}
}
