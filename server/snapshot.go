package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/version"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/mvcc"
)

// Axon snapshot format, version 1: a copy of every backend key and value,
// read from one backend snapshot, so it is consistent at one revision.
//
//	file    = body sha256(body)
//	body    = header record* end padding
//	header  = "AXONSNAP" version:uint32 0:uint32 revision:int64 compacted:int64   (32 bytes, big-endian)
//	record  = 0x01 uvarint(len(key)) key uvarint(len(value)) value
//	end     = 0x00 uvarint(number of records)
//	padding = zero bytes up to a multiple of 512 bytes
//
// Records come in backend key order. The padding makes the file size 32
// more than a multiple of 512, which is what `etcdctl snapshot save`
// checks before it keeps a downloaded snapshot, so etcdctl can fetch Axon
// snapshots too (only `axon snapshot restore` reads them). The checksum
// covers the whole body; a restore verifies it before writing anything.

const (
	snapshotMagic   = "AXONSNAP"
	snapshotVersion = 1
	snapshotHeader  = 32
	snapshotAlign   = 512
	// snapshotChunk is the blob size of one SnapshotResponse.
	snapshotChunk = 64 << 10

	recordPair = 0x01
	recordEnd  = 0x00
)

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	Revision        int64
	CompactRevision int64
	// Records is the number of backend key/value pairs.
	Records int64
	// Size is the file size, checksum included.
	Size int64
	// SHA256 is the checksum of the body.
	SHA256 [sha256.Size]byte
}

// WriteSnapshot writes a snapshot of snap to w.
func WriteSnapshot(w io.Writer, snap backend.Snapshot) (SnapshotInfo, error) {
	var info SnapshotInfo
	cur, comp, err := mvcc.Reader{Snap: snap}.Meta()
	if err != nil {
		return info, fmt.Errorf("read revisions: %w", err)
	}
	info.Revision, info.CompactRevision = cur, comp
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	bw := bufio.NewWriterSize(cw, snapshotChunk)

	var hdr [snapshotHeader]byte
	copy(hdr[:8], snapshotMagic)
	binary.BigEndian.PutUint32(hdr[8:12], snapshotVersion)
	binary.BigEndian.PutUint64(hdr[16:24], uint64(cur))
	binary.BigEndian.PutUint64(hdr[24:32], uint64(comp))
	bw.Write(hdr[:])

	var lenBuf [binary.MaxVarintLen64]byte
	err = snap.Scan(nil, nil, backend.ScanOptions{}, func(k, v []byte) error {
		bw.WriteByte(recordPair)
		bw.Write(binary.AppendUvarint(lenBuf[:0], uint64(len(k))))
		bw.Write(k)
		bw.Write(binary.AppendUvarint(lenBuf[:0], uint64(len(v))))
		_, err := bw.Write(v)
		info.Records++
		return err
	})
	if err != nil {
		return info, err
	}
	bw.WriteByte(recordEnd)
	bw.Write(binary.AppendUvarint(lenBuf[:0], uint64(info.Records)))
	if err := bw.Flush(); err != nil {
		return info, err
	}
	if pad := (snapshotAlign - cw.n%snapshotAlign) % snapshotAlign; pad > 0 {
		if _, err := cw.Write(make([]byte, pad)); err != nil {
			return info, err
		}
	}
	copy(info.SHA256[:], h.Sum(nil))
	if _, err := w.Write(info.SHA256[:]); err != nil {
		return info, err
	}
	info.Size = cw.n + sha256.Size
	return info, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ErrBadSnapshot is returned for a file that is not an intact Axon
// snapshot.
var ErrBadSnapshot = errors.New("not an intact axon snapshot")

// ReadSnapshot reads a snapshot of size bytes from r, calling fn (when not
// nil) for every record in order. key and value are valid only during the
// call. The checksum is known to match only once ReadSnapshot returned nil:
// verify a file first (fn nil) before acting on its records.
func ReadSnapshot(r io.Reader, size int64, fn func(key, value []byte) error) (SnapshotInfo, error) {
	info := SnapshotInfo{Size: size}
	bad := func(format string, args ...any) (SnapshotInfo, error) {
		return info, fmt.Errorf("%w: %s", ErrBadSnapshot, fmt.Sprintf(format, args...))
	}
	if size < snapshotHeader+2+sha256.Size || (size-sha256.Size)%snapshotAlign != 0 {
		return bad("size %d is not a snapshot's", size)
	}
	h := sha256.New()
	body := bufio.NewReaderSize(io.TeeReader(io.LimitReader(r, size-sha256.Size), h), snapshotChunk)
	hr := &countingReader{r: body}

	var hdr [snapshotHeader]byte
	if _, err := io.ReadFull(body, hdr[:]); err != nil {
		return bad("header: %v", err)
	}
	if string(hdr[:8]) != snapshotMagic {
		return bad("no %s header", snapshotMagic)
	}
	if v := binary.BigEndian.Uint32(hdr[8:12]); v != snapshotVersion {
		return bad("format version %d, this axon reads %d", v, snapshotVersion)
	}
	info.Revision = int64(binary.BigEndian.Uint64(hdr[16:24]))
	info.CompactRevision = int64(binary.BigEndian.Uint64(hdr[24:32]))
	read := int64(snapshotHeader)

	var key, val []byte
	for {
		kind, err := body.ReadByte()
		if err != nil {
			return bad("truncated after %d records", info.Records)
		}
		read++
		if kind == recordEnd {
			n, err := binary.ReadUvarint(hr)
			if err != nil {
				return bad("end record: %v", err)
			}
			read += int64(hr.take())
			if int64(n) != info.Records {
				return bad("end record counts %d records, read %d", n, info.Records)
			}
			break
		}
		if kind != recordPair {
			return bad("unknown record type %#x after %d records", kind, info.Records)
		}
		if key, err = readChunk(hr, key, size); err != nil {
			return bad("record %d key: %v", info.Records, err)
		}
		if val, err = readChunk(hr, val, size); err != nil {
			return bad("record %d value: %v", info.Records, err)
		}
		read += int64(hr.take())
		info.Records++
		if fn != nil {
			if err := fn(key, val); err != nil {
				return info, err
			}
		}
	}
	// The rest of the body is padding.
	pad, err := io.ReadAll(body)
	if err != nil {
		return bad("padding: %v", err)
	}
	if read+int64(len(pad)) != size-sha256.Size || len(pad) >= snapshotAlign || len(bytes.Trim(pad, "\x00")) != 0 {
		return bad("trailing data after the end record")
	}
	copy(info.SHA256[:], h.Sum(nil))
	var sum [sha256.Size]byte
	if _, err := io.ReadFull(r, sum[:]); err != nil {
		return bad("checksum: %v", err)
	}
	if sum != info.SHA256 {
		return bad("checksum mismatch")
	}
	return info, nil
}

// countingReader reads lengths and bytes from the buffered body, counting
// them.
type countingReader struct {
	r *bufio.Reader
	n int
}

func (h *countingReader) ReadByte() (byte, error) {
	b, err := h.r.ReadByte()
	if err == nil {
		h.n++
	}
	return b, err
}

func (h *countingReader) take() int { n := h.n; h.n = 0; return n }

func readChunk(hr *countingReader, buf []byte, limit int64) ([]byte, error) {
	n, err := binary.ReadUvarint(hr)
	if err != nil {
		return nil, err
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("length %d past the end of the file", n)
	}
	if uint64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	m, err := io.ReadFull(hr.r, buf)
	hr.n += m
	return buf, err
}

// RestoreSnapshot verifies the snapshot in r (size bytes; r is read twice,
// so it must be an io.ReadSeeker) and copies its records into be, which
// should be empty, in batches.
func RestoreSnapshot(r io.ReadSeeker, size int64, be backend.Backend) (SnapshotInfo, error) {
	if _, err := ReadSnapshot(r, size, nil); err != nil {
		return SnapshotInfo{}, err
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return SnapshotInfo{}, err
	}
	l := mvcc.NewLoader(be)
	info, err := ReadSnapshot(r, size, l.Put)
	if err != nil {
		return info, err
	}
	// Records loaded, the last batch not yet flushed.
	// gofail: var snapshotRestoreBeforeFlush struct{}
	// return info, errors.New("failpoint snapshotRestoreBeforeFlush")
	return info, l.Flush()
}

// Snapshot streams a snapshot of the backend (see the format above),
// consistent at the revision of the first message's header.
func (m *maintenanceService) Snapshot(_ *pb.SnapshotRequest, stream grpc.ServerStreamingServer[pb.SnapshotResponse]) error {
	s := m.s
	snap, err := s.be.Snapshot()
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	defer snap.Close()
	cur, _, err := mvcc.Reader{Snap: snap}.Meta()
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	first := true
	sw := &snapshotSender{send: func(blob []byte) error {
		resp := &pb.SnapshotResponse{Blob: blob}
		if first {
			resp.Header = s.header()
			resp.Header.Revision = cur
			resp.Version = version.Version
			first = false
		}
		return stream.Send(resp)
	}}
	info, err := WriteSnapshot(sw, snap)
	if err == nil {
		err = sw.flush()
	}
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Error(codes.Internal, "snapshot: "+err.Error())
	}
	s.cfg.Logger.Info("sent snapshot", "revision", info.Revision, "records", info.Records, "bytes", info.Size)
	return nil
}

// snapshotSender cuts the stream into SnapshotResponse blobs.
type snapshotSender struct {
	buf  []byte
	send func([]byte) error
}

func (w *snapshotSender) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), snapshotChunk-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == snapshotChunk {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *snapshotSender) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.send(w.buf) // Send has encoded the message when it returns
	w.buf = w.buf[:0]
	return err
}
