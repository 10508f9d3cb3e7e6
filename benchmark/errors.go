package benchmark

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Outcomes that are not transport errors but are reported with the gRPC code
// kube-apiserver would map them to.
var (
	// errAlreadyExists: a create found the key present.
	errAlreadyExists = status.Error(codes.AlreadyExists, "key already exists")
	// errConflict: a GuaranteedUpdate ran out of conflict retries.
	errConflict = status.Error(codes.Aborted, "update conflict retries exhausted")
	// errNotFound: a get or update found no object where one was preloaded.
	errNotFound = status.Error(codes.NotFound, "object not found")
)

// Classify names err by its gRPC code ("Unavailable", "DeadlineExceeded",
// ...): etcd's client errors carry one, context errors map to their codes,
// and anything else is "Unknown". A nil error is "".
func Classify(err error) string {
	if err == nil {
		return ""
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return codes.DeadlineExceeded.String()
	}
	if errors.Is(err, context.Canceled) {
		return codes.Canceled.String()
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code().String()
	}
	if s, ok := status.FromError(err); ok {
		return s.Code().String()
	}
	return codes.Unknown.String()
}
