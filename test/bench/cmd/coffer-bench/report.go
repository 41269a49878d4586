package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// table holds every measured value: vals[row key][target index] = one value per run.
type table struct {
	title             string
	targets           []target
	reps              int
	vals              map[string][][]float64
	alternate         bool      // the targets' order flipped every run
	load              []float64 // 1-min load average after each workload group
	started, finished time.Time
}

type memResult struct {
	size              int64
	writeMBs, readMBs float64
	peak, limit       int64
}

type report struct {
	c                 *config
	entries           int
	tables            []*table
	mem               *memResult
	replica           *table // replica on vs off (its own README section)
	started, finished time.Time
}

func (r *report) rows() []row {
	c := r.c
	return []row{
		{key: "seqw", label: fmt.Sprintf("sequential write %s (write+fsync), MB/s", human(c.size)), unit: "MB/s", higher: true, goal: 0.8},
		{key: "seqr", label: fmt.Sprintf("sequential read %s, cold, MB/s", human(c.size)), unit: "MB/s", higher: true, goal: 0.8},
		{key: "randr", label: fmt.Sprintf("random 4 KiB read, cold, IOPS (%s)", c.randDur), unit: "IOPS", higher: true, goal: 1.0},
		{key: "randw", label: fmt.Sprintf("random 4 KiB write + fsync, IOPS (%s)", c.randDur), unit: "IOPS", higher: true, goal: 1.0},
		{key: "untar", label: fmt.Sprintf("untar %s (%d entries), s", c.tree, r.entries), unit: "s", goal: 1.0},
		{key: "lsR", label: "ls -lR, cold, s", unit: "s", goal: 1.0},
		{key: "rm", label: "rm -rf, s", unit: "s", goal: 1.0},
		{key: "small", label: fmt.Sprintf("%d files of 1 KiB, s", c.files), unit: "s", goal: 1.0},
		{key: "fsync50", label: fmt.Sprintf("fsync latency p50 (%d x create, write 4 KiB, fsync, close), ms", fsyncFiles), unit: "ms", latency: true},
		{key: "fsync99", label: fmt.Sprintf("fsync latency p99 (%d x create, write 4 KiB, fsync, close), ms", fsyncFiles), unit: "ms", latency: true},
		{key: "rss", label: "daemon peak RSS (VmHWM over the whole table), MiB", unit: "MiB"},
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func cell(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	if len(v) == 1 {
		return num(v[0])
	}
	return fmt.Sprintf("%s (%s–%s)", num(median(v)), num(slices.Min(v)), num(slices.Max(v)))
}

// tableText renders one table in Markdown. The ratio is coffer's speed over the peer's:
// MB/s and IOPS divided, or the peer's seconds over coffer's; above 1 coffer is faster.
func (r *report) tableText(t *table) string {
	var b strings.Builder
	peer := t.targets[1].Name()
	fmt.Fprintf(&b, "#### %s (%d runs each, interleaved)\n\n", t.title, t.reps)
	fmt.Fprintf(&b, "| workload | coffer | %s | speed coffer/%s | goal |\n|---|--:|--:|--:|:--|\n", peer, peer)
	for _, rw := range r.rows() {
		v := t.vals[rw.key]
		if v == nil {
			continue
		}
		a, p := median(v[0]), median(v[1])
		ratio, goal := "", ""
		if rw.key == "rss" {
			ratio = fmt.Sprintf("%.2fx the memory", a/p)
		} else {
			x := a / p
			if !rw.higher {
				x = p / a
			}
			ratio = fmt.Sprintf("%.2fx", x)
			want := rw.goal
			if _, ok := t.targets[1].(*rcloneFS); ok && want > 0 {
				want = 2.0
			}
			if want > 0 {
				mark := "met"
				if x < want {
					mark = "**short**"
				}
				goal = fmt.Sprintf(">= %.1fx: %s", want, mark)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", rw.label, cell(v[0]), cell(v[1]), ratio, goal)
	}
	return b.String()
}

func (r *report) memText() string {
	m := r.mem
	verdict := "within"
	if m.peak > m.limit {
		verdict = "**over**"
	}
	return fmt.Sprintf("#### Memory: coffer writes a %s file, then reads it back (caches dropped between)\n\n"+
		"| cache cap | peak RSS (VmHWM) | limit (cap + 150 MiB) | verdict | write | read |\n|--:|--:|--:|:--|--:|--:|\n"+
		"| %s | %.0f MiB | %.0f MiB | %s | %s MB/s | %s MB/s |\n",
		human(m.size), r.c.cacheSize, float64(m.peak)/(1<<20), float64(m.limit)/(1<<20), verdict, num(m.writeMBs), num(m.readMBs))
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(l[strings.Index(l, ":")+1:])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kb)
		mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
	}
	kernel := ""
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(out))
	}
	fs := ""
	if out, err := exec.Command("findmnt", "-no", "FSTYPE", "-T", "/var/tmp").Output(); err == nil {
		fs = ", backing " + strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%d cores (%s)%s%s%s", runtime.NumCPU(), cpu, mem, kernel, fs)
}

// cofferVersion is coffer's revision as the tables print it.
func cofferVersion(c *config) string {
	cv := "coffer"
	if c.rev != "" {
		cv += " " + c.rev
	} else if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		cv += " " + strings.TrimSpace(string(out))
		if out, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); len(bytes.TrimSpace(out)) > 0 {
			cv += " (with uncommitted changes)"
		}
	}
	return cv
}

func versions(c *config) string {
	gv := "gocryptfs ?"
	if out, err := exec.Command("gocryptfs", "-version").Output(); err == nil {
		gv = strings.SplitN(strings.TrimSpace(string(out)), ";", 2)[0]
	}
	rv := "rclone ?"
	if out, err := exec.Command(c.rcloneBin, "version").Output(); err == nil {
		rv = strings.SplitN(string(out), "\n", 2)[0]
	}
	return cofferVersion(c) + ", " + gv + " (Debian), " + rv + " (mount2, built from go.mod's pin)"
}

// markdown is the whole block that goes between the README's bench markers.
func (r *report) markdown() string {
	var b strings.Builder
	c := r.c
	mode := ""
	if c.quick {
		mode = " (QUICK mode: small sizes, not comparable)"
	}
	fmt.Fprintf(&b, "### Benchmarks%s\n\n", mode)
	fmt.Fprintf(&b, "Measured %s (%.0f min) on %s; %s.\n", r.started.Format("2006-01-02"), r.finished.Sub(r.started).Minutes(), machine(), versions(c))
	fmt.Fprintf(&b, "Rerun: `%s` (as root; quick smoke run: `COFFER_BENCH_QUICK=1 %s`).\n\n", c.cmdLine, c.cmdLine)
	b.WriteString("Each cell is the median of the runs with the min–max spread; runs of the two filesystems\n" +
		"alternate (A B A B ...). Cold rows unmount both daemons, drop the kernel's caches and mount again\n" +
		"(coffer's block cache and rclone's VFS cache start empty). Speed ratio above 1 means coffer is\n" +
		"faster. The machine's two cores were shared with other jobs: compare ratios within a run.\n" +
		fmt.Sprintf("coffer runs with `--cache-size %s`, the default 16 KiB blocks in 4 MiB chunks, a SoftHSM2 token;\n", c.cacheSize) +
		"over S3 also with `--disk-cache 4G`, emptied before every mount like rclone's VFS cache.\n" +
		"Write rows time what the program sees: for coffer fsync returns once the data is on the remote;\n" +
		"rclone's returns once it is in its local VFS cache (it uploads 5 s after close).\n\n")
	for _, t := range r.tables {
		b.WriteString(r.tableText(t))
		b.WriteString("\n")
	}
	if r.mem != nil {
		b.WriteString(r.memText())
	}
	return b.String()
}

const startMarker, endMarker = "<!-- bench:start -->", "<!-- bench:end -->"

// The replication table has markers of its own inside the bench block, so that a run of it
// alone (COFFER_BENCH_ONLY=replica) replaces only its section, and a run without it keeps it.
const replicaStart, replicaEnd = "<!-- bench:replica:start -->", "<!-- bench:replica:end -->"

// section returns the text of s from start to the end of end (markers included), or "".
func section(s, start, end string) (string, int, int) {
	i := strings.Index(s, start)
	if i < 0 {
		return "", -1, -1
	}
	j := strings.Index(s[i:], end)
	if j < 0 {
		return "", -1, -1
	}
	return s[i : i+j+len(end)], i, i + j + len(end)
}

func updateReadme(path string, r *report) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	var repBlock string
	if r.replica != nil {
		repBlock = replicaStart + "\n" + r.replicaText() + replicaEnd
	}
	i, j := strings.Index(s, startMarker), strings.Index(s, endMarker)
	switch {
	case r.replica != nil && len(r.tables) == 0 && r.mem == nil:
		// The replication table alone: its section only, the rest of the block stays.
		if _, a, z := section(s, replicaStart, replicaEnd); a >= 0 {
			s = s[:a] + repBlock + s[z:]
		} else if i >= 0 && j > i {
			s = s[:j] + "\n" + repBlock + "\n" + s[j:]
		} else {
			s = strings.TrimRight(s, "\n") + "\n\n" + startMarker + "\n" + repBlock + "\n" + endMarker + "\n"
		}
	default:
		if repBlock == "" && i >= 0 && j > i {
			repBlock, _, _ = section(s[i:j], replicaStart, replicaEnd) // kept from the last run
		}
		block := startMarker + "\n" + r.markdown()
		if repBlock != "" {
			block += "\n" + repBlock + "\n"
		}
		block += endMarker
		if i >= 0 && j > i {
			s = s[:i] + block + s[j+len(endMarker):]
		} else {
			s = strings.TrimRight(s, "\n") + "\n\n" + block + "\n"
		}
	}
	tmp := filepath.Join(filepath.Dir(path), ".README.bench.tmp")
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// memoryRow writes and reads back a large file on a fresh local coffer volume and compares
// the daemon's peak RSS with the cache cap plus 150 MiB.
func memoryRow(ctx context.Context, c *config, w *work, m *mounts) (*memResult, error) {
	cf, err := newCoffer(ctx, w, "coffer-mem", filepath.Join(w.dir, "coffer-mem", "remote"), "bench-mem", c.cacheSize)
	if err != nil {
		return nil, err
	}
	if err := m.mount(ctx, cf); err != nil {
		return nil, err
	}
	res := &memResult{size: c.memSize, limit: c.cacheBytes + 150<<20}
	path := filepath.Join(cf.Dir(), "huge")
	if res.writeMBs, err = seqWrite(path, c.memSize); err != nil {
		return nil, err
	}
	if err := dropCaches(); err != nil {
		return nil, err
	}
	if res.readMBs, err = seqRead(path, c.memSize); err != nil {
		return nil, err
	}
	cf.notePeak()
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	if err := m.unmount(ctx, cf); err != nil {
		return nil, err
	}
	res.peak = cf.PeakRSS()
	return res, nil
}

// pairedRatios is, run by run, on's value over off's (a[k]/b[k]), or off's over on's when
// invert; runs missing on either side are skipped.
func pairedRatios(a, b []float64, invert bool) []float64 {
	var out []float64
	for k := 0; k < len(a) && k < len(b); k++ {
		if a[k] == 0 || b[k] == 0 {
			continue
		}
		if invert {
			out = append(out, b[k]/a[k])
		} else {
			out = append(out, a[k]/b[k])
		}
	}
	return out
}

func ratioCell(v []float64) string {
	switch len(v) {
	case 0:
		return "-"
	case 1:
		return fmt.Sprintf("%.2fx", v[0])
	}
	return fmt.Sprintf("%.2fx (%.2f–%.2f)", median(v), slices.Min(v), slices.Max(v))
}

// Goals of the replication table (the issue): every speed row's median paired ratio
// on/off at least replicaSpeedGoal, the fsync p50's at most replicaFsyncGoal.
const replicaSpeedGoal, replicaFsyncGoal = 0.9, 2.0

// replicaText renders the replication on/off table: per row the median of the runs on each
// side, and the median (min–max) over the runs of the paired ratio of run i on to run i off.
func (r *report) replicaText() string {
	t, c := r.replica, r.c
	var b strings.Builder
	order := "the order stays on off"
	if t.alternate {
		order = "the order flips every run (on off, off on, ...)"
	}
	fmt.Fprintf(&b, "#### %s (%d runs each, interleaved)\n\n", t.title, t.reps)
	mode := ""
	if c.quick {
		mode = " QUICK mode (small sizes, not comparable)"
	}
	load := ""
	if len(t.load) > 0 {
		load = fmt.Sprintf("; 1-min load average %.1f–%.1f between workloads", slices.Min(t.load), slices.Max(t.load))
	}
	fmt.Fprintf(&b, "Measured%s %s (%.0f min for this table%s) on %s; %s.\n", mode, t.started.Format("2006-01-02 15:04"),
		t.finished.Sub(t.started).Minutes(), load, machine(), cofferVersion(c))
	fmt.Fprintf(&b, "Rerun: `COFFER_BENCH_ONLY=replica %s` (as root; also part of a full `%s`; COFFER_BENCH_REPLICA_REPS sets the runs).\n\n", c.cmdLine, c.cmdLine)
	fmt.Fprintf(&b, "Both sides are coffer over the same S3 server with the settings of the S3 table above\n"+
		"(`--cache-size %s`, `--disk-cache 4G` emptied before every mount), each on its own volume:\n"+
		"\"replica on\" is a normal mount, whose every fsync waits until the catalog change it depends on\n"+
		"is on the remote; \"replica off\" adds `--no-replica`. Run i of one side pairs with run i of the\n"+
		"other, and %s. The ratio column is the median over the runs\n"+
		"of the paired ratio, with its min–max: for speed rows speed on/off (MB/s or IOPS of on over off,\n"+
		"seconds of off over on: below 1 means replication costs; goal >= %.1fx), for the fsync rows\n"+
		"latency on/off (above 1 means replication costs; goal for the p50 <= %.1fx). The fsync rows:\n"+
		"each run creates %d new files one after the other (create, write 4 KiB of random bytes, fsync,\n"+
		"close) and takes the p50 and p99 of their latencies; the cells are the medians over the runs.\n\n",
		c.cacheSize, order, replicaSpeedGoal, replicaFsyncGoal, fsyncFiles)
	on, off := t.targets[0].Name(), t.targets[1].Name()
	fmt.Fprintf(&b, "| workload | %s | %s | on/off, median of paired ratios | goal |\n|---|--:|--:|--:|:--|\n", on, off)
	for _, rw := range r.rows() {
		v := t.vals[rw.key]
		if v == nil {
			continue
		}
		var ratio, goal string
		switch {
		case rw.key == "rss":
			ratio = fmt.Sprintf("%.2fx the memory", median(v[0])/median(v[1]))
		case rw.latency:
			x := pairedRatios(v[0], v[1], false)
			ratio = "latency " + ratioCell(x)
			if rw.key == "fsync50" {
				mark := "met"
				if median(x) > replicaFsyncGoal {
					mark = "**short**"
				}
				goal = fmt.Sprintf("<= %.1fx: %s", replicaFsyncGoal, mark)
			}
		default:
			x := pairedRatios(v[0], v[1], !rw.higher)
			ratio = "speed " + ratioCell(x)
			mark := "met"
			if median(x) < replicaSpeedGoal {
				mark = "**short**"
			}
			goal = fmt.Sprintf(">= %.1fx: %s", replicaSpeedGoal, mark)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", rw.label, cell(v[0]), cell(v[1]), ratio, goal)
	}
	return b.String()
}
