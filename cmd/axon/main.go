// Command axon is the Axon server: an etcd-compatible metadata store for
// Kubernetes.
//
//	axon serve [flags]   run a member (flags mirror etcd's names)
//	axon version         print the Axon, etcd API and Go versions
//	axon check DATA_DIR  verify a stopped member's data dir offline
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
	etcdversion "go.etcd.io/etcd/api/v3/version"
)

// version is Axon's own version, set at build time with
//
//	go build -ldflags "-X main.version=v0.1.0" ./cmd/axon
var version = "dev"

func main() {
	root := newRootCmd(os.Environ(), runServe)
	if err := root.Execute(); err != nil {
		// cobra has already printed the error and, for flag errors, usage.
		os.Exit(1)
	}
}

// newRootCmd builds the command tree. environ is the process environment
// (os.Environ() in production) used for AXON_* variables; run is what
// `serve` does with the resolved settings, replaceable in tests.
func newRootCmd(environ []string, run serveFunc) *cobra.Command {
	root := &cobra.Command{
		Use:           "axon",
		Short:         "Axon: an etcd-compatible metadata store for Kubernetes",
		SilenceUsage:  true,
		SilenceErrors: false,
		// No-op: only subcommands do something.
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.AddCommand(newServeCmd(environ, run), newVersionCmd(), newBenchCmd(), newSnapshotCmd(), newMigrateCmd(), newCheckCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the Axon version, the etcd API version it speaks and the Go version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			printVersion(cmd.OutOrStdout())
		},
	}
}

// axonVersion is version, or the module version when built with
// `go install module@version` and no -ldflags.
func axonVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

// gitSHA is the VCS revision stamped by the go command, if any.
func gitSHA() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	sha, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			sha = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if sha != "" && dirty {
		sha += "-dirty"
	}
	return sha
}

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "Axon version: %s\n", axonVersion())
	if sha := gitSHA(); sha != "" {
		fmt.Fprintf(w, "Git SHA: %s\n", sha)
	}
	// Axon speaks the etcd v3 API of the etcd release it is built against and
	// reports that release as its server version, as etcd does.
	fmt.Fprintf(w, "etcd API version: %s (compatible with etcd %s)\n", etcdversion.APIVersion, etcdversion.Version)
	fmt.Fprintf(w, "Go version: %s\n", runtime.Version())
	fmt.Fprintf(w, "Go OS/Arch: %s/%s\n", runtime.GOOS, runtime.GOARCH)
}
