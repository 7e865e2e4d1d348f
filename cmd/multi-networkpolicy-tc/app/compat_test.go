package app

import (
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"github.com/spf13/pflag"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
)

func TestParseLogLevelReadsNamesAndKlogVerbosity(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want logrus.Level
	}{
		{"0", logrus.InfoLevel}, {"2", logrus.InfoLevel}, {"3", logrus.InfoLevel},
		{"4", logrus.DebugLevel}, {"5", logrus.TraceLevel}, {"10", logrus.TraceLevel},
		{"warn", logrus.WarnLevel}, {"debug", logrus.DebugLevel},
	} {
		if got, err := parseLogLevel(tt.in); err != nil || got != tt.want {
			t.Errorf("parseLogLevel(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"-1", "loud", ""} {
		if _, err := parseLogLevel(bad); err == nil {
			t.Errorf("parseLogLevel(%q): no error", bad)
		}
	}
}

func TestKlogVFlagSetsTheLogLevel(t *testing.T) {
	defer logrus.SetLevel(logrus.GetLevel())
	for _, args := range [][]string{{"-v=4", "version"}, {"--v=4", "version"}, {"version", "--v", "4"}} {
		logrus.SetLevel(logrus.InfoLevel)
		var out, errOut strings.Builder
		if code := Main(args, &out, &errOut); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut.String())
		}
		if logrus.GetLevel() != logrus.DebugLevel {
			t.Errorf("%v: log level %v, want debug", args, logrus.GetLevel())
		}
	}
	var out, errOut strings.Builder
	if code := Main([]string{"-v=x", "version"}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), `--log-level: "x"`) {
		t.Errorf("-v=x: exit %d, stderr %q", code, errOut.String())
	}
}

func TestCompatFlagsMapOntoOurs(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		resync   time.Duration
		rules    string
		socket   string
		warnings []string
		err      string
	}{
		{name: "sync-period in seconds", args: []string{"--sync-period=30"}, resync: 30 * time.Second,
			warnings: []string{"flag --sync-period=30 is deprecated: read as --resync-period=30s"}},
		{name: "our spelling wins", args: []string{"--sync-period=30", "--resync-period=2m"}, resync: 2 * time.Minute,
			warnings: []string{"flag --sync-period is ignored: --resync-period=2m0s is set"}},
		{name: "sync-period zero", args: []string{"--sync-period=0"}, err: "--sync-period=0: must be at least 1 (seconds)"},
		{name: "pod-iptables", args: []string{"--pod-iptables=/var/lib/x"}, resync: DefaultResyncPeriod, rules: "/var/lib/x",
			warnings: []string{"flag --pod-iptables=/var/lib/x is deprecated: read as --pod-rules-path=/var/lib/x"}},
		{name: "host-prefix", args: []string{"--host-prefix=/host"}, resync: DefaultResyncPeriod, socket: "/host/var/lib/kubelet/pod-resources/kubelet.sock",
			warnings: []string{"flag --host-prefix=/host is deprecated: read as --podresources-socket=/host/var/lib/kubelet/pod-resources/kubelet.sock"}},
		{name: "host-prefix with our socket flag", args: []string{"--host-prefix=/host", "--podresources-socket=/run/k.sock"}, resync: DefaultResyncPeriod, socket: "/run/k.sock",
			warnings: []string{"flag --host-prefix is ignored: --podresources-socket=/run/k.sock is set"}},
		{name: "ignored flags", args: []string{"--container-runtime=docker", "--logtostderr", "--log_file_max_size=1800"}, resync: DefaultResyncPeriod,
			warnings: []string{
				"flag --container-runtime is ignored: " + insteadRuntime,
				"flag --logtostderr is ignored: " + insteadLogging,
				"flag --log_file_max_size is ignored: " + insteadLogging,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
			opts := NewAgentOptions()
			opts.AddFlags(fs)
			c := &compatFlags{}
			addCompatFlags(fs, c)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			log, hook := test.NewNullLogger()
			err := applyCompatFlags(fs, c, opts, log)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.socket == "" {
				tt.socket = podresources.DefaultSocket
			}
			if opts.ResyncPeriod != tt.resync || opts.PodRulesPath != tt.rules || opts.PodResourcesSocket != tt.socket {
				t.Errorf("resync %s, pod rules %q, socket %q; want %s, %q, %q", opts.ResyncPeriod, opts.PodRulesPath, opts.PodResourcesSocket, tt.resync, tt.rules, tt.socket)
			}
			var got []string
			for _, e := range hook.AllEntries() {
				got = append(got, e.Message)
			}
			if strings.Join(got, "\n") != strings.Join(tt.warnings, "\n") {
				t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.warnings, "\n"))
			}
		})
	}
}

func TestCompatFlagsAreHiddenFromHelp(t *testing.T) {
	var out, errOut strings.Builder
	if code := Main([]string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, l := range legacyFlags {
		if strings.Contains(out.String(), "--"+l.name+" ") {
			t.Errorf("--help shows %s", l.name)
		}
	}
}
