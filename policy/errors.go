package policy

import "fmt"

// InputError reports a problem in one Kubernetes object: which object, which
// field, and what is wrong. The rule sets computed despite it are safe (the
// faulty part allows nothing); the agent turns these into logs and Events on
// the object.
type InputError struct {
	// Kind is MultiNetworkPolicy, Pod, Namespace or NetworkAttachmentDefinition.
	Kind      string
	Namespace string
	Name      string
	// Field is a JSON path into the object, e.g.
	// spec.ingress[0].from[1].ipBlock.cidr or
	// metadata.annotations[k8s.v1.cni.cncf.io/network-status].
	Field string
	Err   error
}

func (e *InputError) Error() string {
	obj := e.Name
	if e.Namespace != "" {
		obj = e.Namespace + "/" + e.Name
	}
	return fmt.Sprintf("%s %s: %s: %v", e.Kind, obj, e.Field, e.Err)
}

func (e *InputError) Unwrap() error { return e.Err }
