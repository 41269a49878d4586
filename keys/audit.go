package keys

import "encoding/binary"

// LabelAuditMAC is the purpose label of an audit entry's MAC (HMAC-SHA256 with a volume KEK
// version's HMAC key, the same key derive mode uses, under its own label).
const LabelAuditMAC = "coffer/audit-mac/v1"

// AuditMACMessage is the HMAC input that authenticates audit entry seq, whose chain hash is
// hash:
//
//	LP("coffer/audit-mac/v1") || LP(volume id) || uint64be(seq) || LP(hash)
//
// The hash already covers seq, the previous entry's hash and the entry's fields; seq is
// repeated so a MAC can never be moved to another row.
func AuditMACMessage(volume [IDSize]byte, seq int64, hash []byte) []byte {
	b := make([]byte, 0, 4+len(LabelAuditMAC)+4+IDSize+8+4+len(hash))
	b = appendLPString(b, LabelAuditMAC)
	b = AppendLP(b, volume[:])
	b = binary.BigEndian.AppendUint64(b, uint64(seq))
	return AppendLP(b, hash)
}
