package benchmark

import (
	"encoding/binary"
	"math/rand/v2"
	"strconv"
	"time"
)

// KeyGen makes kube-apiserver-shaped keys,
//
//	/registry/<resource>-<tag>/ns-<nnnn>/<name>
//
// where the name is a zero-padded object index sized so that the whole key
// is Size bytes (longer only when the index needs more digits). Object i
// lives in namespace i mod Namespaces, so a namespace prefix is a natural
// watch or list target. Tag separates runs against the same server.
type KeyGen struct {
	Resource   string
	Tag        string
	Namespaces int
	Size       int

	prefix string
	nsw    int
}

// NewKeyGen returns a generator for resource; namespaces < 1 means 1.
func NewKeyGen(resource, tag string, namespaces, size int) *KeyGen {
	if namespaces < 1 {
		namespaces = 1
	}
	k := &KeyGen{Resource: resource, Tag: tag, Namespaces: namespaces, Size: size}
	k.prefix = "/registry/" + resource
	if tag != "" {
		k.prefix += "-" + tag
	}
	k.prefix += "/"
	k.nsw = len(strconv.Itoa(namespaces - 1))
	if k.nsw < 4 {
		k.nsw = 4
	}
	return k
}

// Prefix is the resource prefix every key starts with ("/registry/pods-x/").
func (k *KeyGen) Prefix() string { return k.prefix }

// NamespacePrefix is the prefix of namespace ns's keys.
func (k *KeyGen) NamespacePrefix(ns int) string {
	return string(k.appendNamespace(nil, ns))
}

func (k *KeyGen) appendNamespace(dst []byte, ns int) []byte {
	dst = append(dst, k.prefix...)
	dst = append(dst, "ns-"...)
	dst = appendPadded(dst, uint64(ns), k.nsw)
	return append(dst, '/')
}

// AppendKey appends object i's key to dst.
func (k *KeyGen) AppendKey(dst []byte, i int) []byte {
	start := len(dst)
	dst = k.appendNamespace(dst, i%k.Namespaces)
	dst = append(dst, "obj-"...)
	width := k.Size - (len(dst) - start)
	return appendPadded(dst, uint64(i), width)
}

// Key returns object i's key.
func (k *KeyGen) Key(i int) string { return string(k.AppendKey(nil, i)) }

// appendPadded appends v in decimal, left-padded with zeros to width.
func appendPadded(dst []byte, v uint64, width int) []byte {
	var buf [20]byte
	n := len(buf)
	for {
		n--
		buf[n] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	for pad := width - (len(buf) - n); pad > 0; pad-- {
		dst = append(dst, '0')
	}
	return append(dst, buf[n:]...)
}

// prefixEnd is the etcd range end covering every key starting with p.
func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00"
}

// runTag is a short string that differs between runs (base 36 of the clock
// plus randomness), used to keep each run's keys apart.
func runTag() string {
	v := uint64(time.Now().UnixNano()/1e6)<<8 ^ rand.Uint64()&0xff
	s := strconv.FormatUint(v, 36)
	if len(s) > 6 {
		s = s[len(s)-6:]
	}
	return s
}

// Values carry an optional timestamp stamp in their first bytes so that a
// watcher can tell when the value was sent: magic, then the UnixNano time.
const (
	stampMagic = "AXB1"
	stampLen   = len(stampMagic) + 8
)

// newValue returns a size-byte value of pseudo-random printable bytes, so
// that storage compression does not make it artificially small.
func newValue(size int, rnd *rand.Rand) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
	v := make([]byte, size)
	for i := range v {
		v[i] = alphabet[rnd.IntN(len(alphabet))]
	}
	return v
}

// stampValue writes t into v's first stampLen bytes; v must be long enough.
func stampValue(v []byte, t time.Time) {
	copy(v, stampMagic)
	binary.LittleEndian.PutUint64(v[len(stampMagic):], uint64(t.UnixNano()))
}

// valueStamp reads the send time written by stampValue.
func valueStamp(v []byte) (time.Time, bool) {
	if len(v) < stampLen || string(v[:len(stampMagic)]) != stampMagic {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.LittleEndian.Uint64(v[len(stampMagic):]))), true
}
