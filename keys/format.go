package keys

import (
	"encoding/binary"
	"encoding/hex"
	"strconv"

	"coffer/crypto/format"
)

// Purpose labels. Each is the first length-prefixed field of the bytes it introduces, so the
// same key can never be asked to authenticate or derive one kind of input as another.
const (
	LabelWrap          = "coffer/dek-wrap/v1"
	LabelDerive        = "coffer/dek-derive/v1"
	LabelPassphraseKEK = "coffer/passphrase-kek/v1"
	LabelPassKWK       = "coffer/passphrase-kwk/v1"
	LabelPassCheck     = "coffer/passphrase-check/v1"
	LabelSelfTest      = "coffer/kek-selftest/v1"
)

// AppendLP appends a length-prefixed field: a 4-byte big-endian length, then the bytes.
// It is format.AppendLP, kept here for the callers of keys.
func AppendLP(b, field []byte) []byte { return format.AppendLP(b, field) }

func appendLPString(b []byte, s string) []byte { return format.AppendLP(b, []byte(s)) }

// WrapAAD is the associated data of a wrapped DEK:
//
//	LP("coffer/dek-wrap/v1") || LP(volume id) || LP(file id) || LP(chain) || uint32be(version)
func WrapAAD(id FileIdentity, kek KEKRef) []byte {
	b := make([]byte, 0, 4+len(LabelWrap)+4+IDSize+4+IDSize+4+len(kek.Chain)+4)
	b = appendLPString(b, LabelWrap)
	b = AppendLP(b, id.Volume[:])
	b = AppendLP(b, id.File[:])
	b = appendLPString(b, kek.Chain)
	return binary.BigEndian.AppendUint32(b, kek.Version)
}

// DeriveMessage is the HMAC input of a derived DEK:
//
//	LP("coffer/dek-derive/v1") || LP(volume id) || LP(file id) || LP(salt)
func DeriveMessage(id FileIdentity, salt []byte) []byte {
	b := make([]byte, 0, 4+len(LabelDerive)+4+IDSize+4+IDSize+4+len(salt))
	b = appendLPString(b, LabelDerive)
	b = AppendLP(b, id.Volume[:])
	b = AppendLP(b, id.File[:])
	return AppendLP(b, salt)
}

// PassphraseKEKAAD is the associated data of a passphrase provider's sealed KEK material:
//
//	LP("coffer/passphrase-kek/v1") || LP(volume id) || LP(chain) || uint32be(version)
func PassphraseKEKAAD(volume [IDSize]byte, kek KEKRef) []byte {
	b := make([]byte, 0, 4+len(LabelPassphraseKEK)+4+IDSize+4+len(kek.Chain)+4)
	b = appendLPString(b, LabelPassphraseKEK)
	b = AppendLP(b, volume[:])
	b = appendLPString(b, kek.Chain)
	return binary.BigEndian.AppendUint32(b, kek.Version)
}

// SelfTestAAD is the associated data used when a provider checks a freshly created KEK
// version (seal then open 32 zero bytes); nothing sealed with it is stored.
func SelfTestAAD(volume [IDSize]byte, kek KEKRef) []byte {
	b := appendLPString(nil, LabelSelfTest)
	b = AppendLP(b, volume[:])
	b = appendLPString(b, kek.Chain)
	return binary.BigEndian.AppendUint32(b, kek.Version)
}

// HSMLabel is the CKA_LABEL (and CKA_ID) of a KEK version's key object in an HSM:
// "coffer:<volume id, 32 lowercase hex>:<chain>:v<version>:<aes|hmac>".
func HSMLabel(volume [IDSize]byte, kek KEKRef, kind string) string {
	return "coffer:" + hex.EncodeToString(volume[:]) + ":" + kek.Chain + ":v" +
		strconv.FormatUint(uint64(kek.Version), 10) + ":" + kind
}
