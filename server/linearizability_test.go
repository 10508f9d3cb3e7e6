package server_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type kvInput struct {
	op       string // get, put, cas
	key      string
	value    string // put/cas: new value
	expected string // cas: value compared against
}

type kvOutput struct {
	value   string // get
	ok      bool   // cas succeeded
	unknown bool   // the client never learned the outcome
}

// kvModel is a register per key; a CAS whose outcome is unknown is placed
// by the checker wherever it fits (its return time is open).
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(kvInput).key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range byKey {
			out = append(out, ops)
		}
		return out
	},
	Init: func() interface{} { return "" },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		st, in, out := state.(string), input.(kvInput), output.(kvOutput)
		switch in.op {
		case "get":
			return out.value == st, st
		case "put":
			return true, in.value
		default: // cas
			if out.unknown {
				if st == in.expected {
					return true, in.value
				}
				return true, st
			}
			if st == in.expected {
				return out.ok, in.value
			}
			return !out.ok, st
		}
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(kvInput), output.(kvOutput)
		return fmt.Sprintf("%s(%s,%q,%q) -> %+v", in.op, in.key, in.expected, in.value, out)
	},
}

// refused reports errors that prove the write was never applied: Axon
// answers "no leader" only when it sent the request to no writer, and a
// connection that could not be made carried nothing.
func refused(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, rpctypes.ErrNoLeader) {
		return true
	}
	s, ok := status.FromError(err)
	return ok && s.Code() == codes.Unavailable && strings.Contains(s.Message(), "connection refused")
}

// TestLinearizabilityDuringFailover records concurrent Put/Get/CAS
// histories through all three nodes while the leader is killed, then checks
// them with porcupine.
func TestLinearizabilityDuringFailover(t *testing.T) {
	nodes := startNodes(t, sharedBackends["tikv-mock"](t), 3)
	lead := waitLeader(t, nodes)

	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	var mu sync.Mutex
	var history []porcupine.Operation
	record := func(client int, in kvInput, call int64, out kvOutput, ret int64) {
		mu.Lock()
		history = append(history, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
		mu.Unlock()
	}

	var keys []string
	for i := 0; i < 12; i++ {
		keys = append(keys, fmt.Sprintf("/lin/%02d", i))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := 0; c < 6; c++ {
		n := nodes[c%len(nodes)]
		wg.Add(1)
		go func(c int, n *node) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(c), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				in := kvInput{key: keys[rnd.IntN(len(keys))], value: fmt.Sprintf("c%d-%d", c, i)}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				call := now()
				switch r := rnd.IntN(10); {
				case r < 4:
					in.op = "get"
					resp, err := n.cli.Get(ctx, in.key)
					ret := now()
					if err == nil {
						out := kvOutput{}
						if len(resp.Kvs) > 0 {
							out.value = string(resp.Kvs[0].Value)
						}
						record(c, in, call, out, ret)
					}
				case r < 7:
					in.op = "put"
					_, err := n.cli.Put(ctx, in.key, in.value)
					ret := now()
					if err != nil {
						ret = math.MaxInt64
					}
					if !refused(err) {
						record(c, in, call, kvOutput{unknown: err != nil}, ret)
					}
				default:
					in.op = "cas"
					// Compare against what this client last read, or empty.
					g, gerr := n.cli.Get(ctx, in.key)
					if gerr == nil && len(g.Kvs) > 0 {
						in.expected = string(g.Kvs[0].Value)
					}
					call = now()
					cmp := clientv3.Compare(clientv3.Value(in.key), "=", in.expected)
					if in.expected == "" {
						cmp = clientv3.Compare(clientv3.CreateRevision(in.key), "=", 0)
					}
					resp, err := n.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(in.key, in.value)).Commit()
					ret := now()
					out := kvOutput{}
					if err != nil {
						out.unknown, ret = true, math.MaxInt64
					} else {
						out.ok = resp.Succeeded
					}
					if !refused(err) {
						record(c, in, call, out, ret)
					}
				}
				cancel()
				if n.killed() {
					return
				}
			}
		}(c, n)
	}
	time.Sleep(800 * time.Millisecond)
	lead.kill()
	var survivors []*node
	for _, n := range nodes {
		if n != lead {
			survivors = append(survivors, n)
		}
	}
	waitLeader(t, survivors)
	time.Sleep(800 * time.Millisecond)
	close(stop)
	wg.Wait()

	unknown := 0
	for _, op := range history {
		if op.Output.(kvOutput).unknown {
			unknown++
		}
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, history, 60*time.Second)
	t.Logf("%d operations (%d with unknown outcome) checked: %v", len(history), unknown, res)
	if res != porcupine.Ok {
		_ = info
		t.Fatalf("history is not linearizable (result %v)", res)
	}
}
