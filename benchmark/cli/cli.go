// Package cli is the command line of the benchmark: `axon bench ...` and the
// standalone axon-bench binary both mount NewCommand.
package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/axon-kv/axon/benchmark"
	"github.com/axon-kv/axon/benchmark/nullserver"
)

// NewCommand returns the benchmark command tree, named use ("bench" under
// axon, the binary's name standalone).
func NewCommand(use string) *cobra.Command {
	ex := use
	if use == "bench" {
		ex = "axon bench"
	}
	root := &cobra.Command{
		Use:   use,
		Short: "Benchmark an etcd v3 endpoint with kube-apiserver-shaped load",
		Long: `Benchmark any etcd v3 endpoint (Axon, etcd, or another etcd-compatible store)
with workloads shaped like kube-apiserver's, or compare several endpoints.

Workloads: create, update, get, list, watch, lease, mixed, memory, interference,
scale.
Each prints throughput, latency percentiles and errors by gRPC code; --json
prints the result as JSON instead, --html FILE writes a self-contained report.

Examples:
  ` + ex + ` create --endpoints 127.0.0.1:2379 --clients 300 --duration 10s
  ` + ex + ` get --consistency s --key-space 1000 --total 100000
  ` + ex + ` list --objects 10000 --limit 500 --html list.html
  ` + ex + ` watch --watchers 10000 --prefixes 100 --clients 10 --rate 1000
  ` + ex + ` compare --target axon=127.0.0.1:2379 --target etcd=127.0.0.1:2381 --suite standard
  ` + ex + ` null-server --listen 127.0.0.1:2399`,
		SilenceUsage: true,
	}
	for _, spec := range workloadSpecs {
		root.AddCommand(newWorkloadCmd(spec))
	}
	root.AddCommand(newCompareCmd(), newNullServerCmd(), newFreePortsCmd())
	return root
}

// common holds the flags every workload command shares.
type common struct {
	cfg      benchmark.Config
	jsonOut  bool
	htmlFile string
	quiet    bool
}

func (c *common) register(fs *pflag.FlagSet, withLoad bool) {
	cfg := &c.cfg
	fs.StringSliceVar(&cfg.Endpoints, "endpoints", []string{"127.0.0.1:2379"}, "comma-separated etcd v3 endpoints")
	fs.IntVar(&cfg.Conns, "conns", 0, "gRPC connections the clients are spread over round-robin (default: clients/6, at least 1)")
	fs.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "timeout of each request")
	fs.DurationVar(&cfg.DialTimeout, "dial-timeout", 10*time.Second, "timeout of dialing and of waiting for the endpoints to answer")
	fs.IntVar(&cfg.KeySize, "key-size", 70, "key size in bytes (/registry/<resource>/<namespace>/<name>)")
	fs.IntVar(&cfg.ValSize, "val-size", 512, "value size in bytes")
	fs.IntVar(&cfg.Namespaces, "namespaces", 100, "namespaces keys are spread over")
	fs.IntVar(&cfg.BatchSize, "batch", 100, "puts per transaction when preloading (and loading, for memory)")
	fs.IntVar(&cfg.PreloadClients, "preload-clients", 16, "concurrent preload transactions")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress output")
	if withLoad {
		fs.IntVar(&cfg.Clients, "clients", 50, "concurrent clients (request loops)")
		fs.Int64Var(&cfg.Total, "total", 0, "total operations (0: run for --duration)")
		fs.DurationVar(&cfg.Duration, "duration", 0, "how long to run (default 10s when --total is not set)")
		fs.Float64Var(&cfg.Rate, "rate", 0, "operations per second across all clients (0: unlimited)")
		fs.IntVar(&cfg.KeySpace, "key-space", 0, "distinct objects: get/update preload this many (default 1000); create wraps after this many (default: never)")
		fs.BoolVar(&c.jsonOut, "json", false, "print the result as JSON on stdout (progress still goes to stderr)")
		fs.StringVar(&c.htmlFile, "html", "", "write a self-contained HTML report to `FILE`")
	}
}

// progress sets the progress writer: stderr, redrawn in place on a terminal.
func (c *common) progress(cmd *cobra.Command) {
	if c.quiet {
		c.cfg.Progress = nil
		return
	}
	c.cfg.Progress = cmd.ErrOrStderr()
	if f, ok := c.cfg.Progress.(*os.File); ok {
		c.cfg.ProgressTTY = benchmark.IsTerminal(f)
	}
}

type workloadSpec struct {
	name, short string
	flags       func(fs *pflag.FlagSet, cfg *benchmark.Config)
}

var workloadSpecs = []workloadSpec{
	{"create", "Txn If create_revision(key)==0 Then Put: kube-apiserver's Create", nil},
	{"update", "Txn If mod_revision==X Then Put Else Get: GuaranteedUpdate with conflict retries", func(fs *pflag.FlagSet, cfg *benchmark.Config) {
		fs.IntVar(&cfg.MaxRetries, "max-retries", 10, "conflict retries before an update fails with Aborted")
	}},
	{"get", "single-object Range, linearizable or serializable", func(fs *pflag.FlagSet, cfg *benchmark.Config) {
		fs.StringVar(&cfg.Consistency, "consistency", "l", "l (linearizable) or s (serializable)")
	}},
	{"list", "paginated prefix Range at a fixed revision over preloaded objects (one page per operation)", func(fs *pflag.FlagSet, cfg *benchmark.Config) {
		fs.IntVar(&cfg.Objects, "objects", 10000, "objects to preload and list")
		fs.Int64Var(&cfg.PageLimit, "limit", 500, "page size")
		fs.BoolVar(&cfg.Unpaginated, "unpaginated", false, "list everything in one Range")
	}},
	{"watch", "watchers on namespace prefixes while clients write; delivery latency from write ack", func(fs *pflag.FlagSet, cfg *benchmark.Config) {
		fs.IntVar(&cfg.Watchers, "watchers", 1000, "watchers")
		fs.IntVar(&cfg.WatchPrefixes, "prefixes", 100, "prefixes (namespaces) the watchers are spread over")
		fs.IntVar(&cfg.WatchStreams, "streams", 10, "watch gRPC streams per connection")
		fs.DurationVar(&cfg.WatchGrace, "grace", 3*time.Second, "how long to wait for events in flight after the writers stop")
	}},
	{"lease", "grant a lease, attach keys, keep it alive once; then time lease expiry", func(fs *pflag.FlagSet, cfg *benchmark.Config) {
		fs.Int64Var(&cfg.LeaseTTL, "lease-ttl", 60, "TTL in seconds of the leases granted")
		fs.IntVar(&cfg.KeysPerLease, "keys-per-lease", 1, "keys attached to each lease")
		fs.IntVar(&cfg.ExpireLeases, "expire-leases", 20, "leases left to expire at the end (0: skip the expiry check)")
		fs.Int64Var(&cfg.ExpireTTL, "expire-ttl", 2, "TTL in seconds of the leases left to expire")
	}},
	{"mixed", "a ratio of get, update, create and list", func(fs *pflag.FlagSet, cfg *benchmark.Config) {
		fs.StringVar(&cfg.Mix, "mix", benchmark.DefaultMix, "operation weights")
		fs.StringVar(&cfg.Consistency, "consistency", "l", "consistency of gets: l or s")
		fs.IntVar(&cfg.Objects, "objects", 10000, "objects the list operations list")
		fs.Int64Var(&cfg.PageLimit, "limit", 500, "list page size")
		fs.IntVar(&cfg.MaxRetries, "max-retries", 10, "update conflict retries")
	}},
	{"memory", "load N objects, compact, then measure the server's memory and disk", func(fs *pflag.FlagSet, cfg *benchmark.Config) {
		fs.IntVar(&cfg.Objects, "objects", 100000, "objects to load")
		fs.IntVar(&cfg.Pid, "pid", 0, "server process id, for its resident memory (/proc)")
		fs.StringVar(&cfg.DataDir, "data-dir", "", "server data directory, for its size on disk")
		fs.BoolVar(&cfg.NoCompact, "no-compact", false, "do not compact before measuring")
		fs.BoolVar(&cfg.Defrag, "defrag", false, "defragment after compacting")
		fs.DurationVar(&cfg.Settle, "settle", 2*time.Second, "pause before measuring")
	}},
	{"interference", "updates while 4 clients LIST everything unpaginated (update p99 under expensive reads)", func(fs *pflag.FlagSet, cfg *benchmark.Config) {
		fs.IntVar(&cfg.Objects, "objects", 100000, "objects the unpaginated lists read")
		fs.IntVar(&cfg.MaxRetries, "max-retries", 10, "update conflict retries")
	}},
	{"scale", "create N objects one per request (kube-shaped), then measure the server's memory and disk (restart time: compare --server)", func(fs *pflag.FlagSet, cfg *benchmark.Config) {
		fs.IntVar(&cfg.Objects, "objects", 1000000, "objects to create")
		fs.IntVar(&cfg.Pid, "pid", 0, "server process id, for its resident memory (/proc)")
		fs.StringVar(&cfg.DataDir, "data-dir", "", "server data directory, for its size on disk")
		fs.DurationVar(&cfg.Settle, "settle", 2*time.Second, "pause before measuring")
	}},
}

func newWorkloadCmd(spec workloadSpec) *cobra.Command {
	c := &common{}
	cmd := &cobra.Command{
		Use:   spec.name,
		Short: spec.short,
		Args:  cobra.NoArgs,
	}
	c.register(cmd.Flags(), true)
	cmd.Flags().StringVar(&c.cfg.Target, "target", "", "name of the endpoint in reports")
	if spec.flags != nil {
		spec.flags(cmd.Flags(), &c.cfg)
	}
	switch spec.name {
	case "memory", "scale":
		// memory and scale run until their objects are loaded.
		_ = cmd.Flags().MarkHidden("total")
		_ = cmd.Flags().MarkHidden("duration")
		_ = cmd.Flags().MarkHidden("key-space")
		clients := 16
		if spec.name == "scale" {
			clients = 300
		}
		cmd.Flags().Lookup("clients").DefValue = strconv.Itoa(clients)
		c.cfg.Clients = clients
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c.progress(cmd)
		if spec.name == "lease" && c.cfg.ExpireLeases == 0 {
			c.cfg.ExpireLeases = -1 // Config's zero means the default
		}
		ctx, stop := signalContext()
		defer stop()
		res, err := benchmark.Run(ctx, spec.name, c.cfg)
		if err != nil {
			return err
		}
		if c.jsonOut {
			if err := benchmark.WriteJSON(cmd.OutOrStdout(), res); err != nil {
				return err
			}
		} else {
			res.WriteText(cmd.OutOrStdout())
		}
		if c.htmlFile != "" {
			if err := writeFile(c.htmlFile, res.WriteHTML); err != nil {
				return err
			}
			if !c.quiet {
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s\n", c.htmlFile)
			}
		}
		return nil
	}
	return cmd
}

func newCompareCmd() *cobra.Command {
	c := &common{}
	var (
		targets  []string
		servers  []string
		suite    string
		only     string
		htmlFile string
		jsonFile string
		so       benchmark.SuiteOptions
		opts     benchmark.CompareOptions
	)
	cmd := &cobra.Command{
		Use:   "compare",
		Short: "Run a suite on several targets in turn; print a side-by-side table with ratios",
		Long: `Run the same suite of workloads on each target in turn (step by step) and
print a side-by-side table with each figure as a ratio to the baseline target
(default: the one named etcd) and to the ceiling target (default: the one
named null, see null-server).

A target is name=endpoint[,endpoint...][,pid=N][,data-dir=PATH]; pid and
data-dir let the memory and scale steps measure the server's resident memory
and disk.

--server name=COMMAND makes compare start that target's server itself (the
command is split at spaces, no quoting; {data-dir} stands for the target's
data-dir), know its pid, and stop it with SIGTERM at the end. The scale step
needs it to run each server alone on a fresh data dir and to time its
restart (SIGTERM, start again on the same data dir, first linearizable Get).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.progress(cmd)
			if len(targets) == 0 {
				return fmt.Errorf("give at least one --target name=endpoint")
			}
			for _, t := range targets {
				pt, err := benchmark.ParseTarget(t)
				if err != nil {
					return err
				}
				opts.Targets = append(opts.Targets, pt)
			}
			for _, sv := range servers {
				name, command, ok := strings.Cut(sv, "=")
				argv := strings.Fields(command)
				if !ok || len(argv) == 0 {
					return fmt.Errorf("--server %q: want name=COMMAND", sv)
				}
				found := false
				for i := range opts.Targets {
					if opts.Targets[i].Name == name {
						opts.Targets[i].Command, found = argv, true
					}
				}
				if !found {
					return fmt.Errorf("--server %q: no --target named %q", sv, name)
				}
			}
			steps, err := benchmark.Suite(suite, so)
			if err != nil {
				return err
			}
			if steps, err = benchmark.FilterSteps(steps, only); err != nil {
				return err
			}
			opts.Suite, opts.Steps, opts.Base = suite, steps, c.cfg
			if !c.quiet {
				opts.Log = cmd.ErrOrStderr()
			}
			ctx, stop := signalContext()
			defer stop()
			cmp, err := benchmark.Compare(ctx, opts)
			if cmp == nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintln(out)
			cmp.WriteTable(out)
			if htmlFile != "" {
				if err := writeFile(htmlFile, cmp.WriteHTML); err != nil {
					return err
				}
				fmt.Fprintf(out, "\nHTML report: %s\n", htmlFile)
			}
			if jsonFile != "" {
				if err := writeFile(jsonFile, func(w io.Writer) error { return benchmark.WriteJSON(w, cmp) }); err != nil {
					return err
				}
				fmt.Fprintf(out, "JSON results: %s\n", jsonFile)
			}
			return err
		},
	}
	fs := cmd.Flags()
	c.register(fs, false)
	_ = fs.MarkHidden("endpoints")
	fs.StringArrayVar(&targets, "target", nil, "name=endpoint[,endpoint][,pid=N][,data-dir=PATH] (repeat for each target)")
	fs.StringArrayVar(&servers, "server", nil, "name=COMMAND: start target name's server with COMMAND ({data-dir} is its data-dir); repeat per target")
	fs.StringVar(&opts.ServerLogDir, "server-logs", "", "directory for NAME.log, the output of the servers started with --server")
	fs.BoolVar(&opts.KeepScaleData, "keep-scale-data", false, "keep the scale step's data directories (<data-dir>-scale-*, next to each data-dir)")
	fs.StringVar(&suite, "suite", "standard", "suite: "+strings.Join(benchmark.Suites, ", "))
	fs.StringVar(&only, "steps", "", "run only these steps of the suite (comma-separated, e.g. create,list)")
	fs.StringVar(&htmlFile, "html", "", "write the HTML report to `FILE`")
	fs.StringVar(&jsonFile, "json", "", "write all results as JSON to `FILE`")
	fs.StringVar(&opts.Baseline, "baseline", "", "target ratios are taken against (default: etcd, if a target is so named)")
	fs.StringVar(&opts.Ceiling, "ceiling", "", "target that marks the ceiling (default: null, if a target is so named)")
	fs.DurationVar(&opts.ReadyTimeout, "wait", 60*time.Second, "how long to wait for each target to answer")
	fs.DurationVar(&so.Duration, "duration", 10*time.Second, "duration of each timed step")
	fs.IntVar(&so.MemoryObjects, "objects", 100000, "objects the memory step loads")
	fs.IntVar(&so.ListObjects, "list-objects", 10000, "objects the list step lists (limit 500)")
	fs.IntVar(&so.Watchers, "watchers", 10000, "watchers in the watch step")
	fs.IntVar(&so.WatchPrefixes, "watch-prefixes", 100, "prefixes the watchers are spread over")
	fs.Float64Var(&so.WatchRate, "watch-rate", 0, "writes per second in the watch step (0: as fast as 10 writers go)")
	fs.IntVar(&so.InterferenceObjects, "interference-objects", 100000, "objects the interference step lists unpaginated (suite full)")
	fs.IntVar(&so.ScaleObjects, "scale-objects", 1000000, "objects the scale step creates, one per request")
	fs.IntVar(&so.ScaleClients, "scale-clients", 300, "clients creating them (over clients/6 connections unless --conns)")
	return cmd
}

func newNullServerCmd() *cobra.Command {
	var (
		listen string
		opts   nullserver.Options
	)
	cmd := &cobra.Command{
		Use:   "null-server",
		Short: "Serve the etcd v3 API with no storage: the ceiling to measure against",
		Long: `Serve the etcd KV, Watch, Lease, Maintenance and Cluster APIs with no storage.
Range returns synthetic keys (limit of them for a range, the key itself for a
single-key get), writes succeed at once with an increasing revision, Watch
acknowledges creates but sends no events, leases never expire. Driving it
shows what gRPC, the client and the machine leave for any real server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := nullserver.Start(listen, opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "null server listening on %s\n", s.Addr())
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
			<-sigs
			s.Stop()
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&listen, "listen", "127.0.0.1:2399", "host:port to listen on (port 0 picks one)")
	fs.IntVar(&opts.KeySize, "key-size", 70, "size of synthetic keys")
	fs.IntVar(&opts.ValueSize, "val-size", 512, "size of synthetic values")
	fs.IntVar(&opts.UnlimitedCount, "unlimited-count", 10000, "keys returned by a range without a limit")
	return cmd
}

// newFreePortsCmd prints loopback ports that were free a moment ago, for
// scripts that start servers (the benchmark's make target).
func newFreePortsCmd() *cobra.Command {
	var n int
	cmd := &cobra.Command{
		Use:    "free-ports",
		Short:  "Print free loopback TCP ports, one per line",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ls []net.Listener
			defer func() {
				for _, l := range ls {
					_ = l.Close()
				}
			}()
			for i := 0; i < n; i++ {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					return err
				}
				ls = append(ls, l)
				fmt.Fprintln(cmd.OutOrStdout(), l.Addr().(*net.TCPAddr).Port)
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 1, "how many ports")
	return cmd
}

// signalContext is canceled on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
