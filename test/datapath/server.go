package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

type serverKey struct {
	proto Proto
	port  uint16
}

// Server answers probes on one port of a pod, on all of its addresses (IPv4
// and IPv6): stream servers (TCP, SCTP) echo every line, the UDP server
// echoes every datagram. It remembers every request it read.
type Server struct {
	Proto Proto
	Port  uint16

	closer io.Closer
	wg     sync.WaitGroup

	mu   sync.Mutex
	seen map[string]struct{}
}

// Saw reports whether the server read the request carrying token.
func (s *Server) Saw(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.seen[token]
	return ok
}

// Requests returns how many distinct requests the server read.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

func (s *Server) record(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen[token] = struct{}{}
}

// Close stops the server and waits for its goroutines.
func (s *Server) Close() error {
	err := s.closer.Close()
	s.wg.Wait()
	return err
}

// Serve starts (or returns the running) server for proto/port in the pod.
func (p *Pod) Serve(t testing.TB, proto Proto, port uint16) *Server {
	t.Helper()
	srv, err := p.serve(proto, port)
	if err != nil {
		t.Fatalf("serve %s/%d in %s: %v", proto, port, p.Name, err)
	}
	return srv
}

func (p *Pod) server(proto Proto, port uint16) *Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.servers[serverKey{proto, port}]
}

func (p *Pod) serve(proto Proto, port uint16) (*Server, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := serverKey{proto, port}
	if srv, ok := p.servers[key]; ok {
		return srv, nil
	}
	srv, err := listen(p.NS, proto, port)
	if err != nil {
		return nil, err
	}
	p.servers[key] = srv
	return srv, nil
}

func (p *Pod) stopServers() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, srv := range p.servers {
		_ = srv.Close()
		delete(p.servers, key)
	}
}

// listen starts a server in namespace ns (netns.None() for the current one),
// on the wildcard address of both families. Port 0 picks a free port.
func listen(ns netns.NsHandle, proto Proto, port uint16) (*Server, error) {
	srv := &Server{Proto: proto, Port: port, seen: map[string]struct{}{}}
	addr := net.JoinHostPort("", portString(port))
	switch proto {
	case TCP:
		var ln net.Listener
		if err := inNS(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
			return nil, err
		}
		srv.closer = ln
		srv.Port = uint16(ln.Addr().(*net.TCPAddr).Port)
		srv.wg.Add(1)
		go srv.acceptLoop(func() (io.ReadWriteCloser, error) { return ln.Accept() })
	case SCTP:
		var ln *sctpListener
		if err := inNS(ns, func() (err error) { ln, err = listenSCTP(port); return err }); err != nil {
			return nil, err
		}
		srv.closer = ln
		srv.Port = ln.port
		srv.wg.Add(1)
		go srv.acceptLoop(ln.accept)
	case UDP:
		var pc net.PacketConn
		if err := inNS(ns, func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
			return nil, err
		}
		srv.closer = pc
		srv.Port = uint16(pc.LocalAddr().(*net.UDPAddr).Port)
		srv.wg.Add(1)
		go srv.udpLoop(pc)
	default:
		return nil, fmt.Errorf("no server for protocol %q", proto)
	}
	return srv, nil
}

type deadliner interface {
	SetDeadline(time.Time) error
}

func (s *Server) acceptLoop(accept func() (io.ReadWriteCloser, error)) {
	defer s.wg.Done()
	for {
		conn, err := accept()
		if err != nil {
			return // closed
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { _ = conn.Close() }()
			if d, ok := conn.(deadliner); ok {
				_ = d.SetDeadline(time.Now().Add(10 * time.Second))
			}
			r := bufio.NewReader(conn)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				s.record(strings.TrimSuffix(line, "\n"))
				if _, err := conn.Write([]byte(line)); err != nil {
					return
				}
			}
		}()
	}
}

func (s *Server) udpLoop(pc net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.record(string(buf[:n]))
		_, _ = pc.WriteTo(buf[:n], from)
	}
}
