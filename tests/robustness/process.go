package robustness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/axon-kv/axon/internal/testenv"
)

// failpointBinary returns the failpoint build: AXON_FAILPOINTS_BIN (make
// robustness builds it), else one built now with scripts/failpoints.sh build.
func failpointBinary(t *testing.T) string {
	if bin := os.Getenv("AXON_FAILPOINTS_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "axon-failpoints")
	out, err := exec.Command("../../scripts/failpoints.sh", "build", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("build-failpoints: %v\n%s", err, out)
	}
	return bin
}

// node is one `axon serve` on a fixed data dir and fixed ports, restarted
// after every crash; its clients are replaced with each process.
type node struct {
	t        *testing.T
	bin      string
	dataDir  string
	url      string
	fpAddr   string // GOFAIL_HTTP
	proc     *testenv.Process
	clients  atomic.Pointer[[]*clientv3.Client]
	col      *collector
	restarts int
}

const nClients = 4 // gRPC connections the traffic is spread over

func newNode(t *testing.T, bin string) *node {
	n := &node{t: t, bin: bin, dataDir: filepath.Join(t.TempDir(), "data"),
		url:    fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t)),
		fpAddr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		col:    &collector{}}
	t.Cleanup(func() {
		n.col.stop()
		n.closeClients()
	})
	return n
}

// spawn starts the process with failpoints (GOFAIL_FAILPOINTS syntax,
// for those hit at start) and returns without waiting.
func (n *node) spawn(failpoints string) {
	n.t.Setenv("GOFAIL_HTTP", n.fpAddr)
	n.t.Setenv("GOFAIL_FAILPOINTS", failpoints)
	// The later --listen-client-urls wins over the one StartAxonProcess
	// picks: clients and the collector keep one address across restarts.
	n.proc = testenv.StartAxonProcess(n.t, n.bin, n.dataDir, "--listen-client-urls", n.url,
		"--watch-progress-notify-interval", "300ms", "--log-level", "warn")
}

// start starts the process, waits until it serves, and (re)connects the
// clients and the history collector.
func (n *node) start() {
	n.spawn("")
	n.ready()
}

func (n *node) ready() {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n.proc.Exited() {
			n.t.Fatalf("axon exited before serving:\n%s", tail(n.proc.Output()))
		}
		cli := n.newClient()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "/readiness-probe")
		cancel()
		cli.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("axon not serving after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cs := make([]*clientv3.Client, nClients)
	for i := range cs {
		cs[i] = n.newClient()
	}
	old := n.clients.Swap(&cs)
	n.col.follow(n.newClient())
	if old != nil {
		for _, c := range *old {
			c.Close()
		}
	}
}

func (n *node) newClient() *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{n.url}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		n.t.Fatalf("client: %v", err)
	}
	return cli
}

func (n *node) closeClients() {
	if cs := n.clients.Load(); cs != nil {
		for _, c := range *cs {
			c.Close()
		}
	}
}

func (n *node) currentClients() []*clientv3.Client { return *n.clients.Load() }

// waitExit waits up to d for the process to exit.
func (n *node) waitExit(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !n.proc.Exited() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// kill is kill -9.
func (n *node) kill() {
	_ = n.proc.Cmd.Process.Kill()
	n.waitExit(10 * time.Second)
}

// failpoint sets (term != "") or clears a failpoint over GOFAIL_HTTP.
func (n *node) failpoint(name, term string) error {
	method, body := http.MethodPut, term
	if term == "" {
		method = http.MethodDelete
	}
	req, _ := http.NewRequest(method, "http://"+n.fpAddr+"/"+name, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %s %s", method, name, resp.Status, b)
	}
	return nil
}

// count is how many times the failpoint's term was evaluated in this
// process.
func (n *node) count(name string) (int, error) {
	resp, err := http.Get("http://" + n.fpAddr + "/" + name + "/count")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var c int
	_, err = fmt.Fscan(resp.Body, &c)
	return c, err
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}

// collector follows the whole keyspace with one watch from revision 1,
// resumed after every restart from the revision after the last event it
// got, so it holds the store's full history (compaction never passes it).
type collector struct {
	mu        sync.Mutex
	resps     []watchResp
	lastEvent int64
	broken    string
	cancel    context.CancelFunc
	done      chan struct{}
	cli       *clientv3.Client
}

func (c *collector) follow(cli *clientv3.Client) {
	c.stop()
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	from := c.lastEvent + 1
	c.cancel, c.done, c.cli = cancel, make(chan struct{}), cli
	done := c.done
	c.mu.Unlock()
	go func() {
		defer close(done)
		ch := cli.Watch(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV(), clientv3.WithProgressNotify())
		for resp := range ch {
			c.mu.Lock()
			if resp.CompactRevision != 0 || resp.Err() != nil {
				// The collector must never be compacted past nor
				// cancelled: the history would be incomplete.
				c.broken = fmt.Sprintf("history watch from %d ended: compacted %d, err %v", from, resp.CompactRevision, resp.Err())
				c.mu.Unlock()
				return
			}
			c.resps = append(c.resps, watchResp{rev: resp.Header.Revision, progress: resp.IsProgressNotify(), events: eventsOf(resp)})
			if k := len(resp.Events); k > 0 {
				c.lastEvent = resp.Events[k-1].Kv.ModRevision
			}
			c.mu.Unlock()
		}
	}()
}

func (c *collector) stop() {
	c.mu.Lock()
	cancel, done, cli := c.cancel, c.done, c.cli
	c.cancel, c.done, c.cli = nil, nil, nil
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
		cli.Close()
	}
}

func (c *collector) last() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastEvent
}

func (c *collector) snapshot() []watchResp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]watchResp(nil), c.resps...)
}

func (c *collector) brokenReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}
