package server

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	protov2 "google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/mvcc"
)

// rangeChunk builds one RangeStreamResponse directly in protobuf wire
// form: each value is copied once, from the store's memory into the
// outgoing message, instead of into a decoded key-value that gRPC then
// encodes into a second buffer. Chunks are filled in a stream's two
// buffers (chunkBuffers), so a stream holds at most two chunks however
// fast it reads and however slowly the client takes them.
//
// The message is RangeStreamResponse{range_response: RangeResponse{kvs...,
// header, more, count}}. The RangeResponse's length is only known at the
// end, so the buffer starts with room for the outer field's tag and the
// longest length varint; finish writes them right before the RangeResponse
// and the message starts there.
type rangeChunk struct {
	cb   *chunkBuf
	pool *chunkBuffers
	buf  []byte
}

// chunkPrefix is room for field 1's tag (one byte) and a length varint of
// up to five bytes (lengths below 32 GiB).
const chunkPrefix = 6

// chunkTail is room for the last message's header, more and count.
const chunkTail = 128

// chunkBuffers is one stream's chunk buffers: at most two, one being
// filled while gRPC sends the other. gRPC hands a buffer back (Put, through
// the mem.Buffer's reference count) once it has written all of it to the
// connection; filling a third chunk waits for that, which is how a slow
// client's flow control reaches the stream without a third buffer.
type chunkBuffers struct {
	bufs [2]chunkBuf
	made int // buffers handed out so far (at most len(bufs))
	free chan *chunkBuf
}

type chunkBuf struct {
	full []byte // the whole buffer
	view []byte // the message within it, as given to gRPC
}

func newChunkBuffers() *chunkBuffers {
	return &chunkBuffers{free: make(chan *chunkBuf, 2)}
}

// chunk returns an empty chunk with room for capacity bytes of key-values,
// waiting (until ctx ends) for gRPC to let go of a buffer when both are
// in use.
func (p *chunkBuffers) chunk(ctx context.Context, capacity int) (*rangeChunk, error) {
	var cb *chunkBuf
	select {
	case cb = <-p.free:
	default:
		if p.made < len(p.bufs) {
			cb = &p.bufs[p.made]
			p.made++
		} else {
			select {
			case cb = <-p.free:
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		}
	}
	if need := chunkPrefix + capacity + chunkTail; cap(cb.full) < need {
		cb.full = make([]byte, 0, need)
	}
	return &rangeChunk{cb: cb, pool: p, buf: cb.full[:chunkPrefix]}, nil
}

// Get implements mem.BufferPool; gRPC only puts these buffers back.
func (p *chunkBuffers) Get(n int) *[]byte {
	b := make([]byte, n)
	return &b
}

// Put implements mem.BufferPool: gRPC is done with a chunk.
func (p *chunkBuffers) Put(b *[]byte) {
	for i := range p.bufs {
		if b == &p.bufs[i].view {
			p.free <- &p.bufs[i]
			return
		}
	}
}

// size is the bytes added so far.
func (c *rangeChunk) size() int { return len(c.buf) - chunkPrefix }

// kvSize is the bytes appendKV appends for e's key-value (field) and the
// length of the KeyValue message within them.
func kvSize(e mvcc.Entry, value []byte, lease int64) (field, message int) {
	n := bytesFieldSize(1, len(e.Key)) + varintFieldSize(2, e.Create) + varintFieldSize(3, e.Mod) +
		varintFieldSize(4, e.Version) + bytesFieldSize(5, len(value)) + varintFieldSize(6, lease)
	return protowire.SizeTag(2) + protowire.SizeBytes(n), n
}

// add appends e's key-value to kvs (RangeResponse field 2).
func (c *rangeChunk) add(e mvcc.Entry, value []byte, lease int64) {
	c.buf = appendKV(c.buf, e, value, lease)
}

// appendKV appends e's key-value, with value and lease, as one of
// RangeResponse's kvs (field 2, an mvccpb.KeyValue).
func appendKV(b []byte, e mvcc.Entry, value []byte, lease int64) []byte {
	_, n := kvSize(e, value, lease)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	if len(e.Key) > 0 { // proto3: empty bytes are not encoded
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, e.Key)
	}
	b = appendVarintField(b, 2, e.Create)
	b = appendVarintField(b, 3, e.Mod)
	b = appendVarintField(b, 4, e.Version)
	if len(value) > 0 {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, value)
	}
	return appendVarintField(b, 6, lease)
}

// appendRangeTail appends the fields of a RangeResponse other than kvs:
// the encodings of two parts of a message, one after the other, are the
// encoding of the whole, whatever the order of the fields.
func appendRangeTail(b []byte, header *pb.ResponseHeader, more bool, count int64) []byte {
	b, err := protov2.MarshalOptions{}.MarshalAppend(b, &pb.RangeResponse{Header: header, More: more, Count: count})
	if err != nil {
		panic(err) // a well-formed message cannot fail to encode
	}
	return b
}

// finish appends the last message's header, more and count (when header
// is set) and returns the message to send. The chunk is not used after.
func (c *rangeChunk) finish(header *pb.ResponseHeader, more bool, count int64) *rawMessage {
	b := c.buf
	if header != nil {
		b = appendRangeTail(b, header, more, count)
	}
	inner := len(b) - chunkPrefix
	prefix := protowire.AppendVarint(protowire.AppendTag(make([]byte, 0, chunkPrefix), 1, protowire.BytesType), uint64(inner))
	start := chunkPrefix - len(prefix)
	copy(b[start:], prefix)
	c.cb.full = b[:0] // keeps any growth of the buffer
	c.cb.view = b[start:]
	if mem.IsBelowBufferPoolingThreshold(cap(c.cb.view)) {
		// gRPC would not give so small a buffer back: it leaves the pool.
		view := c.cb.view
		c.cb.full, c.cb.view = nil, nil
		c.pool.free <- c.cb
		return &rawMessage{bufs: mem.BufferSlice{mem.SliceBuffer(view)}}
	}
	return &rawMessage{bufs: mem.BufferSlice{mem.NewBuffer(&c.cb.view, c.pool)}}
}

func bytesFieldSize(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func varintFieldSize(num protowire.Number, v int64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(uint64(v))
}

func appendVarintField(b []byte, num protowire.Number, v int64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

// rawMessage is a message already in protobuf wire form, in one or more
// pieces.
type rawMessage struct{ bufs mem.BufferSlice }

// serverCodec is gRPC's proto codec, except that a rawMessage is sent as
// the bytes it holds.
type serverCodec struct{ encoding.CodecV2 }

func newServerCodec() serverCodec {
	return serverCodec{encoding.GetCodecV2(proto.Name)}
}

func (c serverCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*rawMessage); ok {
		return r.bufs, nil
	}
	return c.CodecV2.Marshal(v)
}
