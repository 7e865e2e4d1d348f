package preflight

import (
	"strconv"
	"strings"
)

// kernelAtLeast tells whether a release ("6.1.0-13-amd64") is at least
// major.minor; known is false when the release cannot be read.
func kernelAtLeast(release string, major, minor int) (atLeast, known bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false, false
	}
	maj, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false, false
	}
	return maj > major || maj == major && mi >= minor, true
}
