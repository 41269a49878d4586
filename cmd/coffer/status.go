package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"sort"
	"time"

	"coffer/fs/control"

	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
)

// openStateReadOnly opens the catalog of --state for reading, alongside a running daemon.
func openStateReadOnly(ctx context.Context, state string) (*meta.Catalog, error) {
	if state == "" {
		return nil, usageError{"--state DIR is required"}
	}
	c, err := meta.OpenReadOnly(ctx, state)
	if err != nil {
		return nil, fmt.Errorf("open volume in %s: %w", state, err)
	}
	return c, nil
}

type statusKEK struct {
	Chain     string `json:"chain"`
	Version   uint32 `json:"version"`
	State     string `json:"state"`
	Created   string `json:"created"`
	Destroyed string `json:"destroyed,omitempty"`
}

type statusReport struct {
	Volume         string      `json:"volume"`
	Format         uint32      `json:"format_version"`
	Remote         string      `json:"remote"`
	Provider       string      `json:"provider"`
	HSMModule      string      `json:"hsm_module,omitempty"`
	HSMToken       string      `json:"hsm_token,omitempty"`
	KeyMode        string      `json:"key_mode"`
	PerUserKEKs    bool        `json:"kek_per_user"`
	BlockSize      int64       `json:"block_size"`
	ChunkSize      int64       `json:"chunk_size"`
	Created        string      `json:"created"`
	KEKs           []statusKEK `json:"keks"`
	Inodes         int64       `json:"inodes"`
	Bytes          int64       `json:"bytes"`
	Chunks         int64       `json:"chunks"`
	PendingUploads int         `json:"pending_uploads"`
	PendingDeletes int64       `json:"pending_deletes"`
	AuditEntries   int64       `json:"audit_entries"`
}

func cmdStatus(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("status", flag.ContinueOnError)
	state := fl.String("state", "", "state directory of the volume")
	asJSON := fl.Bool("json", false, "print JSON")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 || (len(pos) == 1) == (*state != "") {
		return usageError{"give either MOUNTPOINT or --state DIR"}
	}
	if len(pos) == 1 {
		return printMountStatus(ctx, env, pos[0], *asJSON)
	}
	cat, err := openStateReadOnly(ctx, *state)
	if err != nil {
		return err
	}
	defer cat.Close()

	v, err := cat.Volume(ctx)
	if err != nil {
		return err
	}
	r := statusReport{
		Volume: hex.EncodeToString(v.ID[:]), Format: v.FormatVersion, Remote: v.Remote, Provider: v.Provider,
		HSMModule: v.HSMModule, HSMToken: v.HSMToken, KeyMode: v.KeyMode, PerUserKEKs: v.PerUserKEKs,
		BlockSize: v.BlockSize, ChunkSize: v.ChunkSize, Created: stamp(v.Created),
	}
	keks, err := cat.ListKEKs(ctx)
	if err != nil {
		return err
	}
	for _, k := range keks {
		sk := statusKEK{Chain: k.Chain, Version: k.Version, State: k.State, Created: stamp(k.Created)}
		if k.Destroyed != 0 {
			sk.Destroyed = stamp(k.Destroyed)
		}
		r.KEKs = append(r.KEKs, sk)
	}
	st, err := cat.Stats(ctx)
	if err != nil {
		return err
	}
	r.Inodes, r.Bytes, r.Chunks = st.Inodes, st.Bytes, st.Chunks
	ups, err := cat.ListUploads(ctx, "", 0, 0)
	if err != nil {
		return err
	}
	r.PendingUploads = len(ups)
	if r.PendingDeletes, err = cat.PendingDeletes(ctx); err != nil {
		return err
	}
	if r.AuditEntries, err = cat.VerifyAuditChain(ctx); err != nil {
		return err
	}

	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	w := env.stdout
	fmt.Fprintf(w, "volume:    %s (format %d, created %s)\n", r.Volume, r.Format, r.Created)
	fmt.Fprintf(w, "remote:    %s\n", r.Remote)
	if r.Provider == meta.ProviderPKCS11 {
		fmt.Fprintf(w, "keys:      HSM token %q via %s, key mode %s\n", r.HSMToken, r.HSMModule, r.KeyMode)
	} else {
		fmt.Fprintf(w, "keys:      %s, key mode %s\n", r.Provider, r.KeyMode)
	}
	for _, k := range r.KEKs {
		chain := k.Chain
		if chain == "" {
			chain = "volume"
		}
		fmt.Fprintf(w, "  KEK %s/v%d: %s\n", chain, k.Version, k.State)
	}
	fmt.Fprintf(w, "layout:    %s blocks in %s chunks\n", humanSize(r.BlockSize), humanSize(r.ChunkSize))
	fmt.Fprintf(w, "contents:  %d inodes, %d bytes in %d chunks\n", r.Inodes, r.Bytes, r.Chunks)
	fmt.Fprintf(w, "queues:    %d uploads pending, %d deletes pending\n", r.PendingUploads, r.PendingDeletes)
	fmt.Fprintf(w, "audit:     %d entries, hash chain intact\n", r.AuditEntries)
	return nil
}

func stamp(ns int64) string {
	if ns == 0 {
		return ""
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339)
}

func cmdAudit(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("audit", flag.ContinueOnError)
	state := fl.String("state", "", "state directory of the volume")
	asJSON := fl.Bool("json", false, "print one JSON object per line")
	verify := fl.Bool("verify", false, "only check the log: the hash chain, and the MACs when a PIN or passphrase is given")
	pinFile := fl.String("hsm-pin-file", "", "with --verify: file holding the HSM PIN (or COFFER_HSM_PIN)")
	passFile := fl.String("passphrase-file", "", "with --verify: file holding the passphrase (or COFFER_PASSPHRASE)")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", pos[0])}
	}
	cat, err := openStateReadOnly(ctx, *state)
	if err != nil {
		return err
	}
	defer cat.Close()
	if *verify {
		return verifyAudit(ctx, env, cat, *state, *pinFile, *passFile)
	}
	_, verr := cat.VerifyAuditChain(ctx)
	var after int64
	for {
		evs, err := cat.ListAudit(ctx, after, 1000)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if *asJSON {
				b, _ := json.Marshal(map[string]any{"seq": e.Seq, "time": stamp(e.Time), "event": e.Event,
					"actor": e.Actor, "detail": json.RawMessage(orEmpty(e.Detail)), "hash": hex.EncodeToString(e.Hash),
					"sealed": len(e.MAC) > 0})
				fmt.Fprintln(env.stdout, string(b))
			} else {
				fmt.Fprintf(env.stdout, "%6d  %s  %-16s %-10s %s\n", e.Seq, stamp(e.Time), e.Event, e.Actor, e.Detail)
			}
			after = e.Seq
		}
		if len(evs) < 1000 {
			break
		}
	}
	// A broken chain is reported after the listing, so the operator sees both.
	if verr != nil {
		return fmt.Errorf("audit log damaged: %w", verr)
	}
	return nil
}

// verifyAudit checks the hash chain and, when the PIN or passphrase is at hand (environment
// or file; never prompted, so scripts do not hang), every entry's MAC with the provider.
func verifyAudit(ctx context.Context, env *cliEnv, cat *meta.Catalog, state, pinFile, passFile string) error {
	mv, err := cat.Volume(ctx)
	if err != nil {
		return err
	}
	src := volumeSecret(mv.Provider, mv.HSMToken, pinFile, passFile)
	if env.getenv(src.envVar) == "" && src.file == "" {
		n, err := cat.VerifyAuditChain(ctx)
		if err != nil {
			return fmt.Errorf("audit log damaged: %w", err)
		}
		fmt.Fprintf(env.stdout, "audit log: %d entries, hash chain intact (MACs not checked: give %s or %s to check them)\n", n, src.envVar, src.flag)
		return nil
	}
	secret, err := env.readSecret(src)
	if err != nil {
		return err
	}
	defer clear(secret)
	v, err := volume.Open(ctx, state, secret, volume.OpenOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer v.Close(ctx)
	rep, err := keyops.VerifyAudit(ctx, v.Catalog(), v.Provider(), v.ID)
	if err != nil {
		return fmt.Errorf("audit log damaged: %w", err)
	}
	fmt.Fprintln(env.stdout, rep.String())
	return nil
}

func orEmpty(s string) string {
	if s == "" {
		return "{}"
	}
	return s
}

func printMountStatus(ctx context.Context, env *cliEnv, mountpoint string, asJSON bool) error {
	r, err := control.Call(ctx, mountpoint, "status", 30*time.Second)
	if err != nil {
		return err
	}
	if asJSON {
		var v any
		if err := json.Unmarshal(r.Status, &v); err != nil {
			return err
		}
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	var st map[string]any
	if err := json.Unmarshal(r.Status, &st); err != nil {
		return err
	}
	w := env.stdout
	for _, k := range []string{"mountpoint", "pid", "state_dir", "volume", "remote", "provider", "key_mode", "kek", "locked", "read_only"} {
		fmt.Fprintf(w, "%-11s %v\n", k+":", st[k])
	}
	if d, ok := st["data"].(map[string]any); ok {
		keys := make([]string, 0, len(d))
		for k := range d {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "%-11s %s = %v\n", "data:", k, d[k])
		}
	}
	if rp, ok := st["replica"].(map[string]any); ok {
		fmt.Fprintf(w, "%-11s epoch %v, position %v, %v bytes of catalog changes not on the remote yet", "replica:", rp["epoch"], rp["position"], rp["lag_bytes"])
		if t, ok := rp["last_ship"]; ok {
			fmt.Fprintf(w, ", last shipped %v", t)
		}
		fmt.Fprintln(w)
		if e, ok := rp["last_error"]; ok {
			fmt.Fprintf(w, "%-11s %v\n", "replica:", "last error: "+fmt.Sprint(e))
		}
	}
	return nil
}
