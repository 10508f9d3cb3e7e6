//go:build !linux

package badger

import "errors"

const canTrim = false

func madviseDontNeed(addr, length uintptr) error {
	return errors.New("not supported on this system")
}
