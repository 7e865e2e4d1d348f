package datapath

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread switched into the network namespace ns, then
// switches the thread back. fn runs on a fresh goroutine whose thread is
// locked for the duration; if the thread cannot be switched back it stays
// locked, and the Go runtime destroys it when the goroutine exits, so no
// other goroutine ever runs in the wrong namespace. Goroutines started by fn
// do not inherit ns; sockets created by fn stay in ns.
func Do(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer func() { _ = orig.Close() }()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("restore netns: %w", err) // thread stays locked and dies with us
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// newNamedNetns creates the network namespace /run/netns/name (so that
// `ip -n name` reaches it) without moving the caller's thread.
func newNamedNetns(name string) (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	resc := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			resc <- result{netns.None(), fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer func() { _ = orig.Close() }()
		remember(&created.netns, name)
		ns, nerr := netns.NewNamed(name) // switches this thread into the new namespace
		if err := netns.Set(orig); err != nil {
			if nerr == nil {
				_ = ns.Close()
			}
			resc <- result{netns.None(), fmt.Errorf("restore netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		if nerr != nil {
			nerr = fmt.Errorf("create netns %s: %w", name, nerr)
		}
		resc <- result{ns, nerr}
	}()
	r := <-resc
	return r.ns, r.err
}
