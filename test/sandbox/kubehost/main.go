// Command kubehost is the host side of the sandbox: it runs etcd and
// kube-apiserver on the address of the tap device the kernel test bed's
// guest is attached to, writes the Info file the guest reads (-info), and
// serves the control endpoint the end-to-end suite uses to restart the API
// server. It stops both on SIGTERM/SIGINT. hack/sandbox/run.sh runs it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/sandbox"
)

func main() {
	dir := flag.String("dir", "", "state and logs")
	assets := flag.String("kube-assets", "", "directory with kube-apiserver and etcd")
	ip := flag.String("ip", "", "the host's address on the tap device")
	guest := flag.String("guest-address", "", "the guest's address (CIDR), passed on in the info file")
	info := flag.String("info", "", "where to write the info file")
	flag.Parse()
	if err := run(*dir, *assets, *ip, *guest, *info); err != nil {
		fmt.Fprintln(os.Stderr, "kubehost:", err)
		os.Exit(1)
	}
}

func run(dir, assets, ip, guest, infoPath string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	k, err := sandbox.StartKube(ctx, dir, assets, ip)
	if err != nil {
		return err
	}
	defer k.Stop()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return err
	}
	go func() { _ = k.ServeControl(l) }()
	b, err := json.MarshalIndent(k.Info("http://"+l.Addr().String(), guest), "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(infoPath+".tmp", b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(infoPath+".tmp", infoPath); err != nil {
		return err
	}
	fmt.Printf("kubehost: kube-apiserver ready at %s in %.1fs\n", k.Host(), time.Since(start).Seconds())
	<-ctx.Done()
	return nil
}
