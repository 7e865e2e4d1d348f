package tcdriver

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// WriteBatch prints, in `tc -batch` syntax, the commands that program what
// the driver installs for rs on a fresh representor dev: the clsact qdisc,
// the chains of generation 0, then the entry filters (last, as the driver
// does, so that the pipeline is complete before it becomes reachable).
// `tc -batch FILE` reproduces it.
func WriteBatch(w io.Writer, dev string, rs *policy.RuleSet, opts Options) error {
	prog, err := Compile(rs, opts)
	if err != nil {
		return err
	}
	return prog.WriteBatch(w, dev, rs.Attachment.String())
}

// WriteBatch prints the program in `tc -batch` syntax; title, when not
// empty, is printed as a comment first.
func (p *Program) WriteBatch(w io.Writer, dev, title string) error {
	bw := bufio.NewWriter(w)
	if title != "" {
		fmt.Fprintf(bw, "# %s on representor %s\n", title, dev)
	}
	writeDevBatch(bw, dev, p.Filters(), p.opts.Profile, "no policy isolates this attachment")
	return bw.Flush()
}

// WriteBatch prints every port of the bridge program in `tc -batch`
// syntax, uplinks first.
func (p *BridgeProgram) WriteBatch(w io.Writer, title string) error {
	bw := bufio.NewWriter(w)
	if title != "" {
		fmt.Fprintf(bw, "# %s\n", title)
	}
	for i, dev := range p.Order {
		if i > 0 {
			fmt.Fprintln(bw)
		}
		fmt.Fprintf(bw, "# port %s\n", dev)
		writeDevBatch(bw, dev, p.Filters(dev), p.opts.Profile, "nothing on this bridge is isolated that this port must decide")
	}
	return bw.Flush()
}

// writeDevBatch prints one device's filters: the clsact qdisc, the chains,
// then the entry filters (last, as the driver does, so that the pipeline is
// complete before it becomes reachable); on hardware profiles each line
// ends with a comment saying whether the profile offloads the filter and
// why not (tc -batch ignores it).
func writeDevBatch(bw *bufio.Writer, dev string, fs []*Filter, prof Profile, none string) {
	prof = prof.withDefault()
	if prof.Hardware {
		fmt.Fprintf(bw, "# offload profile %s: %d of %d filters in hardware; \"sw:\" filters run in software only\n", prof.Name, len(prof.Offloaded(fs)), len(fs))
	} else {
		fmt.Fprintf(bw, "# offload profile %s: every filter runs in software\n", prof.Name)
	}
	if len(fs) == 0 {
		fmt.Fprintf(bw, "# %s: no filters\n", none)
		return
	}
	fmt.Fprintf(bw, "qdisc replace dev %s clsact\n", dev)
	line := func(f *Filter) string {
		if prof.Hardware {
			return BatchLine(dev, f) + "  # " + prof.OffloadMark(f)
		}
		return BatchLine(dev, f)
	}
	var entries []*Filter
	for _, f := range fs {
		if f.Chain == 0 {
			entries = append(entries, f)
			continue
		}
		fmt.Fprintln(bw, line(f))
	}
	for _, f := range entries {
		fmt.Fprintln(bw, line(f))
	}
}

// BatchLine renders one filter as a `tc -batch` line.
func BatchLine(dev string, f *Filter) string {
	s := fmt.Sprintf("filter add dev %s %s chain %d pref %d protocol %s handle 0x%x flower", dev, f.Hook, f.Chain, f.Prio, ethName(f.Protocol), f.Handle)
	if fl := flagsString(f.Flags); fl != "" {
		s += " " + fl
	}
	if m := f.matchString(); m != "" {
		s += " " + m
	}
	cookie := ""
	if len(f.Cookie) > 0 {
		cookie = " cookie " + hex.EncodeToString(f.Cookie)
	}
	for _, a := range f.Actions {
		switch a.Kind {
		case ActAccept, ActDrop, ActGoto:
			s += " action gact " + a.String() + cookie
		default:
			s += " action " + a.String() + cookie
		}
	}
	return s
}
