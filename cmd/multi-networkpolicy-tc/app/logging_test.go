package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/sirupsen/logrus"
	"k8s.io/klog/v2"
)

// TestKlogLinesComeOutInTheChosenFormat: client-go's klog lines go through
// logrus, with their key/values as fields; V(n>0) lines only at debug.
func TestKlogLinesComeOutInTheChosenFormat(t *testing.T) {
	var buf bytes.Buffer
	log := logrus.New()
	log.SetOutput(&buf)
	log.SetFormatter(&logrus.JSONFormatter{})
	routeKlog(log)
	defer klog.ClearLogger()

	klog.ErrorS(errors.New("connection refused"), "Failed to watch", "reflector", "pods")
	klog.V(4).InfoS("chatty")
	klog.Flush()
	var lines []map[string]any
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("not JSON: %v: %s", err, buf.String())
		}
		lines = append(lines, m)
	}
	if len(lines) != 1 {
		t.Fatalf("%d lines, want 1 (the V(4) line is debug): %v", len(lines), lines)
	}
	if l := lines[0]; l["msg"] != "Failed to watch" || l["level"] != "error" || l["error"] != "connection refused" || l["reflector"] != "pods" {
		t.Errorf("line %v", l)
	}
}
