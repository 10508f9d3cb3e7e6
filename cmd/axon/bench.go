package main

import (
	"github.com/spf13/cobra"

	"github.com/axon-kv/axon/benchmark/cli"
)

// newBenchCmd is `axon bench`: the benchmark tool (benchmark/cli), also
// built on its own as benchmark/cmd/axon-bench.
func newBenchCmd() *cobra.Command {
	return cli.NewCommand("bench")
}
