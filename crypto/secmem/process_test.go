package secmem

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestEraseEnv: the value of an erased variable is gone from /proc/self/environ (which
// os.Unsetenv leaves untouched), and other variables are intact. It runs in a child so that
// the variable is in the child's initial environment block.
func TestEraseEnv(t *testing.T) {
	const secret = "erase-env-secret-4f9c2"
	if os.Getenv("SECMEM_ERASE_CHILD") == "1" {
		before, _ := os.ReadFile("/proc/self/environ")
		if !strings.Contains(string(before), secret) {
			t.Fatal("the child's environ lacks the secret before erasing: the test proves nothing")
		}
		os.Unsetenv("SECMEM_OTHER")
		if after, _ := os.ReadFile("/proc/self/environ"); !strings.Contains(string(after), "other-"+secret) {
			t.Fatal("os.Unsetenv alone removed a value from /proc/self/environ: the test proves nothing")
		}
		held := os.Getenv("SECMEM_SECRET") // points into the runtime's copy
		if err := EraseEnv("SECMEM_SECRET", "NOT_SET_AT_ALL"); err != nil {
			t.Fatal(err)
		}
		os.Unsetenv("SECMEM_SECRET")
		if strings.Trim(held, "\x00") != "" {
			t.Fatalf("the Go runtime's copy of the variable still reads %q", held)
		}
		after, _ := os.ReadFile("/proc/self/environ")
		if strings.Contains(string(after), "SECMEM_SECRET="+secret) {
			t.Fatal("the secret is still in /proc/self/environ after EraseEnv")
		}
		if !strings.Contains(string(after), "SECMEM_KEEP=kept-value") {
			t.Fatal("EraseEnv damaged another variable")
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestEraseEnv$", "-test.v")
	cmd.Env = append(os.Environ(), "SECMEM_ERASE_CHILD=1", "SECMEM_SECRET="+secret, "SECMEM_OTHER=other-"+secret, "SECMEM_KEEP=kept-value")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestEraseEnv") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestHardenProcess: a child that hardens itself is not dumpable and has a core limit of 0.
func TestHardenProcess(t *testing.T) {
	if os.Getenv("SECMEM_HARDEN_CHILD") == "1" {
		HardenProcess()
		status, _ := os.ReadFile("/proc/self/status")
		limits, _ := os.ReadFile("/proc/self/limits")
		for _, line := range strings.Split(string(limits), "\n") {
			if f := strings.Fields(line); strings.HasPrefix(line, "Max core file size") && (len(f) < 6 || f[4] != "0" || f[5] != "0") {
				t.Fatalf("core limit not 0: %q", line)
			}
		}
		if os.Geteuid() == 0 && strings.Contains(string(status), "VmLck:\t       0 kB") {
			t.Fatal("root, but no memory locked")
		}
		if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 0 {
			t.Fatalf("still dumpable: %d %v", d, err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestHardenProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "SECMEM_HARDEN_CHILD=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}

// TestHardenedEnvIdempotent: a hardened environment hardened again (the daemon started by a
// re-run CLI) is unchanged, secrets named are dropped, and other settings are kept.
func TestHardenedEnvIdempotent(t *testing.T) {
	in := []string{"A=1", "GODEBUG=madvdontneed=1", "COFFER_PASSPHRASE=x", "MALLOC_PERTURB_=1"}
	once := HardenedEnv(in)
	twice := HardenedEnv(once, "COFFER_PASSPHRASE")
	want := []string{"A=1", "GODEBUG=madvdontneed=1,clobberfree=1", "GLIBC_TUNABLES=glibc.malloc.tcache_count=0", "MALLOC_PERTURB_=165"}
	if strings.Join(twice, " ") != strings.Join(want, " ") {
		t.Fatalf("HardenedEnv twice = %q, want %q", twice, want)
	}
	if !slices.Contains(once, "COFFER_PASSPHRASE=x") {
		t.Fatalf("HardenedEnv dropped a variable it was not asked to: %q", once)
	}
}
