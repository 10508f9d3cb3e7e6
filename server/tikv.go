package server

import (
	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/tikv"
)

func openTiKV(cfg Config) (backend.Backend, error) {
	return tikv.Open(tikv.Options{PDEndpoints: cfg.PDEndpoints, Logger: cfg.Logger})
}
