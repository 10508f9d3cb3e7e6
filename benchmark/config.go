package benchmark

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Config is one benchmark run: where, how hard, how long, and the
// workload's own parameters. Zero fields take the defaults of
// (*Config).withDefaults, listed with each field.
type Config struct {
	// Endpoints are the etcd v3 endpoints (host:port or http://host:port).
	Endpoints []string
	// Target names the endpoint set in reports (e.g. "axon", "etcd").
	Target string

	// Clients is the number of concurrent request loops (default 50).
	Clients int
	// Conns is the number of gRPC connections (clientv3 clients) the
	// request loops are spread over, round-robin (default Clients/6, at
	// least 1: kube-apiserver opens one etcd client per resource type, and
	// one shared connection would flatter the server under test).
	Conns int
	// Total bounds the number of operations; Duration bounds the time. When
	// both are set the run stops at whichever comes first; when neither is,
	// Duration is 10 s.
	Total    int64
	Duration time.Duration
	// Rate limits operations per second across all clients; 0 is unlimited.
	Rate float64
	// Timeout bounds each request (default 30 s); DialTimeout each dial and
	// the readiness wait (default 10 s).
	Timeout     time.Duration
	DialTimeout time.Duration

	// KeySize and ValSize are byte sizes of keys and values (70, 512).
	KeySize int
	ValSize int
	// KeySpace is the number of distinct objects: get and update preload this
	// many (default 1000); create wraps around after this many (default 0,
	// no wrap, every create is a new key).
	KeySpace int
	// Namespaces is the number of namespaces keys are spread over (100).
	Namespaces int

	// Consistency of get: "l" linearizable (default) or "s" serializable.
	Consistency string
	// MaxRetries bounds GuaranteedUpdate conflict retries (default 10).
	MaxRetries int

	// Objects is the number of objects list preloads and memory loads
	// (default 10000).
	Objects int
	// PageLimit is list's page size (default 500; 0 after defaults is never
	// used; set Unpaginated for one-shot lists).
	PageLimit   int64
	Unpaginated bool

	// Watchers watch WatchPrefixes namespace prefixes (defaults 1000 and
	// 100) over WatchStreams gRPC streams per connection (default 10);
	// after writers stop, events still in flight are awaited for at most
	// WatchGrace (default 3 s).
	Watchers      int
	WatchPrefixes int
	WatchStreams  int
	WatchGrace    time.Duration

	// LeaseTTL is the TTL (s) of leases the lease workload grants (60),
	// KeysPerLease the keys attached to each (1). ExpireLeases leases of
	// ExpireTTL seconds (defaults 20 and 2) are left to expire at the end
	// and their keys' deletion is timed; a negative ExpireLeases skips that.
	LeaseTTL     int64
	KeysPerLease int
	ExpireLeases int
	ExpireTTL    int64

	// Mix is the mixed workload's ratio, e.g. "get=50,update=35,create=10,list=5".
	Mix string

	// BatchSize is how many puts one preload or memory-load transaction
	// carries (default 100), PreloadClients how many of them run at once
	// (default 16).
	BatchSize      int
	PreloadClients int

	// Memory workload: the server's process id (for resident memory) and
	// data directory (for its size on disk), both optional. Unless NoCompact,
	// the store is compacted to its head revision before measuring; Defrag
	// also defragments it (etcd's file shrinks only then). Settle is the
	// pause before measuring (default 2 s).
	Pid       int
	DataDir   string
	NoCompact bool
	Defrag    bool
	Settle    time.Duration

	// Progress receives live progress; nil is silent. ProgressTTY draws a
	// bar redrawn in place instead of periodic lines.
	Progress         io.Writer
	ProgressTTY      bool
	ProgressInterval time.Duration
	// SampleInterval is the resolution of the throughput timeline
	// (default 250 ms).
	SampleInterval time.Duration

	// Label names the run in progress output and reports (default: the
	// workload name).
	Label string
}

// withDefaults returns c with every zero field given its default.
func (c Config) withDefaults() Config {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.Clients, 50)
	def(&c.Conns, DefaultConns(c.Clients))
	def(&c.KeySize, 70)
	def(&c.ValSize, 512)
	def(&c.Namespaces, 100)
	def(&c.MaxRetries, 10)
	def(&c.Objects, 10000)
	def(&c.Watchers, 1000)
	def(&c.WatchPrefixes, 100)
	def(&c.WatchStreams, 10)
	def(&c.KeysPerLease, 1)
	def(&c.ExpireLeases, 20)
	def(&c.BatchSize, 100)
	def(&c.PreloadClients, 16)
	if c.Total == 0 && c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.Consistency == "" {
		c.Consistency = "l"
	}
	if c.PageLimit == 0 {
		c.PageLimit = 500
	}
	if c.WatchGrace == 0 {
		c.WatchGrace = 3 * time.Second
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 60
	}
	if c.ExpireTTL == 0 {
		c.ExpireTTL = 2
	}
	if c.Mix == "" {
		c.Mix = DefaultMix
	}
	if c.Settle == 0 {
		c.Settle = 2 * time.Second
	}
	if c.ProgressInterval == 0 {
		if c.ProgressTTY {
			c.ProgressInterval = 500 * time.Millisecond
		} else {
			c.ProgressInterval = 5 * time.Second
		}
	}
	if c.SampleInterval == 0 {
		c.SampleInterval = 250 * time.Millisecond
	}
	return c
}

// DefaultConns is the number of gRPC connections the request loops are
// spread over when Conns is not given: one per 6 clients, at least 1.
func DefaultConns(clients int) int {
	return max(clients/6, 1)
}

// DefaultMix is a kube-apiserver-like blend: mostly reads and
// GuaranteedUpdates (status and heartbeat writes), some creates, a few lists.
const DefaultMix = "get=50,update=35,create=10,list=5"

func (c Config) validate(workload string) error {
	switch {
	case len(c.Endpoints) == 0:
		return fmt.Errorf("no endpoints")
	case c.Clients < 1 || c.Conns < 1:
		return fmt.Errorf("clients and conns must be at least 1")
	case c.Total < 0 || c.Duration < 0 || c.Rate < 0:
		return fmt.Errorf("total, duration and rate must not be negative")
	case c.KeySize < 1 || c.ValSize < 0:
		return fmt.Errorf("key size must be positive and value size not negative")
	case c.KeySpace < 0:
		return fmt.Errorf("key space must not be negative")
	case c.Consistency != "l" && c.Consistency != "s":
		return fmt.Errorf("consistency must be l or s, not %q", c.Consistency)
	case c.PageLimit < 0:
		return fmt.Errorf("page limit must not be negative")
	case c.BatchSize < 1 || c.BatchSize > 128:
		return fmt.Errorf("batch size must be 1..128 (etcd's default --max-txn-ops)")
	}
	if workload == "watch" || workload == "mixed" {
		if c.ValSize < stampLen {
			return fmt.Errorf("watch needs values of at least %d bytes to carry a send time", stampLen)
		}
	}
	if workload == "watch" && (c.Watchers < 0 || c.WatchPrefixes < 1 || c.WatchStreams < 1) {
		return fmt.Errorf("watchers must not be negative; prefixes and streams must be positive")
	}
	return nil
}

// parseMix reads "name=weight,..." into sorted names and weights.
func parseMix(s string) ([]string, []int, error) {
	m := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, ok := strings.Cut(part, "=")
		if !ok {
			return nil, nil, fmt.Errorf("mix: %q is not name=weight", part)
		}
		n, err := strconv.Atoi(w)
		if err != nil || n < 0 {
			return nil, nil, fmt.Errorf("mix: weight of %q must be a non-negative integer", name)
		}
		switch name {
		case "get", "update", "create", "list":
		default:
			return nil, nil, fmt.Errorf("mix: unknown operation %q (get, update, create, list)", name)
		}
		m[name] += n
	}
	var names []string
	for k, v := range m {
		if v > 0 {
			names = append(names, k)
		}
	}
	if len(names) == 0 {
		return nil, nil, fmt.Errorf("mix: no operation with a positive weight")
	}
	sort.Strings(names)
	weights := make([]int, len(names))
	for i, n := range names {
		weights[i] = m[n]
	}
	return names, weights, nil
}
