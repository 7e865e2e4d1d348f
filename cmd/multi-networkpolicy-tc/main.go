// Command multi-networkpolicy-tc enforces MultiNetworkPolicy on SR-IOV VF
// representors with TC flower rules.
package main

import (
	"os"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/cmd/multi-networkpolicy-tc/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
}
