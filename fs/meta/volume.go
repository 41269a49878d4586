package meta

import (
	"context"
	"encoding/json"
	"syscall"
)

func (v *Volume) validate() error {
	switch {
	case v.ID == [16]byte{}:
		return errf(syscall.EINVAL, "create catalog: volume id is zero")
	case v.BlockSize <= 0 || v.ChunkSize < v.BlockSize || v.ChunkSize%v.BlockSize != 0:
		return errf(syscall.EINVAL, "create catalog: chunk size %d must be a positive multiple of block size %d", v.ChunkSize, v.BlockSize)
	case v.KeyMode != KeyModeWrap && v.KeyMode != KeyModeDerive:
		return errf(syscall.EINVAL, "create catalog: key mode %q is not %q or %q", v.KeyMode, KeyModeWrap, KeyModeDerive)
	case v.Provider != ProviderPKCS11 && v.Provider != ProviderPassphrase && v.Provider != ProviderKeyfile:
		return errf(syscall.EINVAL, "create catalog: unknown key provider %q", v.Provider)
	case v.Provider == ProviderPKCS11 && (v.HSMModule == "" || v.HSMToken == ""):
		return errf(syscall.EINVAL, "create catalog: a pkcs11 volume needs the HSM module path and token label")
	case v.Remote == "":
		return errf(syscall.EINVAL, "create catalog: remote is empty")
	}
	return nil
}

func (t *Tx) insertVolume(v Volume) error {
	_, err := t.exec("create volume", `INSERT INTO volume (id, volume_id, format_version, block_size, chunk_size,
		remote, key_mode, provider, hsm_module, hsm_token, per_user_keks, kdf_params, created_ns)
		VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		v.ID[:], v.FormatVersion, v.BlockSize, v.ChunkSize, v.Remote, v.KeyMode, v.Provider,
		v.HSMModule, v.HSMToken, v.PerUserKEKs, blob(v.KDFParams), v.Created)
	return err
}

// Volume returns the volume row.
func (c *Catalog) Volume(ctx context.Context) (Volume, error) {
	return readVolume(ctx, c.r)
}

// Volume returns the volume row as this transaction sees it.
func (t *Tx) Volume() (Volume, error) { return readVolume(t.ctx, t.tx) }

func readVolume(ctx context.Context, q querier) (Volume, error) {
	var v Volume
	var id []byte
	var fv, perUser int64
	err := q.QueryRowContext(ctx, `SELECT volume_id, format_version, block_size, chunk_size, remote, key_mode,
		provider, hsm_module, hsm_token, per_user_keks, kdf_params, created_ns FROM volume WHERE id = 1`).
		Scan(&id, &fv, &v.BlockSize, &v.ChunkSize, &v.Remote, &v.KeyMode, &v.Provider, &v.HSMModule,
			&v.HSMToken, &perUser, &v.KDFParams, &v.Created)
	if err != nil {
		return Volume{}, wrapSQL("read volume row", err)
	}
	copy(v.ID[:], id)
	v.FormatVersion = uint32(fv)
	v.PerUserKEKs = perUser != 0
	return v, nil
}

// SetKDFParams replaces the passphrase KDF parameters (coffer passwd, in the
// same transaction as the re-sealed KEK material).
func (t *Tx) SetKDFParams(params []byte) (err error) {
	defer t.track(&err)
	_, err = t.exec("set KDF parameters", `UPDATE volume SET kdf_params = ? WHERE id = 1`, blob(params))
	return err
}

// SetRemote replaces the (redacted) remote string, e.g. after a restore.
func (t *Tx) SetRemote(remote string) (err error) {
	defer t.track(&err)
	if remote == "" {
		return errf(syscall.EINVAL, "set remote: remote is empty")
	}
	_, err = t.exec("set remote", `UPDATE volume SET remote = ? WHERE id = 1`, remote)
	return err
}

// SetHSM replaces the HSM module path and token label (a restore on a new host).
func (t *Tx) SetHSM(module, token string) (err error) {
	defer t.track(&err)
	if module == "" || token == "" {
		return errf(syscall.EINVAL, "set HSM: module and token must not be empty")
	}
	_, err = t.exec("set HSM", `UPDATE volume SET hsm_module = ?, hsm_token = ? WHERE id = 1`, module, token)
	return err
}

// blob stores an empty slice as NULL, so nil and empty read back the same.
func blob(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// jsonObject builds a small JSON object from key/value pairs (audit details).
func jsonObject(kv ...any) string {
	m := make(map[string]any, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	b, err := json.Marshal(m) // map keys come out sorted
	if err != nil {
		return "{}"
	}
	return string(b)
}
