package server

import (
	"errors"
	"fmt"

	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/witness"
)

// ErrStoreDamaged is wrapped by the refusal to serve a store that opened
// older or emptier than what it had durably committed.
var ErrStoreDamaged = errors.New("the data dir is damaged")

// usesWitness: only a node that owns its data dir keeps a witness. A shared
// or remote backend (TiKV) has no files of ours to be damaged.
func (s *Server) usesWitness() bool {
	return s.badgerDB != nil && s.cfg.DataDir != ""
}

// checkWitness compares the store as the engine opened it with the data
// dir's witness, before anything is written to it. verified is true when a
// witness existed and the store matches it.
func (s *Server) checkWitness() (verified bool, err error) {
	rec, ok, err := witness.Read(s.cfg.DataDir)
	if errors.Is(err, witness.ErrDamaged) {
		s.cfg.Logger.Warn("the witness file is damaged; accepting the store as it opened and rewriting the witness",
			"err", err)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read witness: %w", err)
	}
	if !ok {
		return false, nil
	}
	id, rev, fresh, err := mvcc.Identity(s.be)
	if err != nil {
		return false, fmt.Errorf("read store identity: %w", err)
	}
	where := ""
	if r := s.badgerDB.Rescue(); r != "" {
		where = "; what opening set aside is kept in " + r
	}
	switch {
	case fresh:
		return false, fmt.Errorf("%w: %s: the storage engine opened an empty store, but store %s had durably committed revision %d; "+
			"refusing to serve it (its MANIFEST or logs are damaged or missing%s)", ErrStoreDamaged, s.cfg.DataDir, rec.StoreID, rec.Revision, where)
	case id == "":
		return false, fmt.Errorf("%w: %s: the store opened without its identity record, but store %s had durably committed revision %d; "+
			"refusing to serve it (its engine files are damaged%s)", ErrStoreDamaged, s.cfg.DataDir, rec.StoreID, rec.Revision, where)
	case id != rec.StoreID:
		return false, fmt.Errorf("%w: %s: the storage engine holds store %q, but the witness names store %s; "+
			"refusing to serve another store's files%s", ErrStoreDamaged, s.cfg.DataDir, id, rec.StoreID, where)
	case rev < rec.Revision:
		return false, fmt.Errorf("%w: %s: the store opened at revision %d, but revision %d had been durably committed; "+
			"refusing to serve an older store (its engine files are damaged%s)", ErrStoreDamaged, s.cfg.DataDir, rev, rec.Revision, where)
	}
	return true, nil
}

// startWitness writes the witness for the store as recovered and keeps it
// moving with every committed group. What preflight set aside is deleted
// once the store is known to hold everything it had committed.
func (s *Server) startWitness(verified bool) error {
	id, rev, _, err := mvcc.Identity(s.be)
	if err != nil {
		return fmt.Errorf("read store identity: %w", err)
	}
	w, err := witness.Create(s.cfg.DataDir, witness.Record{StoreID: id, Revision: rev}, s.cfg.Logger)
	if err != nil {
		return err
	}
	s.witness = w
	if r := s.badgerDB.Rescue(); r != "" {
		if verified {
			if err := s.badgerDB.DiscardRescue(); err != nil {
				s.cfg.Logger.Warn("cannot remove the rescue dir", "dir", r, "err", err)
			}
		} else {
			s.cfg.Logger.Warn("no witness to verify the store against: keeping what opening set aside; remove it once the data is known to be complete",
				"dir", r)
		}
	}
	return nil
}
