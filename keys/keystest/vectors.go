package keystest

import "encoding/hex"

// KeyVector is the test vector of FORMAT.md section 9 for wrap and derive: fixed KEK keys, ids,
// DEK, IV and salt, and the bytes every implementation (Go code, the HSM, an independent
// decryptor) must produce. The expected values were computed with Python's
// "cryptography" package, independently of coffer's code.
type KeyVector struct {
	Volume, File     [16]byte
	Chain            string
	Version          uint32
	KEKAES, KEKHMAC  []byte // the version's two keys
	DEK, IV, Salt    []byte
	WrapAAD          []byte // expected keys.WrapAAD
	Wrapped          []byte // expected AES-256-GCM(KEKAES, IV, DEK, WrapAAD): ciphertext || tag
	DeriveMessage    []byte // expected keys.DeriveMessage
	DerivedDEK       []byte // expected HMAC-SHA256(KEKHMAC, DeriveMessage)
	PassphraseKEKAAD []byte // expected keys.PassphraseKEKAAD(Volume, {Chain, Version})
}

// PassphraseVector is the passphrase provider's vector: Argon2id with a cheap cost, the KWK
// and check value derived from it, and the material sealing KEKAES || KEKHMAC of Vector.
type PassphraseVector struct {
	Passphrase []byte
	Time       uint32
	MemoryKiB  uint32
	Threads    uint8
	Salt       []byte // 16 bytes
	Nonce      []byte // material nonce
	Master     []byte // Argon2id output M
	KWK        []byte
	Check      []byte
	Params     []byte // encoded Params
	Material   []byte // sealed Vector.KEKAES || Vector.KEKHMAC for {Vector.Chain, Vector.Version}
}

func h(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func h16(s string) [16]byte {
	var a [16]byte
	if copy(a[:], h(s)) != 16 {
		panic("not 16 bytes")
	}
	return a
}

func seq(from, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(from + i)
	}
	return b
}

// Vector is the wrap/derive vector.
var Vector = KeyVector{
	Volume:  h16("00112233445566778899aabbccddeeff"),
	File:    h16("0f0e0d0c0b0a09080706050403020100"),
	Chain:   "u1000",
	Version: 2,
	KEKAES:  seq(0x00, 32),
	KEKHMAC: seq(0x20, 32),
	DEK:     seq(0xa0, 32),
	IV:      seq(0x10, 12),
	Salt:    seq(0xc0, 32),
	WrapAAD: h("00000012636f666665722f64656b2d777261702f7631" +
		"0000001000112233445566778899aabbccddeeff" +
		"000000100f0e0d0c0b0a09080706050403020100" +
		"000000057531303030" + "00000002"),
	Wrapped: h("dd5f3ab5ed6c9c1462dca2b6a3d4c7fc67e1fcbdaf77e1065f4058dce2e9ea64" +
		"997a88480716c82fd6f5e53adf265cb0"),
	DeriveMessage: h("00000014636f666665722f64656b2d6465726976652f7631" +
		"0000001000112233445566778899aabbccddeeff" +
		"000000100f0e0d0c0b0a09080706050403020100" +
		"00000020c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"),
	DerivedDEK: h("25f0c2f073a96cfb851fb33a5bc75920739c336899c985b5997901f769fd4874"),
	PassphraseKEKAAD: h("00000018636f666665722f706173737068726173652d6b656b2f7631" +
		"0000001000112233445566778899aabbccddeeff" +
		"000000057531303030" + "00000002"),
}

// Passphrase is the passphrase vector (same volume, chain and version as Vector).
var Passphrase = PassphraseVector{
	Passphrase: []byte("correct horse battery staple"),
	Time:       1,
	MemoryKiB:  8192,
	Threads:    1,
	Salt:       seq(0x50, 16),
	Nonce:      seq(0x60, 12),
	Master:     h("ba35c0731b5ff834b1d76b793d56f1abf0920828f78d656ceee80abcb9df947d"),
	KWK:        h("0b93eff5aec7b69380440c7ec3ebade9cb5f2f3a91099be6ec1d24fe259e947f"),
	Check:      h("131a597210a3e42e77ca4e1dfebb49058ec998580dc1a57c5ce4b4be54976a6f"),
	Params: h("434650500101" + "00000001" + "00002000" + "01" +
		"505152535455565758595a5b5c5d5e5f" +
		"131a597210a3e42e77ca4e1dfebb49058ec998580dc1a57c5ce4b4be54976a6f"),
	Material: h("01" + "606162636465666768696a6b" +
		"90ddbf2feec448540ba65796ce51b48a3d52c4a211a433bfb3565d197c47a6166eacd6bd953b0aef863c664840a07e5a" +
		"0f5f4c9d2beda2246295c1002b094fbae1a1b538e3472870e982fccdc6df94c4"),
}
