package kubeletsim

import podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

// RemovePod removes one pod and returns what it held, or nil.
func (p *PodResources) RemovePod(namespace, name string) *podresourcesv1.PodResources {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, pod := range p.pods {
		if pod.Namespace == namespace && pod.Name == name {
			p.pods = append(p.pods[:i:i], p.pods[i+1:]...)
			return pod
		}
	}
	return nil
}

// Pods returns the pods the server reports.
func (p *PodResources) Pods() []*podresourcesv1.PodResources {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*podresourcesv1.PodResources(nil), p.pods...)
}

// RemovePod ends a pod as the kubelet does when it is deleted: it leaves
// PodResources and its devices become free for the next pod.
func (k *Kubelet) RemovePod(namespace, name string) {
	entry := k.podResources.RemovePod(namespace, name)
	if entry == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range entry.Containers {
		for _, d := range c.Devices {
			if p, ok := k.plugins[d.ResourceName]; ok {
				for _, id := range d.DeviceIds {
					delete(p.inUse, id)
				}
			}
		}
	}
}
