// Baseline: the echo service written the way most Go programmers would write
// it: an accept loop that starts a goroutine per connection, each goroutine
// a plain blocking Read/Write loop. The runtime's netpoller (epoll on Linux)
// turns those blocking calls into parked goroutines, so this is the Go
// counterpart of tokio-echo: same contract as every server in c1m-rs (flags,
// `listening on`, half-close, back-pressure, EMFILE, summary line), standard
// library only.
//
// Its summary line also says what an idle goroutine costs: the stack memory
// in use (runtime.MemStats.StackInuse) when the most connections were open,
// minus what it was before any client came, per connection.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const usage = `Echo server, one goroutine per client (c1m-rs baseline).

Usage: go-echo [OPTIONS]

Options:
      --addr <ADDR>        Address to listen on (port 0 picks a free port) [default: 127.0.0.1:7878]
      --work-us <WORK_US>  Microseconds of CPU busy-work per newline received, before echoing it [default: 0]
  -h, --help               Print help
`

// ANCHOR: main
func main() {
	// Go's flag package takes `--addr` as well as `-addr`; errors are ours to
	// print, in one line, with exit code 2 like every server in the book.
	flags := flag.NewFlagSet("go-echo", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	addr := flags.String("addr", "127.0.0.1:7878", "")
	workUS := flags.Uint64("work-us", 0, "")
	if err := flags.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(usage)
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "go-echo: %v (see --help)\n", err)
		os.Exit(2)
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "go-echo: unexpected argument %q (see --help)\n", flags.Arg(0))
		os.Exit(2)
	}

	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot listen on %s: %v (pick another --addr)\n", *addr, err)
		os.Exit(2)
	}
	fmt.Printf("listening on %s\n", listener.Addr())

	stats := newStats()
	go stats.sample()
	go acceptLoop(listener, time.Duration(*workUS)*time.Microsecond, stats)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
	// Stop accepting; open connections close when the process exits.
	listener.Close()
	fmt.Println(stats.summary())
	os.Exit(0)
}

// ANCHOR_END: main

// ANCHOR: accept_loop
func acceptLoop(listener net.Listener, work time.Duration, stats *stats) {
	var backoff time.Duration
	var lastReport time.Time
	for {
		conn, err := listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE/ENFILE come back here, and the connection stays queued
			// in the kernel: retrying at once would spin. The runtime does
			// not retry for us; net/http's Server sleeps 5 ms, doubling up
			// to 1 s, and so do we.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			if time.Since(lastReport) >= time.Second {
				fmt.Fprintf(os.Stderr, "accept: %v; retrying in %v\n", err, backoff)
				lastReport = time.Now()
			}
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		stats.opened()
		go func() {
			defer stats.closed()
			// A client that resets only ends its own goroutine.
			_ = handleClient(conn, work)
		}()
	}
}

// ANCHOR_END: accept_loop

// ANCHOR: handle_client
// handleClient echoes one client. Write blocks until the kernel took every
// byte, and only then do we read again: a client that does not read stalls
// its own goroutine, which is the back-pressure.
func handleClient(conn net.Conn, work time.Duration) error {
	defer conn.Close()
	// (Go already sets TCP_NODELAY on every TCP connection.)
	// 4 KiB, as most Go echo examples use; it lives as long as the
	// connection, so an idle connection holds it (its pages become resident
	// once bytes have been read into them).
	buffer := make([]byte, 4096)
	for {
		n, err := conn.Read(buffer)
		if n > 0 {
			if werr := echo(conn, buffer[:n], work); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			// Client half-closed; everything it sent has been written back.
			if tcp, ok := conn.(*net.TCPConn); ok {
				return tcp.CloseWrite()
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// echo writes received back, spending work of CPU before each newline.
func echo(conn net.Conn, received []byte, work time.Duration) error {
	if work == 0 {
		_, err := conn.Write(received)
		return err
	}
	start := 0
	for i, b := range received {
		if b == '\n' {
			busyWork(work)
			if _, err := conn.Write(received[start : i+1]); err != nil {
				return err
			}
			start = i + 1
		}
	}
	if start < len(received) {
		_, err := conn.Write(received[start:])
		return err
	}
	return nil
}

// ANCHOR_END: handle_client

// busyWork stands in for handling a request: it burns CPU (not a sleep).
func busyWork(d time.Duration) {
	start := time.Now()
	for time.Since(start) < d {
	}
}

// ANCHOR: stats
// stats counts connections and samples the runtime's memory statistics
// whenever more connections are open than at any earlier sample.
type stats struct {
	served atomic.Uint64
	open   atomic.Int64

	mu            sync.Mutex
	startStack    uint64 // StackInuse before any client
	peakOpen      int64  // connections open at the busiest sample
	peakGoroutine int    // goroutines then
	peakStack     uint64 // StackInuse then
}

func newStats() *stats {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return &stats{startStack: m.StackInuse}
}

func (s *stats) opened() { s.served.Add(1); s.open.Add(1) }
func (s *stats) closed() { s.open.Add(-1) }

// sample reads MemStats (which stops the world briefly) only when the number
// of open connections reached a new high, so a steady load pays nothing.
func (s *stats) sample() {
	for range time.Tick(250 * time.Millisecond) {
		open := s.open.Load()
		s.mu.Lock()
		if open > s.peakOpen {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			s.peakOpen = open
			s.peakGoroutine = runtime.NumGoroutine()
			s.peakStack = m.StackInuse
		}
		s.mu.Unlock()
	}
}

// summary is the one line printed on SIGINT/SIGTERM.
func (s *stats) summary() string {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	s.mu.Lock()
	defer s.mu.Unlock()
	perConn := uint64(0)
	if s.peakOpen > 0 && s.peakStack > s.startStack {
		perConn = (s.peakStack - s.startStack) / uint64(s.peakOpen)
	}
	return fmt.Sprintf("summary: connections_served=%d goroutines=%d peak_connections=%d "+
		"peak_goroutines=%d stack_inuse_start_bytes=%d stack_inuse_peak_bytes=%d "+
		"stack_bytes_per_connection=%d gc_cycles=%d gc_pause_total_us=%d gomaxprocs=%d",
		s.served.Load(), runtime.NumGoroutine(), s.peakOpen,
		s.peakGoroutine, s.startStack, s.peakStack,
		perConn, m.NumGC, m.PauseTotalNs/1000, runtime.GOMAXPROCS(0))
}

// ANCHOR_END: stats
