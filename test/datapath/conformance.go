package datapath

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The conformance run's record: which suites ran on which PF and how, and
// per representor how many of the filters applied were in hardware against
// how many the offload profile expects there. Suites register with
// ConformanceSuite, the bridge helpers of the tcdriver suites record every
// apply with RecordOffload, and the test binary's TestMain writes
// WriteConformanceReport at the end.

// ReportEnv names the file the report is written to (default
// $TMPDIR/multi-networkpolicy-tc-conformance.txt).
const ReportEnv = "MNPTC_CONFORMANCE_REPORT"

// OffloadCheck is the in_hw check of one device after one apply.
type OffloadCheck struct {
	// Dev is the representor (or the uplink's), Port what it stands for
	// ("pod b", "uplink").
	Dev, Port string
	// Profile is the offload profile the driver compiled for.
	Profile string
	// Filters counts our filters on the device, InHW those the kernel
	// reports in hardware, WantHW those the profile expects there, Missing
	// those expected there and not in hardware.
	Filters, InHW, WantHW, Missing int
	// Reasons counts every filter not in hardware by reason.
	Reasons map[string]int
}

type suiteResult struct {
	name     string
	status   string
	duration time.Duration
}

type offloadRow struct {
	suite, dev, port, profile        string
	applies, mismatched              int
	filters, inHW, wantHW, maxMissed int
	reasons                          map[string]int
}

var conf struct {
	mu       sync.Mutex
	suites   []*suiteResult
	rows     map[string]*offloadRow
	order    []string
	selected string // profile the running kernel selects
	fields   [][2]string
}

// ConformanceSuite registers t's test as a suite of the conformance run:
// its outcome is reported when it ends, and RequireBed lets it (and its
// subtests) run on a node's PF outside the bed.
func ConformanceSuite(t *testing.T) {
	start := time.Now()
	r := &suiteResult{name: t.Name(), status: "running"}
	conf.mu.Lock()
	conf.suites = append(conf.suites, r)
	conf.mu.Unlock()
	t.Cleanup(func() {
		conf.mu.Lock()
		defer conf.mu.Unlock()
		r.duration = time.Since(start)
		switch {
		case t.Failed():
			r.status = "FAIL"
		case t.Skipped():
			r.status = "skip"
		default:
			r.status = "pass"
		}
	})
}

// SetSelectedProfile names the profile the running kernel selects: in_hw
// mismatches of that profile fail a run on hardware that claims to enforce
// in hardware; the other profiles' are reported only.
func SetSelectedProfile(name string) {
	conf.mu.Lock()
	conf.selected = name
	conf.mu.Unlock()
}

// AddReportField adds a line to the report's header.
func AddReportField(name, value string) {
	conf.mu.Lock()
	conf.fields = append(conf.fields, [2]string{name, value})
	conf.mu.Unlock()
}

// SwitchdevActive reports whether a switchdev topology is running now.
func SwitchdevActive() bool {
	pfsMu.Lock()
	defer pfsMu.Unlock()
	return len(pfs) > 0
}

// RecordOffload records the in_hw check of one apply on the switchdev PF
// in use. On a PF that claims hardware enforcement, a filter of the
// selected profile expected in hardware and not there fails t; everywhere
// else it is reported. It does nothing when no switchdev topology runs.
func RecordOffload(t testing.TB, c OffloadCheck) {
	t.Helper()
	if !SwitchdevActive() {
		return
	}
	if l := portLabel(c.Dev); l != "" {
		c.Port = l
	}
	recordOffload(t, t.Name(), LastSwitchdev(), c)
}

func recordOffload(t testing.TB, name string, info *SwitchdevInfo, c OffloadCheck) {
	t.Helper()
	suite, _, _ := strings.Cut(name, "/")
	key := suite + "\x00" + c.Dev + "\x00" + c.Profile
	conf.mu.Lock()
	if conf.rows == nil {
		conf.rows = map[string]*offloadRow{}
	}
	row := conf.rows[key]
	if row == nil {
		row = &offloadRow{suite: suite, dev: c.Dev, port: c.Port, profile: c.Profile}
		conf.rows[key] = row
		conf.order = append(conf.order, key)
	}
	row.applies++
	row.filters, row.inHW, row.wantHW, row.reasons = c.Filters, c.InHW, c.WantHW, c.Reasons
	if c.Missing > 0 {
		row.mismatched++
	}
	row.maxMissed = max(row.maxMissed, c.Missing)
	selected := conf.selected
	conf.mu.Unlock()
	if enforced, _ := info.HardwareEnforced(); enforced && c.Missing > 0 && c.Profile == selected {
		t.Errorf("%s (%s): %d of %d filters the %s profile puts in hardware are not in hardware (in_hw_count 0)", c.Dev, c.Port, c.Missing, c.WantHW, c.Profile)
	}
}

// WriteConformanceReport writes the report to $MNPTC_CONFORMANCE_REPORT
// (or the default file) and to w, and returns the file's path. It writes
// nothing, and returns "", when no switchdev topology ran.
func WriteConformanceReport(w io.Writer) (string, error) {
	info := LastSwitchdev()
	if info == nil {
		return "", nil
	}
	var b strings.Builder
	formatReport(&b, info, kernelRelease())
	path := os.Getenv(ReportEnv)
	if path == "" {
		path = filepath.Join(os.TempDir(), "multi-networkpolicy-tc-conformance.txt")
	}
	_, _ = io.WriteString(w, b.String())
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("write the conformance report: %w", err)
	}
	return path, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func formatReport(b *strings.Builder, info *SwitchdevInfo, kernel string) {
	conf.mu.Lock()
	defer conf.mu.Unlock()
	enforced, verdict := info.HardwareEnforced()
	fmt.Fprintf(b, "multi-networkpolicy-tc conformance run\n")
	field := func(k, v string) { fmt.Fprintf(b, "  %-22s %s\n", k+":", v) }
	field("kernel", kernel)
	field("PF", fmt.Sprintf("%s (%s %s)", info.PF, info.Bus, info.Device))
	field("driver", strings.TrimSpace(info.Driver+" "+info.DriverVersion))
	field("firmware", orNone(strings.TrimSpace(info.Firmware)))
	field("eswitch mode", fmt.Sprintf("%s during the run (was %s, restored)", info.Mode, info.OldMode))
	field("VFs", fmt.Sprintf("%d during the run (sriov_numvfs was %d, restored)", info.NumVFs, info.OldNumVFs))
	field("hw-tc-offload", info.HWTCOffload)
	field("kubelet", orNone(info.Kubelet))
	field("verdict", verdict)
	for _, pr := range info.Preflight.Problems {
		fmt.Fprintf(b, "    - %s\n", pr.Reason)
	}
	field("selected profile", orNone(conf.selected))
	for _, f := range conf.fields {
		field(f[0], f[1])
	}
	fmt.Fprintf(b, "suites:\n")
	failed := 0
	for _, s := range conf.suites {
		fmt.Fprintf(b, "  %-5s %s (%s)\n", s.status, s.name, s.duration.Round(100*time.Millisecond))
		if s.status == "FAIL" {
			failed++
		}
	}
	fmt.Fprintf(b, "in_hw per representor (filters after the last apply; applies with filters missing from hardware):\n")
	fmt.Fprintf(b, "  %-28s %-10s %-22s %-9s %7s %7s %7s %9s\n", "suite", "device", "port", "profile", "filters", "in_hw", "want_hw", "mismatch")
	reasons := map[string]int{}
	mismatches := 0
	for _, k := range conf.order {
		r := conf.rows[k]
		fmt.Fprintf(b, "  %-28s %-10s %-22s %-9s %7d %7d %7d %4d/%d\n", r.suite, r.dev, r.port, r.profile, r.filters, r.inHW, r.wantHW, r.mismatched, r.applies)
		for why, n := range r.reasons {
			if n > 0 { // the driver always reports reasonNotOffloaded, 0 when nothing is missing
				reasons[r.profile+": "+why] += n
			}
		}
		if r.profile == conf.selected {
			mismatches += r.mismatched
		}
	}
	fmt.Fprintf(b, "filters not in hardware after the last apply of each row, by profile and reason:\n")
	keys := make([]string, 0, len(reasons))
	for k := range reasons {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(b, "  %6d  %s\n", reasons[k], k)
	}
	switch {
	case failed > 0:
		fmt.Fprintf(b, "result: FAIL (%d suites failed)\n", failed)
	case enforced && mismatches > 0:
		fmt.Fprintf(b, "result: FAIL (%d applies of the selected profile left filters out of hardware)\n", mismatches)
	case enforced:
		fmt.Fprintf(b, "result: pass, every filter of the selected profile in hardware\n")
	default:
		fmt.Fprintf(b, "result: pass (in_hw reported, not required: %s)\n", verdict)
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// isConformanceSuite reports whether t is, or runs under, a registered
// conformance suite.
func isConformanceSuite(t testing.TB) bool {
	top, _, _ := strings.Cut(t.Name(), "/")
	conf.mu.Lock()
	defer conf.mu.Unlock()
	for _, s := range conf.suites {
		if s.name == top {
			return true
		}
	}
	return false
}
