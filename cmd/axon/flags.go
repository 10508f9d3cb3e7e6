package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/axon-kv/axon/server"
)

// This file is the one place where `axon serve` flags are defined. To add a
// flag (TLS, metrics, ...):
//
//  1. add a field to serveOptions,
//  2. define it in registerFlags (an etcd-style name; hidden etcd aliases via
//     addAlias),
//  3. validate and copy it into server.Config in serveOptions.config.
//
// Every flag is automatically readable from AXON_<NAME> (upper case, dashes
// as underscores); see applyEnv. The flags table in README.md lists them.

// envPrefix starts the environment variable of every flag.
const envPrefix = "AXON_"

// aliasAnnotation marks a hidden alias flag; its value is the canonical name.
const aliasAnnotation = "axon/alias-of"

// serveOptions holds every `axon serve` setting as parsed from flags and
// environment.
type serveOptions struct {
	listenClientURLs            []string
	dataDir                     string
	backend                     string
	maxRequestBytes             int
	maxTxnOps                   int
	watchProgressNotifyInterval time.Duration
	autoCompactionRetention     retentionValue
	logLevel                    string
	logFormat                   string

	certFile             string
	keyFile              string
	trustedCAFile        string
	clientCertAuth       bool
	listenMetricsURLs    []string
	enablePprof          bool
	maxConcurrentStreams uint32
	maxWatchersPerStream int
	writeQueueLength     int
	quotaBackendBytes    int64
	memoryLimit          memoryLimitValue
	gcPercent            int
	readBudget           memoryLimitValue
	readWaitTimeout      time.Duration

	pdEndpoints         []string
	name                string
	advertiseClientURLs []string
	leaderLease         time.Duration
}

// registerFlags defines every serve flag on fs.
func (o *serveOptions) registerFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&o.listenClientURLs, "listen-client-urls", []string{server.DefaultListenClientURL},
		"comma-separated URLs to listen on for client traffic (http://host:port; port 0 picks a free port)")
	fs.StringVar(&o.dataDir, "data-dir", server.DefaultDataDir,
		"directory of the Badger database, created (mode 0700) if missing; unused by the memory backend")
	fs.StringVar(&o.backend, "backend", server.DefaultBackend,
		"storage engine: badger (on disk, durable, single node), memory (in-memory Badger, lost on exit) or tikv (shared by several Axon nodes, see --pd-endpoints)")
	fs.StringSliceVar(&o.pdEndpoints, "pd-endpoints", nil,
		"comma-separated TiKV placement driver addresses (host:port), with --backend tikv")
	fs.StringVar(&o.name, "name", "",
		"this node's name among the Axon nodes sharing a TiKV cluster (default: derived from the listen URLs)")
	fs.StringSliceVar(&o.advertiseClientURLs, "advertise-client-urls", nil,
		"client URL other Axon nodes forward writes to while this node leads (default: the first listen URL)")
	fs.DurationVar(&o.leaderLease, "leader-lease", server.DefaultLeaderLease,
		"with --backend tikv: how long a leader keeps leadership without renewing; a failed leader is replaced within about this time")
	fs.IntVar(&o.maxRequestBytes, "max-request-bytes", server.DefaultMaxRequestBytes,
		"maximum client request size in bytes the server will accept")
	fs.IntVar(&o.maxTxnOps, "max-txn-ops", server.DefaultMaxTxnOps,
		"maximum number of operations permitted in a transaction")
	fs.DurationVar(&o.watchProgressNotifyInterval, "watch-progress-notify-interval", server.DefaultWatchProgressNotifyInterval,
		"interval of progress notifications sent to watchers that asked for them")
	addAlias(fs, "experimental-watch-progress-notify-interval", "watch-progress-notify-interval")
	fs.Var(&o.autoCompactionRetention, "auto-compaction-retention",
		"history to keep before compacting automatically: a duration (e.g. 30m, 5h) or whole hours as in etcd (e.g. 1); 0 disables auto compaction")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")

	fs.StringVar(&o.certFile, "cert-file", "", "TLS certificate for https:// client URLs (PEM); re-read when it changes")
	fs.StringVar(&o.keyFile, "key-file", "", "TLS key for --cert-file (PEM)")
	fs.StringVar(&o.trustedCAFile, "trusted-ca-file", "", "CA bundle (PEM) that client certificates must chain to; setting it requires client certificates, as in etcd")
	fs.BoolVar(&o.clientCertAuth, "client-cert-auth", false, "require client certificates signed by --trusted-ca-file on https:// client URLs")
	fs.StringSliceVar(&o.listenMetricsURLs, "listen-metrics-urls", nil,
		"comma-separated http://host:port URLs serving /metrics, /health, /livez and /readyz (plain HTTP)")
	fs.BoolVar(&o.enablePprof, "enable-pprof", false, "serve runtime profiling data under /debug/pprof/ on the metrics URLs")
	fs.Uint32Var(&o.maxConcurrentStreams, "max-concurrent-streams", server.DefaultMaxConcurrentStreams,
		"maximum concurrent gRPC streams (calls and watch streams) per client connection")
	fs.IntVar(&o.maxWatchersPerStream, "max-watchers-per-stream", 0,
		"maximum watchers on one watch stream; further creations are canceled with a reason (0: no limit, as in etcd)")
	fs.IntVar(&o.writeQueueLength, "write-queue-length", 4096,
		"writes queued for the single writer before callers wait for room")
	fs.Int64Var(&o.quotaBackendBytes, "quota-backend-bytes", server.DefaultQuotaBackendBytes,
		"backend size that raises the NOSPACE alarm and refuses writes that add data (0: the 2 GiB default; negative: no quota)")
	o.memoryLimit = memoryLimitValue{auto: true}
	fs.Var(&o.memoryLimit, "memory-limit",
		"Go soft memory limit (debug.SetMemoryLimit): the garbage collector works harder near it instead of letting the heap grow to twice the live data; "+
			"it never refuses memory. auto: GOMEMLIMIT if that is set, else 85% of the cgroup memory limit (cgroup v2 memory.max or v1 memory.limit_in_bytes) "+
			"when one is set, else none; 0: none; or a size such as 2GiB, 1536MiB")
	o.readBudget = memoryLimitValue{auto: true}
	fs.Var(&o.readBudget, "max-read-bytes-in-flight",
		"memory read answers may hold while they are built and sent; a read that does not fit waits its turn, and past --read-wait-timeout fails "+
			"with 'too many requests' (ResourceExhausted). auto: an eighth of the Go memory limit (--memory-limit) when there is one, else 64MiB; 0: no bound; or a size")
	fs.DurationVar(&o.readWaitTimeout, "read-wait-timeout", server.DefaultReadWaitTimeout,
		"how long a read waits for room in --max-read-bytes-in-flight before it fails with 'too many requests'")
	fs.IntVar(&o.gcPercent, "gc-percent", defaultGCPercent,
		"Go garbage collection target (debug.SetGCPercent, as GOGC): the heap may grow this many percent over the live data before a collection. "+
			"Lower uses less memory and more CPU; GOGC, when set, wins over the default; negative: collection off (with --memory-limit only)")
}

// addAlias defines a hidden flag that sets the same value as canonical.
func addAlias(fs *pflag.FlagSet, alias, canonical string) {
	c := fs.Lookup(canonical)
	if c == nil {
		panic("axon: alias of undefined flag " + canonical)
	}
	fs.AddFlag(&pflag.Flag{
		Name:        alias,
		Usage:       "alias of --" + canonical,
		Value:       c.Value,
		DefValue:    c.DefValue,
		Hidden:      true,
		Annotations: map[string][]string{aliasAnnotation: {canonical}},
	})
}

// envName is the environment variable read for flag name.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// envUse records that a flag took its value from the environment.
type envUse struct {
	Var, Flag string
}

// applyEnv sets every flag among names that was not given on the command
// line (neither itself nor one of its aliases) from its AXON_* variable, if
// that is set and not empty. An alias's own variable is read only when the
// canonical one is unset. It returns the variables used and the AXON_*
// variables that match no flag.
func applyEnv(fs *pflag.FlagSet, names []string, environ []string) (used []envUse, unknown []string, err error) {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, envPrefix) {
			env[k] = v
		}
	}

	// Group aliases under their canonical flag.
	aliases := map[string][]string{}
	known := map[string]bool{}
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil {
			return nil, nil, fmt.Errorf("internal: flag %q not defined", name)
		}
		known[envName(name)] = true
		if c := f.Annotations[aliasAnnotation]; len(c) == 1 {
			aliases[c[0]] = append(aliases[c[0]], name)
		}
	}

	for _, name := range names {
		f := fs.Lookup(name)
		if len(f.Annotations[aliasAnnotation]) != 0 {
			continue // handled with its canonical flag
		}
		group := append([]string{name}, aliases[name]...)
		changed := false
		for _, n := range group {
			changed = changed || fs.Changed(n)
		}
		if changed {
			continue // an explicit flag wins over the environment
		}
		for _, n := range group {
			v := env[envName(n)]
			if v == "" {
				continue
			}
			if err := fs.Set(n, v); err != nil {
				return nil, nil, fmt.Errorf("invalid value %q for %s (--%s): %w", v, envName(n), n, err)
			}
			used = append(used, envUse{Var: envName(n), Flag: n})
			break
		}
	}

	for k := range env {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	return used, unknown, nil
}

// config validates the options and turns them into a server.Config.
func (o *serveOptions) config() (server.Config, error) {
	var cfg server.Config

	for _, raw := range o.listenClientURLs {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if err := checkClientURL(raw); err != nil {
			return cfg, fmt.Errorf("--listen-client-urls: %w", err)
		}
		cfg.ListenClientURLs = append(cfg.ListenClientURLs, raw)
	}
	if len(cfg.ListenClientURLs) == 0 {
		return cfg, fmt.Errorf("--listen-client-urls: at least one URL is required")
	}

	switch o.backend {
	case "badger", "memory":
		cfg.Backend = o.backend
		if len(o.pdEndpoints) > 0 || len(o.advertiseClientURLs) > 0 {
			return cfg, fmt.Errorf("--backend %s is single-node: leader/follower mode (--pd-endpoints, --advertise-client-urls) needs --backend tikv", o.backend)
		}
	case "tikv":
		cfg.Backend = o.backend
		for _, ep := range o.pdEndpoints {
			if ep = strings.TrimSpace(ep); ep != "" {
				cfg.PDEndpoints = append(cfg.PDEndpoints, ep)
			}
		}
		if len(cfg.PDEndpoints) == 0 {
			return cfg, fmt.Errorf("--backend tikv needs --pd-endpoints")
		}
	default:
		return cfg, fmt.Errorf("--backend: %q is not one of badger, memory, tikv", o.backend)
	}
	cfg.NodeID = o.name
	if len(o.advertiseClientURLs) > 0 {
		cfg.AdvertiseClientURL = strings.TrimSpace(o.advertiseClientURLs[0])
	}
	if o.leaderLease <= 0 {
		return cfg, fmt.Errorf("--leader-lease: must be positive, got %s", o.leaderLease)
	}
	cfg.LeaderLease = o.leaderLease
	if o.backend == "badger" && strings.TrimSpace(o.dataDir) == "" {
		return cfg, fmt.Errorf("--data-dir: must not be empty with the badger backend")
	}
	cfg.DataDir = o.dataDir

	if o.maxRequestBytes <= 0 {
		return cfg, fmt.Errorf("--max-request-bytes: must be positive, got %d", o.maxRequestBytes)
	}
	cfg.MaxRequestBytes = o.maxRequestBytes
	if o.maxTxnOps <= 0 {
		return cfg, fmt.Errorf("--max-txn-ops: must be positive, got %d", o.maxTxnOps)
	}
	cfg.MaxTxnOps = o.maxTxnOps
	if o.watchProgressNotifyInterval <= 0 {
		return cfg, fmt.Errorf("--watch-progress-notify-interval: must be positive, got %s", o.watchProgressNotifyInterval)
	}
	cfg.WatchProgressNotifyInterval = o.watchProgressNotifyInterval
	cfg.AutoCompactionRetention = time.Duration(o.autoCompactionRetention)
	if o.readWaitTimeout <= 0 {
		return cfg, fmt.Errorf("--read-wait-timeout: must be positive, got %s", o.readWaitTimeout)
	}
	cfg.ReadWaitTimeout = o.readWaitTimeout

	if err := o.tlsConfig(&cfg); err != nil {
		return cfg, err
	}
	for _, raw := range o.listenMetricsURLs {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if err := checkURL(raw, false); err != nil {
			return cfg, fmt.Errorf("--listen-metrics-urls: %w", err)
		}
		cfg.ListenMetricsURLs = append(cfg.ListenMetricsURLs, raw)
	}
	cfg.EnablePprof = o.enablePprof
	if o.enablePprof && len(cfg.ListenMetricsURLs) == 0 {
		return cfg, fmt.Errorf("--enable-pprof: needs --listen-metrics-urls (profiles are served there)")
	}
	if o.maxConcurrentStreams == 0 {
		return cfg, fmt.Errorf("--max-concurrent-streams: must be positive")
	}
	cfg.MaxConcurrentStreams = o.maxConcurrentStreams
	if o.maxWatchersPerStream < 0 {
		return cfg, fmt.Errorf("--max-watchers-per-stream: must not be negative, got %d", o.maxWatchersPerStream)
	}
	cfg.MaxWatchersPerStream = o.maxWatchersPerStream
	if o.writeQueueLength <= 0 {
		return cfg, fmt.Errorf("--write-queue-length: must be positive, got %d", o.writeQueueLength)
	}
	cfg.WriteQueueLength = o.writeQueueLength
	cfg.QuotaBackendBytes = o.quotaBackendBytes
	if cfg.QuotaBackendBytes == 0 {
		cfg.QuotaBackendBytes = server.DefaultQuotaBackendBytes
	}

	if _, err := parseLogLevel(o.logLevel); err != nil {
		return cfg, err
	}
	if _, err := logHandlerFor(o.logFormat, io.Discard, nil); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// newLogger builds the slog logger the options ask for, writing to w.
func (o *serveOptions) newLogger(w io.Writer) (*slog.Logger, error) {
	level, err := parseLogLevel(o.logLevel)
	if err != nil {
		return nil, err
	}
	h, err := logHandlerFor(o.logFormat, w, &slog.HandlerOptions{Level: level})
	if err != nil {
		return nil, err
	}
	return slog.New(h), nil
}

func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", s)
}

func logHandlerFor(format string, w io.Writer, opts *slog.HandlerOptions) (slog.Handler, error) {
	switch strings.ToLower(format) {
	case "text":
		return slog.NewTextHandler(w, opts), nil
	case "json":
		return slog.NewJSONHandler(w, opts), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not one of text, json", format)
}

// tlsConfig checks the TLS flags against the client URLs.
func (o *serveOptions) tlsConfig(cfg *server.Config) error {
	https := false
	for _, raw := range cfg.ListenClientURLs {
		https = https || strings.HasPrefix(raw, "https://")
	}
	cfg.CertFile, cfg.KeyFile, cfg.TrustedCAFile, cfg.ClientCertAuth = o.certFile, o.keyFile, o.trustedCAFile, o.clientCertAuth
	switch {
	case https && (o.certFile == "" || o.keyFile == ""):
		return fmt.Errorf("--listen-client-urls: https:// URLs need TLS: set --cert-file and --key-file")
	case !https && (o.certFile != "" || o.keyFile != "" || o.trustedCAFile != "" || o.clientCertAuth):
		return fmt.Errorf("--cert-file/--key-file/--trusted-ca-file/--client-cert-auth: TLS applies to https:// client URLs, and none is listed")
	case (o.certFile == "") != (o.keyFile == ""):
		return fmt.Errorf("--cert-file and --key-file: set both or neither")
	case o.clientCertAuth && o.trustedCAFile == "":
		return fmt.Errorf("--client-cert-auth: needs --trusted-ca-file")
	}
	for flag, path := range map[string]string{"--cert-file": o.certFile, "--key-file": o.keyFile, "--trusted-ca-file": o.trustedCAFile} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s: %w", flag, err)
		}
	}
	return nil
}

// checkClientURL accepts http://host:port and https://host:port.
func checkClientURL(raw string) error { return checkURL(raw, true) }

// checkURL accepts http://host:port, and https://host:port when https.
func checkURL(raw string, https bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q: %w", raw, err)
	}
	switch {
	case u.Scheme == "http":
	case u.Scheme == "https" && https:
	case https:
		return fmt.Errorf("%q: scheme must be http or https", raw)
	default:
		return fmt.Errorf("%q: scheme must be http", raw)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q: must be scheme://host:port with nothing after the port", raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return fmt.Errorf("%q: must be http://host:port: %w", raw, err)
	}
	if host == "" {
		return fmt.Errorf("%q: missing host (use 0.0.0.0 to listen on all interfaces)", raw)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q: invalid port %q", raw, port)
	}
	return nil
}

// retentionValue is --auto-compaction-retention: a Go duration, or a plain
// non-negative integer meaning hours (etcd's periodic-mode syntax).
type retentionValue time.Duration

func (r *retentionValue) String() string {
	if *r == 0 {
		return "0"
	}
	return time.Duration(*r).String()
}

func (r *retentionValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if h, err := strconv.Atoi(s); err == nil {
		if h < 0 {
			return fmt.Errorf("must not be negative")
		}
		if int64(h) > int64(time.Duration(1<<63-1)/time.Hour) {
			return fmt.Errorf("%d hours is too long", h)
		}
		*r = retentionValue(time.Duration(h) * time.Hour)
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration (e.g. 30m, 5h) or whole hours (e.g. 1)")
	}
	if d < 0 {
		return fmt.Errorf("must not be negative")
	}
	*r = retentionValue(d)
	return nil
}

func (r *retentionValue) Type() string { return "duration|hours" }
