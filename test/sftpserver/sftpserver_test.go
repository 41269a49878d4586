package sftpserver_test

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"coffer/remote"
	"coffer/test/sftpserver"
)

func dial(t *testing.T, srv *sftpserver.Server) (*ssh.Client, error) {
	t.Helper()
	pem, err := os.ReadFile(srv.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	hostKeys, err := knownhosts.New(srv.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	return ssh.Dial("tcp", srv.Addr, &ssh.ClientConfig{
		User:            srv.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: hostKeys, // the generated host key, really checked
		Timeout:         5 * time.Second,
	})
}

func TestServeStopRestart(t *testing.T) {
	start := time.Now()
	srv := sftpserver.Start(t)
	t.Logf("Start took %v", time.Since(start))
	c, err := dial(t, srv)
	if err != nil {
		t.Fatalf("ssh: %v\nsshd log: %s", err, srv.Log())
	}
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestSubsystem("sftp"); err != nil {
		t.Fatalf("sftp subsystem: %v", err)
	}
	sess.Close()

	if err := remote.CheckRemote(srv.Remote("v")); err != nil {
		t.Errorf("Remote carries a credential: %v", err)
	}
	st, err := remote.Open(context.Background(), srv.Remote("v"), remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	if err := st.Put(context.Background(), "c/ab/obj", []byte("over sftp")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(srv.ObjectPath("v", "c/ab/obj")); err != nil || string(b) != "over sftp" {
		t.Errorf("object file: %q, %v", b, err)
	}

	// Stop kills the open session too, not only the listener.
	start = time.Now()
	srv.Stop()
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Stop took %v", el)
	}
	if _, _, err := c.SendRequest("keepalive@openssh.com", true, nil); err == nil {
		t.Error("an established connection survived Stop")
	}
	if nc, err := net.DialTimeout("tcp", srv.Addr, time.Second); err == nil {
		nc.Close()
		t.Fatal("a stopped sshd still accepts connections")
	}
	srv.Restart()
	c2, err := dial(t, srv)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	c2.Close()
}

func TestWrongKeyIsRefused(t *testing.T) {
	srv := sftpserver.Start(t)
	_, err := ssh.Dial("tcp", srv.Addr, &ssh.ClientConfig{
		User:            srv.User,
		Auth:            []ssh.AuthMethod{ssh.Password("guess")},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         5 * time.Second,
	})
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("password login = %v; want a refusal", err)
	}
}
