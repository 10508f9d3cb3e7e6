package badger

import "golang.org/x/sys/unix"

const canTrim = true

func madviseDontNeed(addr, length uintptr) error {
	if _, _, e := unix.Syscall(unix.SYS_MADVISE, addr, length, unix.MADV_DONTNEED); e != 0 {
		return e
	}
	return nil
}
