package volume

import (
	"coffer/fs/meta"
	"coffer/keys"
)

// The catalog stores a file's key record as plain fields (fs/meta does not import keys, so
// it is tested alone); keys works on keys.Record. These two are the only conversion between
// them: the filesystem, the data path and the key operations all call them.

// RecordOf is the keys.Record of the catalog's key record k.
func RecordOf(k meta.KeyRecord) keys.Record {
	return keys.Record{Mode: keys.Mode(k.Mode), KEK: keys.KEKRef{Chain: k.Chain, Version: k.Version},
		IV: k.IV, Wrapped: k.Wrapped, Salt: k.Salt}
}

// CatalogRecord is the catalog's form of the key record r.
func CatalogRecord(r keys.Record) meta.KeyRecord {
	return meta.KeyRecord{Mode: string(r.Mode), Chain: r.KEK.Chain, Version: r.KEK.Version,
		IV: r.IV, Wrapped: r.Wrapped, Salt: r.Salt}
}
