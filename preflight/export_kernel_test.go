//go:build kernel

package preflight

// For the kernel tests, which are in preflight_test: they import
// test/datapath, which imports this package.
var (
	ReadFeature      = feature
	FeatureTCOffload = featureTCOffload
)
