package policy

// DropCaches forgets every policy's resolution cache, so benchmarks can
// measure a cold computation (the agent's start-up).
func (e *Engine) DropCaches() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.state.policies {
		p.cache = resolutionCache{}
	}
}
