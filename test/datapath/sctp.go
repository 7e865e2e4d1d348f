package datapath

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The Go standard library has no SCTP. A one-to-one style SCTP socket
// (SOCK_STREAM, IPPROTO_SCTP) behaves like TCP: connect, accept, read,
// write. Wrapping the non-blocking descriptor in an *os.File puts it on the
// runtime poller, which gives us deadlines and blocking reads for free.

type sctpListener struct {
	f    *os.File
	port uint16
}

func listenSCTP(port uint16) (*sctpListener, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return nil, fmt.Errorf("sctp socket: %w", err)
	}
	// Dual stack: IPv4 peers arrive as v4-mapped addresses.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("sctp IPV6_V6ONLY: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("sctp SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Port: int(port)}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("sctp bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 64); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("sctp listen: %w", err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("sctp getsockname: %w", err)
	}
	port = uint16(bound.(*unix.SockaddrInet6).Port)
	return &sctpListener{f: os.NewFile(uintptr(fd), fmt.Sprintf("sctp-listener:%d", port)), port: port}, nil
}

func (l *sctpListener) Close() error { return l.f.Close() }

// accept waits for the next association.
func (l *sctpListener) accept() (io.ReadWriteCloser, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return !errors.Is(aerr, unix.EAGAIN)
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, aerr
	}
	return os.NewFile(uintptr(nfd), "sctp-conn"), nil
}

func probeSCTP(ns netns.NsHandle, to netip.AddrPort, token string, deadline time.Time) error {
	dst := to.Addr().Unmap()
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(to.Port()), Addr: dst.As16()}
	if dst.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: dst.As4()}
	}
	var fd int
	if err := inNS(ns, func() (err error) {
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		return err
	}); err != nil {
		return fmt.Errorf("sctp socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "sctp-probe")
	defer func() { _ = f.Close() }()
	if err := f.SetDeadline(deadline); err != nil {
		return err
	}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fmt.Errorf("connect: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	// Wait until connect is done, as the net package does: writable, then
	// SO_ERROR, and getpeername to tell a finished connect from a spurious
	// wake-up (a fresh socket can be reported writable before it connects).
	var connErr error
	err = rc.Write(func(fd uintptr) bool {
		soErr, gerr := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case gerr != nil:
			connErr = fmt.Errorf("SO_ERROR: %w", gerr)
			return true
		case soErr != 0 && !errors.Is(unix.Errno(soErr), unix.EINPROGRESS):
			connErr = unix.Errno(soErr)
			return true
		}
		_, perr := unix.Getpeername(int(fd))
		return perr == nil
	})
	if err != nil {
		return classify(fmt.Errorf("connect: %w", err))
	}
	if connErr != nil {
		return fmt.Errorf("connect: %w", connErr)
	}
	return exchange(f, token)
}
