package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServeOperationsFlags(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"c.pem", "k.pem", "ca.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cert, key, ca := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), filepath.Join(dir, "ca.pem")
	got, out, err := parseServe(t, []string{"AXON_QUOTA_BACKEND_BYTES=1048576"},
		"--listen-client-urls=https://127.0.0.1:2379,http://127.0.0.1:2380",
		"--cert-file="+cert, "--key-file="+key, "--trusted-ca-file="+ca, "--client-cert-auth",
		"--listen-metrics-urls=http://127.0.0.1:2381", "--enable-pprof",
		"--max-concurrent-streams=100", "--max-watchers-per-stream=50", "--write-queue-length=64")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got.CertFile != cert || got.KeyFile != key || got.TrustedCAFile != ca || !got.ClientCertAuth {
		t.Errorf("TLS fields: %+v", got)
	}
	if len(got.ListenMetricsURLs) != 1 || got.ListenMetricsURLs[0] != "http://127.0.0.1:2381" || !got.EnablePprof {
		t.Errorf("metrics fields: %v %v", got.ListenMetricsURLs, got.EnablePprof)
	}
	if got.MaxConcurrentStreams != 100 || got.MaxWatchersPerStream != 50 || got.WriteQueueLength != 64 || got.QuotaBackendBytes != 1<<20 {
		t.Errorf("limits: streams %d watchers %d queue %d quota %d", got.MaxConcurrentStreams, got.MaxWatchersPerStream, got.WriteQueueLength, got.QuotaBackendBytes)
	}

	got, _, err = parseServe(t, nil, "--quota-backend-bytes=-1")
	if err != nil || got.QuotaBackendBytes != -1 {
		t.Errorf("negative quota: %v %d", err, got.QuotaBackendBytes)
	}

	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--listen-client-urls=https://127.0.0.1:2379", "--cert-file=" + cert}, "TLS"},
		{[]string{"--cert-file=" + cert, "--key-file=" + key}, "https://"},
		{[]string{"--listen-client-urls=https://127.0.0.1:2379", "--cert-file=" + cert, "--key-file=" + key, "--client-cert-auth"}, "--trusted-ca-file"},
		{[]string{"--listen-client-urls=https://127.0.0.1:2379", "--cert-file=" + filepath.Join(dir, "missing"), "--key-file=" + key}, "--cert-file"},
		{[]string{"--listen-metrics-urls=https://127.0.0.1:2381"}, "--listen-metrics-urls"},
		{[]string{"--enable-pprof"}, "--listen-metrics-urls"},
		{[]string{"--max-concurrent-streams=0"}, "--max-concurrent-streams"},
		{[]string{"--max-watchers-per-stream=-1"}, "--max-watchers-per-stream"},
		{[]string{"--write-queue-length=0"}, "--write-queue-length"},
	} {
		_, out, err := parseServe(t, nil, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: error %v, want one mentioning %q\n%s", tc.args, err, tc.wantErr, out)
		}
	}
}
