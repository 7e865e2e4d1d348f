//go:build kernel

package tcdriver

import (
	"context"
	"fmt"
	randv2 "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/policytest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// The bridge placement (ApplyBridge) with real packets: helpers of the
// suites, the negative control that shows the representor placement
// depends on an egress hook that hardware switching skips, and
// make-before-break across bridge updates.

var testNet = policy.NetworkRef{Namespace: "test", Name: "net1"}

// bridgeOf is the Bridge of the topology: its uplink and every local pod's
// representor, with the MAC read from the pod's end of the pair and the
// pod's rule set from rules (a copy; an open one when rules has none).
func bridgeOf(t *testing.T, topo *datapath.Topology, rules map[string]*policy.RuleSet) *Bridge {
	t.Helper()
	br := &Bridge{Name: topo.Bridge()}
	if up := topo.Uplink(); up != nil {
		br.Uplinks = []string{up.Dev}
	}
	for _, p := range topo.LocalPods() {
		br.Ports = append(br.Ports, bridgePort(t, p, rules[p.Name]))
	}
	return br
}

// bridgePort is p's port: its representor, the MAC of its eth0, a copy of

// rs (open when nil) attached to p on testNet.
func bridgePort(t *testing.T, p *datapath.Pod, rs *policy.RuleSet) BridgePort {
	t.Helper()
	mac, err := p.ReadMAC()
	if err != nil {
		t.Fatal(err)
	}
	c := &policy.RuleSet{}
	if rs != nil {
		cp := *rs
		c = &cp
	}
	c.Attachment = policy.Attachment{PodNamespace: "test", PodName: p.Name, Network: testNet}
	return BridgePort{Dev: p.Rep, MAC: mac, RuleSet: c, IPs: p.Addrs()}
}

// applyBridge applies br and fails t unless it applied and no port of br
// is left with a filter on its egress hook.
func applyBridge(t testing.TB, drv *TC, br *Bridge) {
	t.Helper()
	if err := drv.ApplyBridge(context.Background(), br); err != nil {
		t.Fatalf("ApplyBridge %s: %v", br.Name, err)
	}
	requireNoEgressFilters(t, drv, bridgeDevs(br)...)
	checkOffload(t, drv, br)
}

func bridgeDevs(br *Bridge) []string {
	devs := append([]string(nil), br.Uplinks...)
	for _, p := range br.Ports {
		devs = append(devs, p.Dev)
	}
	return devs
}

// requireNoEgressFilters fails t if a device has any filter on its egress
// hook: as the kernel lists them, read with vishvananda/netlink's parser
// (not ours, so a filter our decoder skipped would still show), and as the
// driver dumps them.
func requireNoEgressFilters(t testing.TB, drv *TC, devs ...string) {
	t.Helper()
	for _, dev := range devs {
		if n := egressFilterCount(t, dev); n != 0 {
			t.Errorf("%s has %d filters on its egress hook: a frame switched in hardware never meets them", dev, n)
		}
		st, err := drv.Dump(context.Background(), dev)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range st.Filters {
			if f.Hook == HookEgress {
				t.Errorf("%s: filter on the egress hook: %s", dev, f)
			}
		}
	}
}

func egressFilterCount(t testing.TB, dev string) int {
	t.Helper()
	link, err := netlink.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := netlink.FilterList(link, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		t.Fatalf("list the egress filters of %s: %v", dev, err)
	}
	return len(fs)
}

// stripEgressHook deletes every filter on dev's egress hook, chain by chain.
func stripEgressHook(t testing.TB, drv *TC, dev string) {
	t.Helper()
	st, err := drv.Dump(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	chains := map[uint32]bool{}
	for _, f := range st.Filters {
		if f.Hook == HookEgress && !chains[f.Chain] {
			chains[f.Chain] = true
			if err := drv.nk.flushChain(dev, HookEgress, f.Chain); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// requireNoFiltersOfOurs fails t if a device still has a filter of ours.
func requireNoFiltersOfOurs(t testing.TB, drv *TC, devs ...string) {
	t.Helper()
	for _, dev := range devs {
		st, err := drv.Dump(context.Background(), dev)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(st.Ours()); n != 0 {
			t.Errorf("%s: %d filters of ours left after removal:\n%s", dev, n, st.Canonical())
		}
	}
}

func reps(topo *datapath.Topology) []string {
	var out []string
	for _, p := range topo.LocalPods() {
		out = append(out, p.Rep)
	}
	return out
}

func flushConntrack(t testing.TB) {
	t.Helper()
	if err := netlink.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		t.Fatalf("flush conntrack: %v", err)
	}
}

// TestKernelEgressHookBypass is the negative control of the placement
// suites. With hardware bridge offload a frame from the uplink or from
// another VF is switched straight to the destination VF: it never visits
// the destination representor's egress hook. The representor placement
// (Apply) puts a pod's ingress policy on that hook; with its egress-hook
// filters removed after applying (what hardware switching amounts to), a
// denied connection, outside→pod and pod→pod, gets through — asserted, so
// that the suites' claim has teeth. The bridge placement of the same
// policy has nothing on any egress hook and drops it.
func TestKernelEgressHookBypass(t *testing.T) {
	datapath.RequireBed(t)
	topo := datapath.NewTopology(t, datapath.Options{Bridge: "brx"})
	a := topo.AddPod(t, "xa", datapath.PodOptions{})
	b := topo.AddPod(t, "xb", datapath.PodOptions{})
	r := topo.AddRemotePod(t, "xr", datapath.PodOptions{})
	rules := map[string]*policy.RuleSet{"xb": {Ingress: isolatedDir(policy.Rule{
		Peers: []netip.Prefix{host(a.IPv4), host(a.IPv6), host(r.IPv4), host(r.IPv6)}, Ports: []policy.PortMatch{tcp(80)}})}}
	raw := map[*datapath.Pod]*rawPort{a: openRaw(t, a.NS, "eth0"), b: openRaw(t, b.NS, "eth0"), r: openRaw(t, r.NS, "eth0")}
	type flow struct {
		name    string
		from    *datapath.Pod
		v6      bool
		port    uint16
		allowed bool
	}
	var flows []flow
	for _, v6 := range []bool{false, true} {
		flows = append(flows,
			flow{"pod→pod allowed", a, v6, 80, true}, flow{"pod→pod denied", a, v6, 81, false},
			flow{"outside→pod allowed", r, v6, 80, true}, flow{"outside→pod denied", r, v6, 81, false})
	}
	nextID := uint16(30000)
	// send sends one TCP SYN per flow to b and returns, per flow, whether
	// it arrived.
	send := func(t *testing.T) []bool {
		t.Helper()
		ids := make([]uint16, len(flows))
		var allowed []uint16
		for i, fl := range flows {
			src, dst := fl.from.IPv4, b.IPv4
			if fl.v6 {
				src, dst = fl.from.IPv6, b.IPv6
			}
			ids[i] = nextID
			nextID++
			raw[fl.from].send(t, &frame{id: ids[i], srcMAC: fl.from.MAC, dstMAC: b.MAC, src: src, dst: dst, proto: ProtoTCP, dstPort: fl.port})
			if fl.allowed {
				allowed = append(allowed, ids[i])
			}
		}
		raw[b].waitFor(allowed, time.Second)
		time.Sleep(50 * time.Millisecond) // late arrivals of denied ones would show now
		got := make([]bool, len(flows))
		for i := range flows {
			got[i] = raw[b].saw(ids[i])
		}
		return got
	}
	name := func(fl flow) string {
		fam := "IPv4"
		if fl.v6 {
			fam = "IPv6"
		}
		return fmt.Sprintf("%s (%s TCP %d from %s)", fl.name, fam, fl.port, fl.from.Name)
	}
	for _, prof := range Profiles {
		t.Run(prof.Name, func(t *testing.T) {
			drv := newKernelDriver(t, Options{Profile: prof})
			br := bridgeOf(t, topo, rules)
			t.Cleanup(func() {
				_ = drv.RemoveBridge(context.Background(), br.Name)
				for _, dev := range reps(topo) {
					_ = drv.Remove(context.Background(), dev)
				}
			})
			flushConntrack(t)

			// The representor placement, whole: a software bridge walks
			// the egress hooks, so it enforces the policy.
			for _, p := range br.Ports {
				apply(t, drv, p.Dev, p.RuleSet)
			}
			if egressFilterCount(t, b.Rep) == 0 {
				t.Fatalf("the representor placement put nothing on %s's egress hook: the control controls nothing", b.Rep)
			}
			for i, got := range send(t) {
				if got != flows[i].allowed {
					t.Errorf("representor placement, whole: %s: delivered=%v, want %v", name(flows[i]), got, flows[i].allowed)
				}
			}

			// Its egress hooks emptied, as hardware switching bypasses them:
			// the denied connections get through.
			for _, dev := range reps(topo) {
				if egressFilterCount(t, dev) == 0 {
					continue // xa has no policy: nothing installed
				}
				stripEgressHook(t, drv, dev)
				if n := egressFilterCount(t, dev); n != 0 {
					t.Fatalf("%s still has %d egress filters", dev, n)
				}
			}
			for i, got := range send(t) {
				if !got {
					t.Errorf("representor placement without egress hooks: %s was dropped; the control must show it passing, else the suites prove nothing about egress hooks", name(flows[i]))
				}
			}

			// The bridge placement, same policy: nothing on an egress hook,
			// the denied connections are dropped where they enter.
			applyBridge(t, drv, br)
			for i, got := range send(t) {
				if got != flows[i].allowed {
					t.Errorf("bridge placement: %s: delivered=%v, want %v", name(flows[i]), got, flows[i].allowed)
				}
			}
		})
	}
}

// TestKernelMakeBeforeBreak: frames of an allowed and of a denied
// connection, from a pod of the node and from a pod behind the uplink, are
// sent continuously to a pod while ≥ 100 bridge updates are applied: rules
// changed in place (peers only), by generation switch (structure and
// ports), and a pod joining and leaving the bridge (its sections and
// dispatch entries created and removed on every port). No allowed frame
// may be lost, no denied frame may pass, and no update may leave a filter
// on an egress hook.
func TestKernelMakeBeforeBreak(t *testing.T) {
	datapath.ConformanceSuite(t)
	datapath.RequireBed(t)
	// Room for what the test sends: every allowed SYN is a conntrack
	// entry, and bursts of frames queue in the backlog of the guest's one
	// CPU (veth delivers through it); a full table or backlog would drop
	// an allowed frame for reasons that are not the policy's.
	raiseSysctl(t, "net/netfilter/nf_conntrack_max", 262144)
	raiseSysctl(t, "net/core/netdev_max_backlog", 100000)
	topo := datapath.NewTopology(t, datapath.Options{Bridge: "brm"})
	peer := topo.AddPod(t, "mpeer", datapath.PodOptions{})
	subj := topo.AddPod(t, "msubj", datapath.PodOptions{})
	joiner := topo.AddPod(t, "mjoin", datapath.PodOptions{})
	remote := topo.AddRemotePod(t, "mrem", datapath.PodOptions{})
	peerTx, remTx := openRaw(t, peer.NS, "eth0"), openRaw(t, remote.NS, "eth0")
	rx := openRaw(t, subj.NS, "eth0")
	drv := newKernelDriver(t, Options{Profile: ProfileMLX561})
	rng := randv2.New(randv2.NewPCG(1, 2))
	base := policy.Rule{Peers: []netip.Prefix{host(peer.IPv4), host(remote.IPv4)}, Ports: []policy.PortMatch{tcp(80)}}
	subjRules := func(i int) *policy.RuleSet {
		// Steps i%4 != 0 keep the structure and change only the peers of
		// the other rules (in place); steps i%4 == 0 add, drop or reorder
		// rules and change their ports (generation switch).
		shape := i / 4
		var extra []policy.Rule
		for j := 0; j < 1+shape%3; j++ {
			extra = append(extra, policy.Rule{
				Peers: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(j), byte(rng.IntN(250))}), 32)},
				Ports: []policy.PortMatch{tcp(uint16(1000 + shape))}})
		}
		rules := append([]policy.Rule{}, extra...)
		if shape%2 == 0 {
			rules = append(rules, base)
		} else {
			rules = append([]policy.Rule{base}, rules...)
		}
		return &policy.RuleSet{Ingress: isolatedDir(rules...)}
	}
	// The sender's egress is isolated too, so its port carries a real
	// sender section before the dispatch to subj's.
	peerRules := &policy.RuleSet{Egress: isolatedDir(policy.Rule{AnyPeer: true})}
	joinerRules := &policy.RuleSet{Ingress: isolatedDir(policy.Rule{Peers: []netip.Prefix{host(peer.IPv4)}, Ports: []policy.PortMatch{tcp(22)}})}
	joined := func(i int) bool { return (i/6)%2 == 1 } // joins at 6, leaves at 12, ...
	bridgeAt := func(i int) *Bridge {
		br := &Bridge{Name: topo.Bridge(), Uplinks: []string{topo.Uplink().Dev}, Ports: []BridgePort{
			bridgePort(t, peer, peerRules), bridgePort(t, subj, subjRules(i))}}
		if joined(i) {
			br.Ports = append(br.Ports, bridgePort(t, joiner, joinerRules))
		}
		return br
	}
	joinerMAC, err := joiner.ReadMAC()
	if err != nil {
		t.Fatal(err)
	}
	// dispatchesTo counts the filters matching dst_mac mac on dev's
	// ingress hook.
	dispatchesTo := func(dev string, mac net.HardwareAddr) int {
		st, err := drv.Dump(context.Background(), dev)
		if err != nil {
			t.Fatal(err)
		}
		m, _ := MACOf(mac)
		n := 0
		for _, f := range st.Ours() {
			if f.Hook == HookIngress && f.Match.DstMACMask == exactMAC && f.Match.DstMAC == m {
				n++
			}
		}
		return n
	}
	applyBridge(t, drv, bridgeAt(0))

	const (
		updates        = 120
		roundsPerStep  = 4   // rounds sent after an update is allowed to start
		roundsInFlight = 250 // rounds the sender may send per update
	)
	// rounds counts the rounds sent: an allowed and a denied frame, from
	// the local peer and the remote pod in turn. The updates are paced by it, not by the clock: update
	// i starts only after roundsPerStep rounds were sent since update i-1,
	// so every update overlaps frames however fast this CPU applies
	// filters or wakes sleepers. The sender, in turn, stops after
	// roundsInFlight rounds per update (allow), so that the frame ids (16
	// bits: (updates+1)·roundsInFlight·2 of them) and the conntrack table
	// stay bounded however slow an update is.
	var rounds, allow atomic.Int64
	allow.Store(roundsInFlight)
	stop := make(chan struct{})
	type sentIDs struct{ ok, bad []uint16 }
	// during[id] is the number of updates applied when frame id was sent.
	var during [1 << 16]int32
	var applied atomic.Int32
	result := make(chan sentIDs, 1)
	go func() {
		var s sentIDs
		id := uint16(1)
		for {
			select {
			case <-stop:
				result <- s
				return
			default:
			}
			if rounds.Load() >= allow.Load() {
				time.Sleep(time.Millisecond)
				continue
			}
			tx, from := peerTx, peer
			if rounds.Load()%2 == 1 {
				tx, from = remTx, remote
			}
			// allowed: TCP 80; denied: TCP 81.
			for _, port := range []uint16{80, 81} {
				if id == 0 {
					t.Error("frame ids wrapped: fewer rounds per update")
					break
				}
				f := &frame{id: id, srcMAC: from.MAC, dstMAC: subj.MAC, src: from.IPv4, dst: subj.IPv4, proto: ProtoTCP, dstPort: port}
				if err := tx.sendErr(f); err != nil {
					t.Errorf("send: %v", err)
				}
				during[id] = applied.Load()
				if port == 80 {
					s.ok = append(s.ok, id)
				} else {
					s.bad = append(s.bad, id)
				}
				id++
			}
			rounds.Add(1)
			runtime.Gosched()
		}
	}()
	// step lets the sender send roundsInFlight more rounds and waits for
	// roundsPerStep of them.
	step := func() {
		mark := rounds.Load()
		allow.Store(mark + roundsInFlight)
		for rounds.Load() < mark+roundsPerStep {
			time.Sleep(time.Millisecond)
		}
	}
	stalled := 0
	switches, inPlace, joins, leaves := 0, 0, 0, 0
	for i := 1; i <= updates; i++ {
		step()
		applyBridge(t, drv, bridgeAt(i))
		applied.Store(int32(i))
		if rounds.Load() >= allow.Load() {
			stalled++ // the sender ran out of rounds before the update ended
		}
		if drv.LastApply().Replaces > 0 { // a generation switch, or an entry moved to a rebuilt section
			switches++
		} else {
			inPlace++
		}
		if joined(i) != joined(i-1) {
			// The joiner's dispatch entries are on every other port while
			// it is on the bridge, and gone when it left.
			for _, dev := range []string{topo.Uplink().Dev, peer.Rep, subj.Rep} {
				if n := dispatchesTo(dev, joinerMAC); (n > 0) != joined(i) {
					t.Errorf("update %d: %s has %d dispatch entries to %s, joined=%v", i, dev, n, joiner.Name, joined(i))
				}
			}
			if joined(i) {
				joins++
			} else {
				leaves++
				requireNoFiltersOfOurs(t, drv, joiner.Rep)
			}
		}
	}
	step() // frames after the last update, too
	close(stop)
	s := <-result
	rx.waitFor(s.ok, 2*time.Second)
	time.Sleep(50 * time.Millisecond)
	lost, leaked := 0, 0
	lostIn, leakedIn := map[int32]int{}, map[int32]int{}
	for _, id := range s.ok {
		if !rx.saw(id) {
			lost++
			lostIn[during[id]+1]++
		}
	}
	for _, id := range s.bad {
		if rx.saw(id) {
			leaked++
			leakedIn[during[id]+1]++
		}
	}
	if lost+leaked > 0 {
		t.Logf("frames lost, by the update they were sent during: %v; leaked: %v", lostIn, leakedIn)
	}
	t.Logf("%d bridge updates (%d replacing filters, %d in place; %d joins, %d leaves; %d outlasted their %d rounds of frames), frames pod→pod and outside→pod: %d allowed, %d lost; %d denied, %d leaked",
		updates, switches, inPlace, joins, leaves, stalled, roundsInFlight, len(s.ok), lost, len(s.bad), leaked)
	if switches == 0 || inPlace == 0 || joins == 0 || leaves == 0 {
		t.Errorf("want updates that replace filters, in-place updates, joins and leaves; got %d, %d, %d, %d", switches, inPlace, joins, leaves)
	}
	if lost != 0 || leaked != 0 {
		t.Fatalf("make-before-break violated: %d allowed frames lost, %d denied frames leaked", lost, leaked)
	}
	if len(s.ok) < roundsPerStep*updates {
		t.Fatalf("only %d allowed frames sent during %d updates, want at least %d", len(s.ok), updates, roundsPerStep*updates)
	}
}

// raiseSysctl raises the integer sysctl at /proc/sys/<name> to at least n;
// the old value comes back when the test ends.
func raiseSysctl(t *testing.T, name string, n int) {
	t.Helper()
	path := "/proc/sys/" + name
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	cur, err := strconv.Atoi(strings.TrimSpace(string(old)))
	if err != nil || cur >= n {
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(n)), 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	t.Cleanup(func() { _ = os.WriteFile(path, old, 0o644) })
}

// TestKernelDifferentialBridge is TestKernelDifferential in the bridge
// placement: ≥ 200 random policy sets from policytest, each the rule set of
// one pod on a bridge with an open local peer and an uplink, applied with
// ApplyBridge. Random first packets are injected as raw frames where they
// would enter: ingress ones from the local peer (decided at the peer's
// port) or from a pod behind the uplink (at the uplink), egress ones from
// the pod to either. The kernel's verdict must equal the reference
// evaluator's, and the tracer's on the fake's program of the entering port.
func TestKernelDifferentialBridge(t *testing.T) {
	datapath.ConformanceSuite(t)
	datapath.RequireBed(t)
	seed := differentialSeed(t)
	rng := randv2.New(randv2.NewPCG(seed, 1))
	topo := datapath.NewTopology(t, datapath.Options{Bridge: "brb"})
	peer := topo.AddPod(t, "bpeer", datapath.PodOptions{})
	subj := topo.AddPod(t, "bsubj", datapath.PodOptions{})
	remote := topo.AddRemotePod(t, "bremote", datapath.PodOptions{})
	up := topo.Uplink().Dev
	raw := map[*datapath.Pod]*rawPort{peer: openRaw(t, peer.NS, "eth0"), subj: openRaw(t, subj.NS, "eth0"), remote: openRaw(t, remote.NS, "eth0")}
	// Every other set with Options.RoutedSources: then a frame entering by
	// the peer's port is judged by its source address, as the reference
	// evaluator judges it; otherwise as coming from the peer's own
	// addresses (docs/policy-semantics.md §4), and the oracle is the rule
	// set narrowed to them.
	drvs := make([]*TC, 2*len(Profiles))
	for i, prof := range Profiles {
		drvs[2*i] = newKernelDriver(t, Options{Profile: prof})
		drvs[2*i+1] = newKernelDriver(t, Options{Profile: prof, RoutedSources: true})
	}
	t.Cleanup(func() { _ = drvs[0].RemoveBridge(context.Background(), topo.Bridge()) })
	nextID := uint16(1)
	sets, packets, viaUplink := 0, 0, 0
	denied := map[string]int{} // by entering port
	for sets < 200 {
		s := policytest.Generate(rng, policytest.Config{Invalid: sets%4 == 0})
		eng := s.Engine()
		att := s.Attachments[rng.IntN(len(s.Attachments))]
		rs, _ := eng.Compute(att)
		if rs == nil || (!rs.Ingress.Isolated && !rs.Egress.Isolated && sets%5 != 0) {
			continue // mostly sets that isolate something
		}
		routed := sets/len(Profiles)%2 == 1
		prof, drv := Profiles[sets%len(Profiles)], drvs[2*(sets%len(Profiles))]
		if routed {
			drv = drvs[2*(sets%len(Profiles))+1]
		}
		pp, ps := bridgePort(t, peer, nil), bridgePort(t, subj, nil)
		// The peer is open, on the pod's network (a port dispatches only
		// to pods of its own network).
		pp.RuleSet.Attachment.Network = rs.Attachment.Network
		ps.RuleSet = rs
		br := &Bridge{Name: topo.Bridge(), Uplinks: []string{up}, Ports: []BridgePort{pp, ps}}
		applyBridge(t, drv, br)
		fake := NewFake(Options{Profile: prof, RoutedSources: routed}, up, peer.Rep, subj.Rep)
		fromPeer := *rs
		fromPeer.Ingress = *fromSender(&rs.Ingress, peer.Addrs())
		if err := fake.ApplyBridge(context.Background(), br); err != nil {
			t.Fatal(err)
		}
		flushConntrack(t) // each set starts with no connection
		sets++
		type sent struct {
			pp   policy.Packet
			f    *frame
			rx   *rawPort
			port string
			want bool
		}
		var batch []sent
		for i := 0; i < 12; i++ {
			pkt := s.RandomPacket(rng, att)
			f := differentialFrame(&nextID, pkt)
			local := subj.IPv4
			if pkt.Remote.Is6() {
				local = subj.IPv6
			}
			other := peer
			if rng.IntN(2) == 0 {
				other = remote
			}
			var rx *rawPort
			port := subj.Rep
			if pkt.Direction == policy.Ingress {
				f.src, f.dst, f.srcMAC, f.dstMAC, rx = pkt.Remote, local, other.MAC, subj.MAC, raw[subj]
				port = peer.Rep
				if other == remote {
					port = up
					viaUplink++
				}
				raw[other].send(t, f)
			} else {
				f.src, f.dst, f.srcMAC, f.dstMAC, rx = local, pkt.Remote, subj.MAC, other.MAC, raw[other]
				raw[subj].send(t, f)
			}
			want := s.Reference(att, pkt)
			if port == peer.Rep && !routed {
				want = fromPeer.Allows(pkt)
			}
			tp := FrameFor(pkt, local, f.id)
			tp.DstMAC, _ = MACOf(f.dstMAC)
			if tr := Trace(fake.Filters(port, HookIngress), HookIngress, tp, NewConntrack()); (tr.Verdict == Pass) != want {
				t.Fatalf("seed %d set %d: tracer on %s: %s but reference allows=%v for %+v", seed, sets, port, tr, want, pkt)
			}
			batch = append(batch, sent{pkt, f, rx, port, want})
		}
		settle(func() bool {
			for _, s := range batch {
				if s.want && !s.rx.saw(s.f.id) {
					return false
				}
			}
			return true
		})
		for _, s := range batch {
			packets++
			if !s.want {
				denied[s.port]++
			}
			if got := s.rx.saw(s.f.id); got != s.want {
				st, _ := drv.Dump(context.Background(), s.port)
				t.Fatalf("seed %d set %d: packet %+v entering by %s: kernel delivered=%v, reference allows=%v\nrule set %+v\n%s",
					seed, sets, s.pp, s.port, got, s.want, rs, st.Canonical())
			}
		}
	}
	t.Logf("%d policy sets, %d packets (%d ingress through the uplink; denied entering by the uplink %d, the peer's port %d, the pod's own port %d): kernel == reference evaluator (narrowed to the peer's addresses for frames entering by its port, in the sets without RoutedSources) == tracer, bridge placement",
		sets, packets, viaUplink, denied[up], denied[peer.Rep], denied[subj.Rep])
}
