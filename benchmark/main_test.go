package benchmark

import (
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/axon-kv/axon/benchmark/nullserver"
)

// TestMain doubles as a server process for the tests of Compare's process
// handling: with AXON_BENCH_TEST_SERVER=host:port the test binary serves a
// null server there (whose ranges count AXON_BENCH_TEST_COUNT keys) until
// SIGTERM, after writing a file into the data dir given as its argument.
func TestMain(m *testing.M) {
	if addr := os.Getenv("AXON_BENCH_TEST_SERVER"); addr != "" {
		os.Exit(testServerMain(addr))
	}
	os.Exit(m.Run())
}

func testServerMain(addr string) int {
	if len(os.Args) > 1 {
		dir := os.Args[len(os.Args)-1]
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return 2
		}
		if err := os.WriteFile(filepath.Join(dir, "data"), make([]byte, 64<<10), 0o644); err != nil {
			return 2
		}
	}
	n, _ := strconv.Atoi(os.Getenv("AXON_BENCH_TEST_COUNT"))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	s, err := nullserver.Start(addr, nullserver.Options{UnlimitedCount: n})
	if err != nil {
		return 3
	}
	<-sigs
	s.Stop()
	return 0
}

// freePort returns a loopback host:port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
