// Package tikv owns the TiKV engine behind backend.Backend: connecting to a
// cluster through client-go's transactional API (txnkv), confining Axon to a
// keyspace prefix, turning each batch into one optimistic transaction, and
// reporting what that costs. It must not know MVCC: keys and values are
// opaque bytes here, and everything about revisions lives above the backend
// seam so every engine shares it.
//
// Reads use TiKV's own multi-version store: a Snapshot is a read timestamp
// from PD, and every Get or Scan on it reads as of that timestamp. A Commit
// is one transaction that reads the batch's condition keys, checks them,
// writes the operations and commits; TiKV's write-conflict detection makes
// the check and the write atomic even against other Axon processes sharing
// the cluster.
package tikv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/tikv/client-go/v2/txnkv"

	"github.com/axon-kv/axon/backend"
)

// DefaultPrefix is the keyspace prefix used when Options.Prefix is empty.
const DefaultPrefix = "axon/"

// DefaultConflictRetries is how many times a batch that lost a write
// conflict is re-run when Options.ConflictRetries is zero.
const DefaultConflictRetries = 8

var (
	// ErrWriteConflict is wrapped by the error Commit returns when the
	// batch kept losing write conflicts to concurrent transactions until
	// its retries ran out. Nothing of the batch was written.
	ErrWriteConflict = errors.New("tikv: write conflict")
	// ErrUndetermined is wrapped by the error Commit returns when the
	// outcome is unknown: the commit request was sent but its answer was
	// lost. The batch may or may not have been applied, atomically either
	// way; the caller must read back to find out.
	ErrUndetermined = errors.New("tikv: commit result undetermined")
)

// Options configure Open and OpenWithClient.
type Options struct {
	// PDEndpoints are the PD servers (host:port) of the cluster. Required
	// by Open. OpenWithClient uses them only to ask PD for the keyspace's
	// size (see Size) and does without.
	PDEndpoints []string
	// Logger receives the engine's warnings. Nil means slog.Default. Open
	// also routes client-go's process-wide logs to it (see
	// RouteClientLogs); OpenWithClient does not.
	Logger *slog.Logger
	// Prefix is prepended to every key so Axon can share a cluster with
	// other users; keys come back without it. Empty means DefaultPrefix.
	// It must contain a byte other than 0xff so the keyspace has an end.
	Prefix string
	// ConflictRetries is how many times a batch that lost a write conflict
	// is re-run in a fresh transaction, its conditions re-read; a batch
	// whose conditions no longer hold then fails with
	// backend.ErrConditionFailed, as it would have had it started after
	// the winner. Zero means DefaultConflictRetries; negative means never,
	// so every conflict surfaces as ErrWriteConflict.
	ConflictRetries int
	// Disable1PC and DisableAsyncCommit turn off the two commit protocols
	// that save round trips (see Commit). Turn them off for TiKV before
	// 5.0 or for client-go's mock cluster, which implement neither: every
	// commit would ask, be refused, and fall back to two-phase commit
	// after spending an extra timestamp request.
	Disable1PC         bool
	DisableAsyncCommit bool
}

// DB is a backend.Backend stored in TiKV. It is safe for concurrent use.
type DB struct {
	client     *txnkv.Client
	ownsClient bool
	log        *slog.Logger
	prefix     []byte
	prefixEnd  []byte
	retries    int
	onePC      bool
	async      bool

	// ctx is cancelled by Close to cut short calls still in progress.
	ctx    context.Context
	cancel context.CancelFunc
	gate   gate

	stats counters
	sizeState

	// testHookBeforeWrite, when set, runs inside Commit after the
	// conditions were read and checked and before anything is written.
	testHookBeforeWrite func()
}

var _ backend.Backend = (*DB)(nil)

// Open connects to the cluster whose PD servers opts lists. The returned DB
// owns the connection and closes it in Close.
func Open(opts Options) (*DB, error) {
	if len(opts.PDEndpoints) == 0 {
		return nil, errors.New("tikv: PDEndpoints is required")
	}
	if err := validate(opts); err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	RouteClientLogs(logger.With("engine", "tikv"))
	c, err := txnkv.NewClient(opts.PDEndpoints)
	if err != nil {
		return nil, fmt.Errorf("tikv: connect to PD %v: %w", opts.PDEndpoints, err)
	}
	d, err := newDB(c, opts)
	if err != nil {
		c.Close()
		return nil, err
	}
	d.ownsClient = true
	return d, nil
}

// OpenWithClient uses a client the caller made and keeps owning: Close does
// not close it, so several DBs (or other users) can share one client.
func OpenWithClient(c *txnkv.Client, opts Options) (*DB, error) {
	if c == nil {
		return nil, errors.New("tikv: nil client")
	}
	if err := validate(opts); err != nil {
		return nil, err
	}
	return newDB(c, opts)
}

func validate(opts Options) error {
	if opts.Prefix != "" && backend.PrefixEnd([]byte(opts.Prefix)) == nil {
		return fmt.Errorf("tikv: Prefix %q has no end: it must contain a byte other than 0xff", opts.Prefix)
	}
	return nil
}

func newDB(c *txnkv.Client, opts Options) (*DB, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	retries := opts.ConflictRetries
	switch {
	case retries == 0:
		retries = DefaultConflictRetries
	case retries < 0:
		retries = 0
	}
	d := &DB{
		client:    c,
		log:       logger.With("engine", "tikv"),
		prefix:    []byte(prefix),
		prefixEnd: backend.PrefixEnd([]byte(prefix)),
		retries:   retries,
		onePC:     !opts.Disable1PC,
		async:     !opts.DisableAsyncCommit,
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.pdSize.Store(-1)
	d.sizeDone = make(chan struct{})
	if len(opts.PDEndpoints) > 0 {
		go d.sizeLoop(d.ctx, opts.PDEndpoints)
	} else {
		close(d.sizeDone)
	}
	return d, nil
}

// Client returns the client-go client the DB uses.
func (d *DB) Client() *txnkv.Client { return d.client }

// Prefix returns the keyspace prefix every key is stored under.
func (d *DB) Prefix() []byte { return bytes.Clone(d.prefix) }

// Close implements backend.Backend. It refuses new calls, cancels those in
// progress (a commit cut short returns an error and is not acknowledged),
// waits for them to return, and closes the client if Open made it.
// Snapshots still open stop working; closing them is safe.
func (d *DB) Close() error {
	if !d.gate.Shut(d.cancel) {
		return backend.ErrClosed
	}
	<-d.sizeDone
	if d.ownsClient {
		if err := d.client.Close(); err != nil {
			return fmt.Errorf("tikv: close client: %w", err)
		}
	}
	return nil
}

// key returns prefix+k in a fresh slice.
func (d *DB) key(k []byte) []byte {
	out := make([]byte, 0, len(d.prefix)+len(k))
	return append(append(out, d.prefix...), k...)
}

// Stored values carry a one-byte header. TiKV cannot store an empty value
// (client-go treats one as a delete), and the backend contract requires
// empty values to round-trip; the header also leaves room for other
// encodings (say, compressed) later.
const valueRaw byte = 0x01

func encodeValue(dst, v []byte) []byte {
	return append(append(dst, valueRaw), v...)
}

// decodeValue returns the value inside stored (aliasing it).
func decodeValue(key, stored []byte) ([]byte, error) {
	if len(stored) == 0 || stored[0] != valueRaw {
		return nil, fmt.Errorf("tikv: key %q: unknown value encoding (%d bytes)", key, len(stored))
	}
	return stored[1:], nil
}

// gate is the engine's close gate.
type gate = backend.CloseGate
