package badger

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"strconv"
	"syscall"
)

// Badger's write-ahead logs (.mem) and value logs (.vlog) share one record
// format, and Badger's open cuts them at the first record it cannot read.
// validLogEnd reproduces that rule (as of badger v4.9) so that preflight can
// tell a cut that only drops a crash's torn tail from one that would
// destroy data after a damaged record: in both the file holds non-zero
// bytes past the cut, so preflight keeps a copy whenever it does.
const (
	logHeaderSize = 20 // the file header every log starts with
	bitTxn        = 1 << 6
	bitFinTxn     = 1 << 7
)

var castagnoliTable = crc32.MakeTable(crc32.Castagnoli)

// hashingReader hashes and counts what a record's decoding consumes.
type hashingReader struct {
	r *bufio.Reader
	h hash.Hash32
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func (h *hashingReader) ReadByte() (byte, error) {
	b, err := h.r.ReadByte()
	if err == nil {
		h.h.Write([]byte{b})
		h.n++
	}
	return b, err
}

// validLogEnd returns where Badger would cut the log at path, and the end
// of its non-zero bytes.
func validLogEnd(path string) (validEnd, dataEnd int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	if dataEnd, err = lastNonZero(f); err != nil {
		return 0, 0, err
	}
	if _, err := f.Seek(logHeaderSize, io.SeekStart); err != nil {
		return 0, 0, err
	}
	br := bufio.NewReaderSize(io.LimitReader(f, max(dataEnd-logHeaderSize, 0)+64), 1<<20)
	off := int64(logHeaderSize)
	validEnd = off
	var txnKey []byte // the commit timestamp bytes of the transaction being read
	for {
		hr := &hashingReader{r: br, h: crc32.New(castagnoliTable)}
		meta, err1 := hr.ReadByte()
		_, err2 := hr.ReadByte()
		klen, err3 := binary.ReadUvarint(hr)
		vlen, err4 := binary.ReadUvarint(hr)
		_, err5 := binary.ReadUvarint(hr)
		if errors.Join(err1, err2, err3, err4, err5) != nil || klen > 1<<16 || klen < 8 || vlen > 1<<31 {
			return validEnd, dataEnd, nil
		}
		buf := make([]byte, klen+vlen)
		if _, err := io.ReadFull(hr, buf); err != nil {
			return validEnd, dataEnd, nil
		}
		var crc [4]byte
		if _, err := io.ReadFull(br, crc[:]); err != nil || binary.BigEndian.Uint32(crc[:]) != hr.h.Sum32() {
			return validEnd, dataEnd, nil
		}
		off += hr.n + 4
		ts, val := buf[klen-8:klen], buf[klen:]
		switch {
		case meta&bitTxn != 0:
			if txnKey == nil {
				txnKey = ts
			}
			if !bytes.Equal(ts, txnKey) {
				return validEnd, dataEnd, nil
			}
		case meta&bitFinTxn != 0:
			fin, err := strconv.ParseUint(string(val), 10, 64)
			if err != nil || txnKey == nil || fin != ^binary.BigEndian.Uint64(txnKey) {
				return validEnd, dataEnd, nil
			}
			txnKey = nil
			validEnd = off
		default:
			if txnKey != nil {
				return validEnd, dataEnd, nil
			}
			validEnd = off
		}
	}
}

// lastNonZero returns the offset just past the last non-zero byte of f.
// Logs are sparse preallocated files (a value log spans 2 GiB), so only
// the data regions the filesystem reports are read.
func lastNonZero(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	type region struct{ start, end int64 }
	var regions []region
	fd := int(f.Fd())
	for off := int64(0); off < fi.Size(); {
		d, err := syscall.Seek(fd, off, 3) // SEEK_DATA
		if errors.Is(err, syscall.ENXIO) {
			break
		}
		if err != nil { // no SEEK_DATA here: read it all
			regions = []region{{0, fi.Size()}}
			break
		}
		h, err := syscall.Seek(fd, d, 4) // SEEK_HOLE
		if err != nil {
			h = fi.Size()
		}
		regions = append(regions, region{d, h})
		off = h
	}
	buf := make([]byte, 1<<20)
	for i := len(regions) - 1; i >= 0; i-- {
		for end := regions[i].end; end > regions[i].start; {
			start := max(regions[i].start, end-int64(len(buf)))
			n, err := f.ReadAt(buf[:end-start], start)
			if err != nil && !errors.Is(err, io.EOF) {
				return 0, err
			}
			if k := len(bytes.TrimRight(buf[:n], "\x00")); k > 0 {
				return start + int64(k), nil
			}
			end = start
		}
	}
	return 0, nil
}
