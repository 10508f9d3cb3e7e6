package robustness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A failpoint and the ways it is triggered. Terms are gofail's: panic
// crashes the process, sleep(ms) stalls, return takes the error path.
type failpoint struct {
	name  string
	modes []string // "panic", "sleep", "return"
	// atStart: hit while the process starts (set with GOFAIL_FAILPOINTS).
	atStart bool
}

// failpoints the single-node process reaches. followerBeforeApply and
// leaderStepDown need several nodes, snapshotRestoreBeforeFlush the restore
// command: see docs/failpoints.md.
var failpoints = []failpoint{
	{name: "revisionBeforeCommit", modes: []string{"panic", "sleep", "return"}},
	{name: "revisionAfterCommitBeforeAck", modes: []string{"panic", "sleep"}},
	{name: "revisionBetweenGroups", modes: []string{"panic", "sleep"}},
	{name: "compactBeforeBatch", modes: []string{"panic", "sleep", "return"}},
	{name: "compactAfterBatch", modes: []string{"panic", "sleep", "return"}},
	{name: "leaseExpiryRevoke", modes: []string{"panic", "sleep", "return"}},
	{name: "leaseRevokeApply", modes: []string{"panic", "sleep", "return"}},
	{name: "leaderBeforeServe", modes: []string{"panic", "sleep", "return"}, atStart: true},
}

// term is the gofail term for a mode; panic names the failpoint so the
// process's dying words prove which one fired.
func term(name, mode string) string {
	switch mode {
	case "sleep":
		return "sleep(300)"
	case "panic":
		return fmt.Sprintf("panic(%q)", name)
	}
	return mode
}

type profile struct {
	name     string
	duration time.Duration // traffic per run
	rounds   int           // passes over the failpoints
}

// getProfile: the tests run only when asked (make robustness), so `go test
// ./...` does not start them; short is the CI size.
func getProfile(t *testing.T) profile {
	name := os.Getenv("ROBUSTNESS_PROFILE")
	if name == "" {
		t.Skip("set ROBUSTNESS_PROFILE=short|long (make robustness) to run")
	}
	p := profile{name: name, duration: 4 * time.Second, rounds: 1}
	if name == "long" {
		// Five passes: every failpoint fires in at least ten runs (each
		// has two or three modes), about 35 minutes on 2 cores.
		p.duration, p.rounds = 20*time.Second, 5
	}
	if d := os.Getenv("ROBUSTNESS_DURATION"); d != "" {
		var err error
		if p.duration, err = time.ParseDuration(d); err != nil {
			t.Fatalf("ROBUSTNESS_DURATION: %v", err)
		}
	}
	return p
}

// harness holds one test's process, history and counters.
type harness struct {
	t        *testing.T
	n        *node
	runs     int
	crashes  int
	hits     map[string]int
	ops      int
	events   int
	watches  int
	unknown  int
	lastRev  int64 // revision the previous run ended at
	compacts atomic.Int64
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, n: newNode(t, failpointBinary(t)), hits: map[string]int{}, lastRev: 1}
	h.n.start()
	return h
}

// runTraffic runs traffic for d while inject does its work, and returns
// what the clients saw.
func (h *harness) runTraffic(d time.Duration, inject func()) *recorder {
	rec := &recorder{start: time.Now()}
	tr := &traffic{rec: rec, clients: h.n.currentClients, floor: h.n.col.last}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		tr.run(stop, 4, 6)
		close(done)
	}()
	time.Sleep(d / 3)
	inject()
	time.Sleep(d / 3)
	close(stop)
	<-done
	return rec
}

// inject triggers fp with mode during traffic and reports whether it fired.
func (h *harness) inject(fp failpoint, mode string, d time.Duration) bool {
	n := h.n
	if fp.atStart {
		// Restart the process with the failpoint set from its start.
		n.kill()
		h.crashes++
		n.spawn(fp.name + "=" + term(fp.name, mode))
		switch mode {
		case "sleep":
			n.ready()
			c, err := n.count(fp.name)
			if err != nil {
				h.t.Errorf("%s count: %v", fp.name, err)
			}
			return c > 0
		default:
			if !n.waitExit(30 * time.Second) {
				h.t.Fatalf("%s=%s: the process did not exit", fp.name, mode)
			}
			out := n.proc.Output()
			n.start()
			h.restartCount()
			return strings.Contains(out, "failpoint panic: "+fp.name) || strings.Contains(out, "failpoint leaderBeforeServe")
		}
	}
	if err := n.failpoint(fp.name, term(fp.name, mode)); err != nil {
		h.t.Fatalf("set %s: %v", fp.name, err)
	}
	if mode == "panic" {
		if n.waitExit(3 * d) {
			out := n.proc.Output()
			h.crashes++
			n.start()
			h.restartCount()
			return strings.Contains(out, "failpoint panic: "+fp.name)
		}
		_ = n.failpoint(fp.name, "")
		return false
	}
	time.Sleep(d / 3)
	c, err := n.count(fp.name)
	if err != nil {
		h.t.Errorf("%s count: %v", fp.name, err)
	}
	if err := n.failpoint(fp.name, ""); err != nil {
		h.t.Fatalf("clear %s: %v", fp.name, err)
	}
	return c > 0
}

func (h *harness) restartCount() { h.n.restarts++ }

// currentRev reads the store's revision.
func (h *harness) currentRev() int64 {
	cli := h.n.currentClients()[0]
	for range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := cli.Get(ctx, "/readiness-probe")
		cancel()
		if err == nil {
			return resp.Header.Revision
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.t.Fatalf("cannot read the revision")
	return 0
}

// check checks one run's history and adds its counts.
func (h *harness) check(name string, rec *recorder) report {
	t := h.t
	final := h.currentRev()
	deadline := time.Now().Add(30 * time.Second)
	for h.n.col.last() < final && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var r report
	r.finalRev = final
	if b := h.n.col.brokenReason(); b != "" {
		r.fail("%s", b)
	}
	if last := h.n.col.last(); last < final {
		r.fail("history watch stuck at %d, the store is at %d", last, final)
	}
	evs, _ := checkStream(&r, "history watch", 1, h.n.col.snapshot())
	// The store keeps writing after the traffic stopped (leases expire
	// and are revoked), so the history watch may already hold revisions
	// past final. They are checked with the next run, which replays the
	// whole history again.
	for i, e := range evs {
		if e.Kv.ModRevision > final {
			evs = evs[:i]
			break
		}
	}
	s := replay(&r, evs, 2, final)
	r.events = len(evs)
	// Client list-then-watch streams.
	for i, w := range rec.watches {
		got, upTo := checkStream(&r, fmt.Sprintf("watch %d %s", i, w.prefix), w.startRev, w.resps)
		if w.compacted != 0 && w.compacted < w.startRev-1 {
			r.fail("watch %d from %d refused as compacted at %d", i, w.startRev, w.compacted)
		}
		compareWatch(&r, s, fmt.Sprintf("watch %d %s", i, w.prefix), w.prefix, w.startRev, upTo, got)
		r.watches++
	}
	// Watches from random uncompacted revisions of this run, opened now.
	h.resumeCheck(&r, s, final)
	checkOps(&r, s, rec.ops, h.lastRev, final)
	h.lastRev = final
	h.ops += r.ops
	h.unknown += r.unknown
	h.watches += r.watches
	h.events = r.events
	t.Logf("%s: %d ops (%d writes unknown), %d watches, %d events, revision %d, porcupine %v, %d violations",
		name, r.ops, r.unknown, r.watches, r.events, final, r.linearize, len(r.violations))
	return r
}

// resumeCheck opens watches from random revisions of the last run and
// compares what they deliver up to final with the history.
func (h *harness) resumeCheck(r *report, s *store, final int64) {
	cli := h.n.newClient()
	defer cli.Close()
	for range 3 {
		from := h.lastRev + 1 + rand.Int64N(max(1, final-h.lastRev))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var resps []watchResp
		compacted := false
		for resp := range cli.Watch(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV()) {
			if resp.CompactRevision != 0 {
				compacted = true
				break
			}
			resps = append(resps, watchResp{rev: resp.Header.Revision, progress: resp.IsProgressNotify(), events: eventsOf(resp)})
			if k := len(resp.Events); k > 0 && resp.Events[k-1].Kv.ModRevision >= final {
				break
			}
		}
		cancel()
		if compacted {
			continue // compacted since: allowed, nothing to compare
		}
		name := fmt.Sprintf("watch resumed from %d", from)
		got, upTo := checkStream(r, name, from, resps)
		// As for the history watch (see check): leases expire after the
		// traffic stopped, so the last response may hold a revision past
		// final (a revoke of a lease's keys, after final was read). Order
		// and atomicity were checked above on everything received; the
		// content past final is the next run's history.
		for i, e := range got {
			if e.Kv.ModRevision > final {
				got = got[:i]
				break
			}
		}
		upTo = min(upTo, final)
		if upTo < final {
			r.fail("%s: reached %d, not %d", name, upTo, final)
		}
		compareWatch(r, s, name, "/registry/", from, upTo, got)
		r.watches++
	}
}

func (h *harness) report(r report) {
	for _, v := range r.violations {
		h.t.Error(v)
	}
}

// selected reports whether ROBUSTNESS_ONLY (a comma-separated list of
// failpoint names, or name=mode) asks for this case; unset runs them all.
// It lets one failing case be rerun alone, on a fresh data dir, without
// the others' crashes in its history.
func selected(name, mode string) bool {
	only := os.Getenv("ROBUSTNESS_ONLY")
	if only == "" {
		return true
	}
	for _, f := range strings.Split(only, ",") {
		if f = strings.TrimSpace(f); f == name || f == name+"="+mode {
			return true
		}
	}
	return false
}

// TestRobustness triggers every failpoint the single-node process reaches,
// with each supported mode, under traffic, and checks each run's history.
func TestRobustness(t *testing.T) {
	p := getProfile(t)
	h := newHarness(t)
	start := time.Now()
	for round := range p.rounds {
		for _, fp := range failpoints {
			for _, mode := range fp.modes {
				if !selected(fp.name, mode) {
					continue
				}
				name := fmt.Sprintf("round %d %s=%s", round, fp.name, term(fp.name, mode))
				hit := false
				rec := h.runTraffic(p.duration, func() { hit = h.inject(fp, mode, p.duration) })
				h.runs++
				if hit {
					h.hits[fp.name+"="+mode]++
				} else {
					t.Errorf("%s: the failpoint did not fire", name)
				}
				h.report(h.check(name, rec))
			}
		}
	}
	// The store reopens after a clean stop and holds the same history.
	h.n.col.stop()
	_ = h.n.proc.Cmd.Process.Signal(os.Interrupt)
	if !h.n.waitExit(30 * time.Second) {
		t.Fatalf("axon did not stop")
	}
	h.n.start()
	rec := h.runTraffic(p.duration, func() {})
	h.report(h.check("after reopen", rec))
	t.Logf("profile %s: %d runs, %d operations checked (%d writes of unknown outcome), %d watch streams, %d history events, %d crash/restart cycles, failpoints hit: %v, in %v",
		p.name, h.runs+1, h.ops, h.unknown, h.watches, h.events, h.crashes, h.hits, time.Since(start).Round(time.Second))
}

// TestRobustnessCatchesPlantedBugs shows the checks fail: each planted bug
// (failpoint builds only) must produce violations.
func TestRobustnessCatchesPlantedBugs(t *testing.T) {
	p := getProfile(t)
	for _, bug := range []struct{ name, term string }{
		// Acks a group, then crashes before it commits.
		{"bugAckBeforeCommit", "1*return"},
		// Drops the first revision of multi-revision groups from the
		// live watch path.
		{"bugDropEvents", "return"},
	} {
		t.Run(bug.name, func(t *testing.T) {
			h := newHarness(t)
			rec := h.runTraffic(p.duration, func() {
				if err := h.n.failpoint(bug.name, bug.term); err != nil {
					t.Fatalf("%v", err)
				}
				if strings.Contains(bug.name, "Commit") {
					if !h.n.waitExit(3 * p.duration) {
						t.Fatalf("%s did not crash the process", bug.name)
					}
					h.n.start()
					return
				}
				time.Sleep(p.duration / 3)
				_ = h.n.failpoint(bug.name, "")
			})
			r := h.check(bug.name, rec)
			if len(r.violations) == 0 {
				t.Fatalf("%s: the checks found nothing", bug.name)
			}
			for i, v := range r.violations {
				if i == 8 {
					break
				}
				t.Logf("caught: %s", v)
			}
		})
	}
}
