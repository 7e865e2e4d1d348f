package app

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

// Set at build time by `make build` / `make image`:
//
//	-ldflags "-X <module>/cmd/multi-networkpolicy-tc/app.version=v1.2.3
//	          -X ....commit=<sha> -X ....buildDate=<RFC 3339>"
//
// Without them (go build, go install) the module version and VCS revision
// come from the binary's build information where the go command put them.
var (
	version   string
	commit    string
	buildDate string
)

// Version identifies a build of the binary.
type Version struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	BuildDate string `json:"buildDate"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

func currentVersion() Version {
	v := Version{Version: version, Commit: commit, BuildDate: buildDate, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v.Version == "" && bi.Main.Version != "" {
			v.Version = bi.Main.Version // "(devel)" for a build inside the repository
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && v.Commit == "":
				v.Commit = s.Value
			case s.Key == "vcs.time" && v.BuildDate == "":
				v.BuildDate = s.Value
			}
		}
	}
	for _, f := range []*string{&v.Version, &v.Commit, &v.BuildDate} {
		if *f == "" {
			*f = "unknown"
		}
	}
	return v
}

func (v Version) String() string {
	return fmt.Sprintf("multi-networkpolicy-tc %s (commit %s, built %s, %s, %s)", v.Version, v.Commit, v.BuildDate, v.GoVersion, v.Platform)
}

func versionFields() logrus.Fields {
	v := currentVersion()
	return logrus.Fields{"version": v.Version, "commit": v.Commit, "buildDate": v.BuildDate, "goVersion": v.GoVersion}
}

// newBuildInfoGauge is the build_info metric: always 1, the build in its
// labels (one series per process), as Prometheus exporters conventionally
// expose it.
func newBuildInfoGauge() prometheus.Collector {
	v := currentVersion()
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace:   metricsNamespace,
		Name:        "build_info",
		Help:        "The running build: always 1, labelled with version, commit, build date and Go version.",
		ConstLabels: prometheus.Labels{"version": v.Version, "commit": v.Commit, "build_date": v.BuildDate, "go_version": v.GoVersion},
	}, func() float64 { return 1 })
}

func newVersionCommand(stdout io.Writer) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and build date of this binary",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			v := currentVersion()
			switch output {
			case "text":
				_, err := fmt.Fprintln(stdout, v.String())
				return err
			case "json":
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			return badInput(fmt.Errorf("--output %q: want text or json", output))
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
