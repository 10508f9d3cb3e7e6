// Command axon-bench is the Axon benchmark as a binary of its own; it is the
// same command tree as `axon bench`.
//
//	go build -o bin/axon-bench ./benchmark/cmd/axon-bench
package main

import (
	"os"

	"github.com/axon-kv/axon/benchmark/cli"
)

func main() {
	if err := cli.NewCommand("axon-bench").Execute(); err != nil {
		os.Exit(1)
	}
}
