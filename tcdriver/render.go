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
	prof := p.opts.Profile.withDefault()
	if prof.Hardware {
		hw, total := len(prof.Offloaded(p.Filters())), p.FilterCount()
		fmt.Fprintf(bw, "# offload profile %s: %d of %d filters in hardware; \"sw:\" filters run in software only\n", prof.Name, hw, total)
	} else {
		fmt.Fprintf(bw, "# offload profile %s: every filter runs in software\n", prof.Name)
	}
	fs := p.Filters()
	if len(fs) == 0 {
		fmt.Fprintf(bw, "# no policy isolates this attachment: no filters\n")
		return bw.Flush()
	}
	fmt.Fprintf(bw, "qdisc replace dev %s clsact\n", dev)
	var entries []*Filter
	for _, f := range fs {
		if f.Chain == 0 {
			entries = append(entries, f)
			continue
		}
		fmt.Fprintln(bw, p.markedLine(dev, f))
	}
	for _, f := range entries {
		fmt.Fprintln(bw, p.markedLine(dev, f))
	}
	return bw.Flush()
}

// markedLine is BatchLine with, on hardware profiles, a trailing comment
// saying whether the profile offloads the filter and why not (tc -batch
// ignores it).
func (p *Program) markedLine(dev string, f *Filter) string {
	line := BatchLine(dev, f)
	if prof := p.opts.Profile.withDefault(); prof.Hardware {
		line += "  # " + prof.OffloadMark(f)
	}
	return line
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
