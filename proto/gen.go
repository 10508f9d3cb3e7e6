// Package proto holds Axon's own protobuf definitions; the generated Go code
// lives in proto/axonpb and is committed. It must not import any other Axon
// package.
package proto

//go:generate protoc --go_out=. --go_opt=paths=source_relative axon.proto
//go:generate sh -c "mv axon.pb.go axonpb/"
