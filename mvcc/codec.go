package mvcc

import (
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/proto/axonpb"
)

// EncodeKV encodes a key state for the latest and history entries.
func EncodeKV(kv *axonpb.KeyValue) []byte {
	b, err := proto.Marshal(kv)
	if err != nil {
		panic(err) // marshalling a well-formed message cannot fail
	}
	return b
}

// DecodeKV decodes EncodeKV. It is on every read of a value, so it walks
// the wire format by hand instead of through reflection; the value is
// copied once.
func DecodeKV(b []byte) (*axonpb.KeyValue, error) {
	var value []byte
	m, err := decodeState(b, &value)
	if err != nil {
		return nil, err
	}
	value = append([]byte(nil), value...)
	return &axonpb.KeyValue{Value: value, CreateRevision: m.CreateRevision, ModRevision: m.ModRevision,
		Version: m.Version, Lease: m.Lease, Deleted: m.Deleted}, nil
}

// ToEtcd converts a stored state to the API form.
func ToEtcd(key []byte, kv *axonpb.KeyValue) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{
		Key:            key,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Version:        kv.Version,
		Value:          kv.Value,
		Lease:          kv.Lease,
	}
}

// FromEtcd converts an API key-value to the stored form.
func FromEtcd(kv *mvccpb.KeyValue) *axonpb.KeyValue {
	return &axonpb.KeyValue{
		Value:          kv.Value,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Version:        kv.Version,
		Lease:          kv.Lease,
	}
}

// EncodeRecord encodes a revision record.
func EncodeRecord(r *axonpb.RevisionRecord) []byte {
	b, err := proto.Marshal(r)
	if err != nil {
		panic(err)
	}
	return b
}

// DecodeRecord decodes EncodeRecord.
func DecodeRecord(b []byte) (*axonpb.RevisionRecord, error) {
	r := &axonpb.RevisionRecord{}
	if err := proto.Unmarshal(b, r); err != nil {
		return nil, err
	}
	return r, nil
}

// decodeMeta reads a stored state's revisions, version, lease and deletion
// mark without copying its value: rebuilding the index at open reads every
// history entry, and the values are most of their bytes.
func decodeMeta(b []byte) (stateMeta, error) { return decodeState(b, nil) }

// decodeState decodes a stored axonpb.KeyValue; *value is set to the
// value's bytes within b (not a copy) unless value is nil.
func decodeState(b []byte, value *[]byte) (kv stateMeta, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return kv, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return kv, protowire.ParseError(n)
			}
			b = b[n:]
			switch num {
			case 2:
				kv.CreateRevision = int64(v)
			case 3:
				kv.ModRevision = int64(v)
			case 4:
				kv.Version = int64(v)
			case 5:
				kv.Lease = int64(v)
			case 6:
				kv.Deleted = v != 0
			case subField:
				kv.Sub, kv.HasSub = int64(v), true
			}
		case num == 1 && typ == protowire.BytesType && value != nil:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return kv, protowire.ParseError(n)
			}
			*value = v
			b = b[n:]
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return kv, protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return kv, nil
}

// stateMeta is a stored state without its value.
type stateMeta struct {
	CreateRevision, ModRevision, Version, Lease int64
	Deleted                                     bool
	// Sub is the sub-revision compaction wrote into a state whose
	// revision record it removed (see persistSubs); HasSub tells it is set.
	Sub    int64
	HasSub bool
}
