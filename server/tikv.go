package server

import (
	"errors"

	"github.com/axon-kv/axon/backend"
)

// openTiKV is replaced once the TiKV engine lands.
func openTiKV(cfg Config) (backend.Backend, error) {
	return nil, errors.New("tikv backend not built yet")
}
