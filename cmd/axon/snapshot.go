package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/internal/durable"
	"github.com/axon-kv/axon/server"
)

// clientFlags are etcdctl's connection flags, optionally with a prefix
// (migrate has a source and a target).
type clientFlags struct {
	endpoints             []string
	cacert, cert, key     string
	dialTimeout           time.Duration
	prefix, endpointsName string
}

func (f *clientFlags) register(fs *pflag.FlagSet, prefix, endpointsName, endpointsHelp string) {
	f.prefix, f.endpointsName = prefix, endpointsName
	fs.StringSliceVar(&f.endpoints, endpointsName, nil, endpointsHelp)
	fs.StringVar(&f.cacert, prefix+"cacert", "", "CA bundle verifying the server's certificate (https:// endpoints)")
	fs.StringVar(&f.cert, prefix+"cert", "", "client certificate for https:// endpoints")
	fs.StringVar(&f.key, prefix+"key", "", "client key for --"+prefix+"cert")
	fs.DurationVar(&f.dialTimeout, prefix+"dial-timeout", 5*time.Second, "timeout for connecting")
}

// client connects and waits for the connection.
func (f *clientFlags) client() (*clientv3.Client, error) {
	if len(f.endpoints) == 0 {
		return nil, fmt.Errorf("--%s: at least one endpoint is required", f.endpointsName)
	}
	cfg := clientv3.Config{
		Endpoints:          f.endpoints,
		DialTimeout:        f.dialTimeout,
		Logger:             zap.NewNop(),
		MaxCallSendMsgSize: 64 << 20,
		MaxCallRecvMsgSize: 1<<31 - 1,
	}
	https := false
	for _, e := range f.endpoints {
		https = https || strings.HasPrefix(e, "https://")
	}
	if https || f.cacert != "" || f.cert != "" {
		tc, err := server.ClientTLSConfig(f.cert, f.key, f.cacert)
		if err != nil {
			return nil, fmt.Errorf("--%scert/--%skey/--%scacert: %w", f.prefix, f.prefix, f.prefix, err)
		}
		cfg.TLS = tc
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", strings.Join(f.endpoints, ","), err)
	}
	return c, nil
}

// signalContext is canceled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func newSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save, inspect and restore Axon snapshots",
		Long: `Save, inspect and restore Axon snapshots.

A snapshot is every stored key and value of a member, read from one backend
snapshot (consistent at one revision), with a SHA-256 checksum. It keeps
revisions, history not yet compacted, and leases.`,
	}
	cmd.AddCommand(newSnapshotSaveCmd(), newSnapshotRestoreCmd(), newSnapshotStatusCmd())
	return cmd
}

func newSnapshotSaveCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "save FILE",
		Short: "Stream a snapshot from a running member into FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			ctx, cancel := signalContext()
			defer cancel()
			info, err := saveSnapshot(ctx, &cf, args[0])
			if err != nil {
				return err
			}
			printInfo(cmd.OutOrStdout(), "Snapshot saved at "+args[0], info)
			return nil
		},
	}
	cf.register(cmd.Flags(), "", "endpoints", "member to snapshot (http:// or https:// URL)")
	return cmd
}

// saveSnapshot downloads a snapshot into path: written to path.part,
// synced, verified, then renamed.
func saveSnapshot(ctx context.Context, cf *clientFlags, path string) (server.SnapshotInfo, error) {
	var info server.SnapshotInfo
	c, err := cf.client()
	if err != nil {
		return info, err
	}
	defer c.Close()
	part := path + ".part"
	f, err := os.OpenFile(part, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return info, err
	}
	defer os.Remove(part) // no-op once renamed
	rc, err := c.Snapshot(ctx)
	if err == nil {
		_, err = io.Copy(f, rc)
		rc.Close()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return info, fmt.Errorf("download snapshot: %w", err)
	}
	if info, err = verifySnapshotFile(part); err != nil {
		return info, err
	}
	if err := os.Rename(part, path); err != nil {
		return info, err
	}
	_ = durable.SyncDir(filepath.Dir(path)) // best effort: the file itself is complete and synced
	return info, nil
}

func verifySnapshotFile(path string) (server.SnapshotInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return server.SnapshotInfo{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return server.SnapshotInfo{}, err
	}
	return server.ReadSnapshot(f, fi.Size(), nil)
}

func newSnapshotStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status FILE",
		Short: "Verify a snapshot file and print its revision, size and checksum",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			info, err := verifySnapshotFile(args[0])
			if err != nil {
				return err
			}
			printInfo(cmd.OutOrStdout(), args[0], info)
			return nil
		},
	}
}

func newSnapshotRestoreCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "restore FILE --data-dir DIR",
		Short: "Write a snapshot into a new data directory for `axon serve --data-dir DIR`",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			info, err := restoreSnapshot(args[0], dataDir)
			if err != nil {
				return err
			}
			printInfo(cmd.OutOrStdout(), "Restored "+args[0]+" into "+dataDir, info)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "data directory to create (must not hold a database)")
	cmd.MarkFlagRequired("data-dir")
	return cmd
}

// restoreSnapshot verifies file, then writes it into a fresh Badger
// database under dataDir. On failure nothing is left behind.
func restoreSnapshot(file, dataDir string) (server.SnapshotInfo, error) {
	var info server.SnapshotInfo
	if strings.TrimSpace(dataDir) == "" {
		return info, errors.New("--data-dir: required")
	}
	dbDir := filepath.Join(dataDir, "badger")
	if entries, err := os.ReadDir(dbDir); err == nil && len(entries) > 0 {
		return info, fmt.Errorf("--data-dir %s already holds a database; restore into a new directory", dataDir)
	}
	f, err := os.Open(file)
	if err != nil {
		return info, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return info, err
	}
	if _, err := server.ReadSnapshot(f, fi.Size(), nil); err != nil {
		return info, fmt.Errorf("%s: %w", file, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return info, err
	}
	created := false
	if _, err := os.Stat(dataDir); errors.Is(err, os.ErrNotExist) {
		created = true
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return info, err
	}
	// The copy is made under another name and renamed into place once
	// complete and closed: a restore killed midway leaves no partial store
	// that `axon serve` would take for a whole one.
	partial := dbDir + ".restoring"
	if err := os.RemoveAll(partial); err != nil {
		return info, err
	}
	be, err := badger.Open(badger.Options{Dir: partial})
	if err != nil {
		return info, err
	}
	info, err = server.RestoreSnapshot(f, fi.Size(), be)
	if cerr := be.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if err = os.RemoveAll(dbDir); err == nil { // an empty dir at most (checked above)
			if err = os.Rename(partial, dbDir); err == nil {
				err = durable.SyncDir(dataDir)
			}
		}
	}
	if err != nil {
		if created {
			os.RemoveAll(dataDir)
		} else {
			os.RemoveAll(partial)
		}
		return info, fmt.Errorf("restore: %w", err)
	}
	return info, nil
}

func printInfo(w io.Writer, title string, info server.SnapshotInfo) {
	fmt.Fprintf(w, "%s\n  revision:           %d\n  compacted revision: %d\n  records:            %d\n  size:               %d bytes\n  sha256:             %s\n",
		title, info.Revision, info.CompactRevision, info.Records, info.Size, hex.EncodeToString(info.SHA256[:]))
}
