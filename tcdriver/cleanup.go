package tcdriver

import (
	"context"
	"errors"
	"fmt"
)

// CleanupResult is what Cleanup found on one device with a clsact qdisc.
type CleanupResult struct {
	Dev string `json:"device"`
	// Removed counts our filters removed (with dryRun: that would be).
	Removed int `json:"removed"`
	// Kept counts the foreign filters left in place.
	Kept int `json:"kept"`
}

// Cleanup removes every filter of ours (entry filters and owned chains,
// docs/tc-rule-pipeline.md#ownership) from devs and nothing else: foreign
// filters and the clsact qdisc stay. It is what uninstalling the agent
// leaves to do on a node. Devices without a clsact qdisc are skipped, and
// so are devices that disappear meanwhile. After removing, it reads each
// device back and fails if a filter of ours is still there. Errors name the
// device; Cleanup goes on with the other devices and returns them joined.
func Cleanup(ctx context.Context, d Driver, devs []string, dryRun bool) ([]CleanupResult, error) {
	var out []CleanupResult
	var errs []error
	for _, dev := range devs {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		st, err := d.Dump(ctx, dev)
		if errors.Is(err, ErrNoDevice) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !st.Clsact {
			continue
		}
		ours := len(st.Ours())
		res := CleanupResult{Dev: dev, Removed: ours, Kept: len(st.Filters) - ours}
		if ours > 0 && !dryRun {
			if err := d.Remove(ctx, dev); err != nil {
				errs = append(errs, fmt.Errorf("cleanup %s: %w", dev, err))
				continue
			}
			after, err := d.Dump(ctx, dev)
			if err != nil {
				errs = append(errs, fmt.Errorf("cleanup %s: reading back: %w", dev, err))
				continue
			}
			if left := len(after.Ours()); left > 0 {
				errs = append(errs, fmt.Errorf("cleanup %s: %d filters of ours still installed:\n%s", dev, left, after.Canonical()))
				continue
			}
		}
		out = append(out, res)
	}
	return out, errors.Join(errs...)
}
