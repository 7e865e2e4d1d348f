package preflight

// Verdict is what a PF's settings mean for the filters on its ports.
type Verdict string

// The verdicts, best first.
const (
	// Hardware: the eswitch runs the filters; the slow path sees only
	// what they send there.
	Hardware Verdict = "enforced in hardware"
	// SoftwareOnly: the filters are installed and decide, but in the
	// kernel, for every packet (slow path).
	SoftwareOnly Verdict = "enforced in software only (slow path)"
	// CannotEnforce: there is nowhere to install the filters, or the
	// preflight could not tell; pods on these VFs are not enforced.
	CannotEnforce Verdict = "cannot enforce"
)

// Verdicts lists the verdicts, best first (the metric's label values).
var Verdicts = []Verdict{Hardware, SoftwareOnly, CannotEnforce}

// rank orders verdicts: the worse, the higher.
func (v Verdict) rank() int {
	switch v {
	case Hardware:
		return 0
	case SoftwareOnly:
		return 1
	default:
		return 2
	}
}

// Label is the short form of the verdict, for metric labels:
// hardware, software-only, cannot-enforce.
func (v Verdict) Label() string {
	switch v {
	case Hardware:
		return "hardware"
	case SoftwareOnly:
		return "software-only"
	default:
		return "cannot-enforce"
	}
}

// worse returns the worse of two verdicts.
func worse(a, b Verdict) Verdict {
	if b.rank() > a.rank() {
		return b
	}
	return a
}

// Problem is one reason a PF is not enforced in hardware.
type Problem struct {
	// Verdict is what this problem alone makes of the PF.
	Verdict Verdict `json:"verdict"`
	// Reason says what is wrong and what it means, naming the object.
	Reason string `json:"reason"`
	// Fix is the command, or the flag, that fixes it; "" when there is
	// none (the device cannot offload at all).
	Fix string `json:"fix,omitempty"`
}
