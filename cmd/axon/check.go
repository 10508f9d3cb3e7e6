package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/witness"
)

// checkListed bounds the problems printed: the first ones locate the
// damage, and a badly damaged store can have millions.
const checkListed = 20

func newCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check DATA_DIR",
		Short: "Verify a stopped member's data dir offline; exit 1 if anything is inconsistent",
		Long: `Verify a stopped member's Badger data dir offline.

Checks Badger's table checksums, then Axon's storage format: the meta
records, every revision record since the last physical compaction, every
history entry against its record and its key's other versions, the key index
open would build, and the leases keys are attached to. Nothing is written
through Axon (Badger may replay its own write-ahead log when opening). The
member must be stopped: a data dir in use is refused.

Progress goes to stderr, the summary to stdout; the exit status is 1 when a
problem was found.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			return runCheck(args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
}

// badgerDir finds the database of a data dir: the server keeps it in
// DATA_DIR/badger, but the database dir itself is accepted too. Opening a
// dir without one would create an empty store, so it is refused.
func badgerDir(dataDir string) (string, error) {
	for _, d := range []string{filepath.Join(dataDir, "badger"), dataDir} {
		if _, err := os.Stat(filepath.Join(d, "MANIFEST")); err == nil {
			return d, nil
		}
	}
	if _, err := os.Stat(dataDir); err != nil {
		return "", err
	}
	return "", fmt.Errorf("%s holds no Axon Badger database (no badger/MANIFEST)", dataDir)
}

func runCheck(dataDir string, stdout, stderr io.Writer) error {
	dir, err := badgerDir(dataDir)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Opening verifies every table's checksums before Badger reads them
	// (backend/badger/preflight.go), as axon serve's start does.
	fmt.Fprintf(stderr, "checking %s: table checksums\n", dir)
	db, err := badger.Open(badger.Options{Dir: dir, Logger: logger})
	if err != nil {
		if strings.Contains(err.Error(), "Another process is using this Badger database") {
			return fmt.Errorf("%s is in use by another process (is an axon server running on it?); stop it before checking: %w", dataDir, err)
		}
		if errors.Is(err, badger.ErrDamaged) {
			// The same refusal axon serve would give; nothing was opened.
			fmt.Fprintf(stdout, "%s: FAILED\n  %v\n  storage format checks skipped: the engine's files are damaged\n", dataDir, err)
			return errors.New("check failed: damaged engine files")
		}
		return err
	}
	defer db.Close()

	var lastShown time.Time
	started := time.Now()
	progress := func(p mvcc.CheckProgress) {
		if p.Stage != "done" && time.Since(lastShown) < time.Second {
			return
		}
		lastShown = time.Now()
		fmt.Fprintf(stderr, "checking %s: %s, %d entries read (%s)\n", dir, p.Stage, p.Entries, time.Since(started).Round(time.Millisecond))
	}
	rep, err := mvcc.Check(db, mvcc.CheckOptions{MaxProblems: checkListed, Progress: progress})
	if err != nil {
		return fmt.Errorf("check %s: %w", dataDir, err)
	}
	witnessed := checkWitness(db, dataDir, rep)
	printCheckReport(stdout, dataDir, rep)
	if !rep.OK() {
		return fmt.Errorf("check failed: %d problem(s)", rep.ProblemCount)
	}
	if witnessed && db.Rescue() != "" {
		// What opening set aside was only a crash's leftovers.
		if err := db.DiscardRescue(); err != nil {
			fmt.Fprintf(stderr, "cannot remove %s: %v\n", db.Rescue(), err)
		}
	}
	return nil
}

// checkWitness compares the store with the data dir's witness, as `axon
// serve` does at start, and reports whether it matched one.
func checkWitness(db *badger.DB, dataDir string, rep *mvcc.CheckReport) bool {
	rec, ok, err := witness.Read(dataDir)
	switch {
	case err != nil:
		rep.Notes = append(rep.Notes, fmt.Sprintf("witness unreadable (%v): axon serve will rewrite it from the store", err))
		return false
	case !ok:
		rep.Notes = append(rep.Notes, "no witness file: axon serve will write one from the store")
		return false
	}
	id, rev, fresh, err := mvcc.Identity(db)
	switch {
	case err != nil:
		rep.AddProblem(mvcc.ProblemMeta, "reading the store identity: %v", err)
	case fresh || id != rec.StoreID:
		rep.AddProblem(mvcc.ProblemMeta, "the witness names store %s at revision %d, the engine holds store %q: axon serve refuses it", rec.StoreID, rec.Revision, id)
	case rev < rec.Revision:
		rep.AddProblem(mvcc.ProblemMeta, "the store is at revision %d but revision %d was durably committed (witness): axon serve refuses it", rev, rec.Revision)
	default:
		return true
	}
	return false
}

func printCheckReport(w io.Writer, dataDir string, r *mvcc.CheckReport) {
	status := "OK"
	if !r.OK() {
		status = "FAILED"
	}
	fmt.Fprintf(w, "%s: %s\n", dataDir, status)
	fmt.Fprintf(w, "  storage format:     %s\n", r.Format)
	fmt.Fprintf(w, "  revision:           %d\n", r.Revision)
	fmt.Fprintf(w, "  compacted revision: %d (physically compacted to %d)\n", r.Compacted, r.CompactDone)
	fmt.Fprintf(w, "  revision records:   %d (%d chunks, %d changes)\n", r.Records, r.Chunks, r.Changes)
	fmt.Fprintf(w, "  history entries:    %d\n", r.History)
	fmt.Fprintf(w, "  keys:               %d (%d live, %d on leases)\n", r.Keys, r.LiveKeys, r.LeasedKeys)
	fmt.Fprintf(w, "  leases:             %d\n", r.Leases)
	fmt.Fprintf(w, "  problems:           %d\n", r.ProblemCount)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	if more := r.ProblemCount - int64(len(r.Problems)); more > 0 {
		fmt.Fprintf(w, "  ... and %d more problem(s)\n", more)
	}
}
