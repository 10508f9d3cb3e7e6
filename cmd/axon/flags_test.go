package main

import (
	"bytes"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	etcdversion "go.etcd.io/etcd/api/v3/version"

	"github.com/axon-kv/axon/server"
)

// parseServe runs `axon serve args...` with the given environment and a
// serve function that only records the resolved configuration.
func parseServe(t *testing.T, env []string, args ...string) (server.Config, string, error) {
	t.Helper()
	var got server.Config
	called := false
	root := newRootCmd(env, func(cfg server.Config) error {
		got, called = cfg, true
		return nil
	})
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"serve"}, args...))
	err := root.Execute()
	if err == nil && !called {
		t.Fatalf("serve did not run; output:\n%s", out.String())
	}
	if called && got.Logger == nil {
		t.Errorf("cfg.Logger not set")
	}
	got.Logger = nil
	return got, out.String(), err
}

func TestServeDefaults(t *testing.T) {
	got, _, err := parseServe(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := server.Config{
		ListenClientURLs:            []string{"http://127.0.0.1:2379"},
		DataDir:                     "./axon-data",
		Backend:                     "badger",
		MaxRequestBytes:             1572864,
		MaxTxnOps:                   128,
		WatchProgressNotifyInterval: 10 * time.Minute,
		AutoCompactionRetention:     0,
		MaxConcurrentStreams:        math.MaxUint32,
		WriteQueueLength:            4096,
		QuotaBackendBytes:           2 << 30,
		ReadWaitTimeout:             server.DefaultReadWaitTimeout,
		LeaderLease:                 server.DefaultLeaderLease,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestServeEnvFlagPrecedence(t *testing.T) {
	env := []string{
		"PATH=/usr/bin",
		"AXON_DATA_DIR=/from-env",
		"AXON_MAX_TXN_OPS=7",
		"AXON_MAX_REQUEST_BYTES=4096",
		"AXON_LISTEN_CLIENT_URLS=http://127.0.0.1:1,http://127.0.0.1:2",
		"AXON_BACKEND=memory",
		"AXON_AUTO_COMPACTION_RETENTION=2",
		"AXON_WATCH_PROGRESS_NOTIFY_INTERVAL=1m",
		"AXON_LOG_LEVEL=debug",
		"AXON_LOG_FORMAT=", // empty means unset
		"AXON_NO_SUCH_FLAG=1",
	}
	got, out, err := parseServe(t, env,
		"--data-dir", "/from-flag",
		"--max-request-bytes=8192",
		"--backend", "badger",
	)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := server.Config{
		ListenClientURLs:            []string{"http://127.0.0.1:1", "http://127.0.0.1:2"}, // env
		DataDir:                     "/from-flag",                                         // flag beats env
		Backend:                     "badger",                                             // flag beats env
		MaxRequestBytes:             8192,                                                 // flag beats env
		MaxTxnOps:                   7,                                                    // env
		WatchProgressNotifyInterval: time.Minute,                                          // env
		AutoCompactionRetention:     2 * time.Hour,                                        // env, etcd-style hours
		MaxConcurrentStreams:        math.MaxUint32,
		WriteQueueLength:            4096,
		QuotaBackendBytes:           2 << 30,
		ReadWaitTimeout:             server.DefaultReadWaitTimeout,
		LeaderLease:                 server.DefaultLeaderLease,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config:\n got %+v\nwant %+v", got, want)
	}
	// Log level debug came from the environment; the env use is logged at
	// info and the unknown variable warned about.
	for _, s := range []string{"AXON_MAX_TXN_OPS", "AXON_NO_SUCH_FLAG"} {
		if !strings.Contains(out, s) {
			t.Errorf("log output does not mention %s:\n%s", s, out)
		}
	}
	if strings.Contains(out, "var=AXON_DATA_DIR") {
		t.Errorf("AXON_DATA_DIR reported as used although --data-dir was given:\n%s", out)
	}
}

func TestServeFlagWithoutEnv(t *testing.T) {
	got, out, err := parseServe(t, nil,
		"--listen-client-urls", "http://127.0.0.1:0, http://localhost:12379",
		"--auto-compaction-retention", "90m",
		"--max-txn-ops", "256",
	)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if want := []string{"http://127.0.0.1:0", "http://localhost:12379"}; !reflect.DeepEqual(got.ListenClientURLs, want) {
		t.Errorf("urls = %q, want %q", got.ListenClientURLs, want)
	}
	if got.AutoCompactionRetention != 90*time.Minute {
		t.Errorf("retention = %v, want 90m", got.AutoCompactionRetention)
	}
	if got.MaxTxnOps != 256 {
		t.Errorf("max-txn-ops = %d, want 256", got.MaxTxnOps)
	}
}

func TestServeWatchProgressAlias(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want time.Duration
	}{
		{"alias flag", nil, []string{"--experimental-watch-progress-notify-interval=5s"}, 5 * time.Second},
		{"alias flag beats env", []string{"AXON_WATCH_PROGRESS_NOTIFY_INTERVAL=1m"},
			[]string{"--experimental-watch-progress-notify-interval=5s"}, 5 * time.Second},
		{"alias env", []string{"AXON_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL=7s"}, nil, 7 * time.Second},
		{"canonical env beats alias env", []string{
			"AXON_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL=7s",
			"AXON_WATCH_PROGRESS_NOTIFY_INTERVAL=9s",
		}, nil, 9 * time.Second},
		{"canonical flag beats alias env", []string{"AXON_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL=7s"},
			[]string{"--watch-progress-notify-interval=3s"}, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, out, err := parseServe(t, tc.env, tc.args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if got.WatchProgressNotifyInterval != tc.want {
				t.Errorf("interval = %v, want %v", got.WatchProgressNotifyInterval, tc.want)
			}
		})
	}
}

func TestServeRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     []string
		args    []string
		wantErr string
	}{
		{"bad backend", nil, []string{"--backend=tikv"}, "--backend"},
		{"bad env int", []string{"AXON_MAX_TXN_OPS=lots"}, nil, "AXON_MAX_TXN_OPS"},
		{"bad env duration", []string{"AXON_WATCH_PROGRESS_NOTIFY_INTERVAL=soon"}, nil, "AXON_WATCH_PROGRESS_NOTIFY_INTERVAL"},
		{"negative retention", nil, []string{"--auto-compaction-retention=-1"}, "auto-compaction-retention"},
		{"bad retention", nil, []string{"--auto-compaction-retention=1.5"}, "auto-compaction-retention"},
		{"bad log level", nil, []string{"--log-level=verbose"}, "--log-level"},
		{"bad log format", []string{"AXON_LOG_FORMAT=xml"}, nil, "--log-format"},
		{"zero txn ops", nil, []string{"--max-txn-ops=0"}, "--max-txn-ops"},
		{"url without port", nil, []string{"--listen-client-urls=http://127.0.0.1"}, "--listen-client-urls"},
		{"https without tls", nil, []string{"--listen-client-urls=https://127.0.0.1:2379"}, "TLS"},
		{"positional arg", nil, []string{"extra"}, "unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, out, err := parseServe(t, tc.env, tc.args...)
			if err == nil {
				t.Fatalf("no error; output:\n%s", out)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestRetentionValue(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"0": 0, "1": time.Hour, "24": 24 * time.Hour, "30m": 30 * time.Minute, "1h30m": 90 * time.Minute, " 5 ": 5 * time.Hour,
	} {
		var r retentionValue
		if err := r.Set(in); err != nil {
			t.Errorf("Set(%q): %v", in, err)
			continue
		}
		if time.Duration(r) != want {
			t.Errorf("Set(%q) = %v, want %v", in, time.Duration(r), want)
		}
	}
}

func TestVersionCommand(t *testing.T) {
	root := newRootCmd(nil, func(server.Config) error { return nil })
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"version"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"Axon version: " + axonVersion(), "etcd API version: " + etcdversion.APIVersion, "etcd " + etcdversion.Version, runtime.Version()} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("version output lacks %q:\n%s", s, out.String())
		}
	}
}

// Badger is single-node: leader/follower settings are refused with a clear
// message, and the TiKV backend needs its placement driver addresses.
func TestServeClusterFlags(t *testing.T) {
	bad := [][]string{
		{"--backend", "badger", "--pd-endpoints", "127.0.0.1:2379"},
		{"--backend", "memory", "--advertise-client-urls", "http://127.0.0.1:1"},
		{"--backend", "tikv"},
		{"--backend", "tikv", "--pd-endpoints", "pd:2379", "--leader-lease", "0s"},
	}
	for _, args := range bad {
		if _, _, err := parseServe(t, nil, args...); err == nil {
			t.Errorf("%v: accepted, want an error", args)
		}
	}
	cfg, _, err := parseServe(t, nil, "--backend", "tikv", "--pd-endpoints", "pd1:2379,pd2:2379", "--name", "n1",
		"--advertise-client-urls", "http://10.0.0.1:2379", "--leader-lease", "5s")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Backend != "tikv" || len(cfg.PDEndpoints) != 2 || cfg.NodeID != "n1" || cfg.AdvertiseClientURL != "http://10.0.0.1:2379" || cfg.LeaderLease != 5*time.Second {
		t.Errorf("tikv config = %+v", cfg)
	}
}
