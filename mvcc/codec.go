package mvcc

import (
	"go.etcd.io/etcd/api/v3/mvccpb"
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

// DecodeKV decodes EncodeKV.
func DecodeKV(b []byte) (*axonpb.KeyValue, error) {
	kv := &axonpb.KeyValue{}
	if err := proto.Unmarshal(b, kv); err != nil {
		return nil, err
	}
	return kv, nil
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
