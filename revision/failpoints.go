package revision

import "errors"

// errFailpoint is what the error terms of this package's failpoints
// (docs/failpoints.md) inject; they exist only in a build made with
// `make build-failpoints`, so in the normal build nothing refers to it.
var errFailpoint = errors.New("revision: injected by a failpoint")
