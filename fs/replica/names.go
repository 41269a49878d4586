package replica

import (
	"fmt"
	"strconv"
	"strings"

	"coffer/crypto/format"
)

// Replica object names (FORMAT.md 12.10), under the volume's own remote:
//
//	r/<E %08x>/<P %016x>.d           delta: the catalog from position P-1 to P
//	r/<E %08x>/<P %016x>.s.<k %04x>  part k of the snapshot of position P
const (
	Prefix      = "r/"
	KeysObject  = "r/keys" // passphrase volumes: what restore needs to rebuild the provider
	snapPartSep = ".s."
)

// EpochPrefix is the folder of epoch e's objects.
func EpochPrefix(e uint32) string { return fmt.Sprintf("%s%08x/", Prefix, e) }

// Name is the object name of the replica object h describes.
func Name(h format.ReplicaHeader) string {
	if h.Kind == format.ReplicaDelta {
		return fmt.Sprintf("%s%016x.d", EpochPrefix(h.Epoch), h.Position)
	}
	return fmt.Sprintf("%s%016x%s%04x", EpochPrefix(h.Epoch), h.Position, snapPartSep, h.Part)
}

// ParseName parses a replica object's name into kind, epoch, position and
// part. ok is false for anything else under r/ (such as r/keys).
func ParseName(name string) (h format.ReplicaHeader, ok bool) {
	rest, found := strings.CutPrefix(name, Prefix)
	if !found || len(rest) < 9 || rest[8] != '/' {
		return h, false
	}
	e, err := strconv.ParseUint(rest[:8], 16, 32)
	if err != nil || fmt.Sprintf("%08x", e) != rest[:8] {
		return h, false
	}
	rest = rest[9:]
	if len(rest) < 16 {
		return h, false
	}
	p, err := strconv.ParseUint(rest[:16], 16, 64)
	if err != nil || fmt.Sprintf("%016x", p) != rest[:16] {
		return h, false
	}
	h.Epoch, h.Position = uint32(e), p
	switch tail := rest[16:]; {
	case tail == ".d":
		h.Kind = format.ReplicaDelta
	case strings.HasPrefix(tail, snapPartSep) && len(tail) == len(snapPartSep)+4:
		k, err := strconv.ParseUint(tail[len(snapPartSep):], 16, 16)
		if err != nil || fmt.Sprintf("%04x", k) != tail[len(snapPartSep):] {
			return h, false
		}
		h.Kind, h.Part = format.ReplicaSnapshot, uint16(k)
	default:
		return h, false
	}
	return h, true
}
