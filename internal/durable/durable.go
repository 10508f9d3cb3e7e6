// Package durable holds the file-system steps that make a change survive a
// crash or power loss beyond fsyncing a file's data. It knows nothing of
// Axon's formats.
package durable

import (
	"fmt"
	"os"
)

// SyncDir fsyncs directory dir, which makes the names created, renamed or
// removed in it durable: fsyncing a file covers its data, not its name.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
