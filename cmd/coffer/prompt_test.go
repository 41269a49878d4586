package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPromptInterrupt: ^C at a passphrase prompt ends the command at once (exit 130), with
// the terminal's echo restored and nothing created. The command runs on a pseudo-terminal
// that python3's pty module drives.
func TestPromptInterrupt(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 drives the pseudo-terminal: %v", err)
	}
	state := filepath.Join(t.TempDir(), "state")
	script := `
import os, pty, select, sys, termios, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "init", "--state", sys.argv[2], "--passphrase"])
out = b""
deadline = time.time() + 20
while b"assphrase: " not in out and time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.5)
    if r:
        out += os.read(fd, 1024)
if b"assphrase: " not in out:
    print("NOPROMPT", out); sys.exit(1)
os.write(fd, b"half-typed")
time.sleep(0.2)
os.write(fd, b"\x03")
start = time.time()
status = None
while time.time() - start < 10:
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = st; break
    time.sleep(0.05)
if status is None:
    os.kill(pid, 9); os.waitpid(pid, 0)
    print("EXIT none: still running 10 s after ^C"); sys.exit(0)
took = time.time() - start
echo = termios.tcgetattr(fd)[3] & termios.ECHO
print("EXIT", os.waitstatus_to_exitcode(status), "TOOK", round(took, 2), "ECHO", 1 if echo else 0)
`
	out, err := exec.Command(py, "-c", script, binary, state).CombinedOutput()
	if err != nil {
		t.Fatalf("pty driver: %v\n%s", err, out)
	}
	f := strings.Fields(string(out))
	var exit, echo string
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "EXIT":
			exit = f[i+1]
		case "ECHO":
			echo = f[i+1]
		}
	}
	if exit != "130" {
		t.Fatalf("^C at the prompt: %s (want exit 130)", out)
	}
	if echo != "1" {
		t.Fatalf("the terminal's echo was left off: %s", out)
	}
	if _, err := os.Stat(state); err == nil {
		t.Fatalf("an interrupted init created %s", state)
	}
}
