// storm: a reconnect storm from a client that is not Switchboard's own load tool.
//
// It opens -clients WebSocket connections (-concurrency handshakes at a time, as fast as
// the server accepts them), joins each to one of -rooms rooms (the seed's join frame,
// without waiting for an answer), keeps reading everything, and samples the server's
// resident memory from /proc/<pid>/status (so run it on the server's machine):
//
//   - peak: the highest RSS while the connections open;
//   - idle: RSS after -settle with 1 message/s into one room;
//   - light: RSS after -settle with 1 message/s into every room.
//
// Each figure is reported as KiB per connection above the server's RSS before the storm.
// Bounded: -clients connections, two -settle phases, then it closes everything and exits.
//
// Build (Debian's Go and gorilla/websocket, no module proxy):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o storm .
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

func rssKiB(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			fields := strings.Fields(line)
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			return n
		}
	}
	return -1
}

type report struct {
	Clients       int     `json:"clients"`
	Connected     int64   `json:"connected"`
	Errors        int64   `json:"errors"`
	OpenSeconds   float64 `json:"open_seconds"`
	BaseKiB       int64   `json:"base_kib"`
	PeakPerConn   float64 `json:"peak_kib_per_conn"`
	IdlePerConn   float64 `json:"idle_kib_per_conn"`
	LightPerConn  float64 `json:"light_kib_per_conn"`
	Received      int64   `json:"frames_received"`
	ClosedByServer int64  `json:"closed_by_server"`
}

func main() {
	url := flag.String("url", "ws://127.0.0.1:8080/ws", "the server's WebSocket URL")
	clients := flag.Int("clients", 10000, "connections to open")
	rooms := flag.Int("rooms", 100, "rooms the connections join, round-robin")
	concurrency := flag.Int("concurrency", 64, "handshakes in flight at once")
	pid := flag.Int("pid", 0, "the server's process id")
	settle := flag.Duration("settle", 8*time.Second, "how long each traffic phase runs before RSS is read")
	flag.Parse()
	if *pid == 0 || *clients < 1 || *rooms < 1 || *concurrency < 1 {
		fmt.Fprintln(os.Stderr, "storm: -pid is required; -clients, -rooms, -concurrency must be at least 1")
		os.Exit(2)
	}

	r := report{Clients: *clients, BaseKiB: rssKiB(*pid)}
	var received, closed atomic.Int64
	conns := make([]*websocket.Conn, *clients)
	dialer := websocket.Dialer{ReadBufferSize: 4096, WriteBufferSize: 4096, HandshakeTimeout: 30 * time.Second}

	// Peak RSS while the storm lasts.
	var peak atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if v := rssKiB(*pid); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	started := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				c, _, err := dialer.Dial(*url, nil)
				if err != nil {
					atomic.AddInt64(&r.Errors, 1)
					continue
				}
				room := fmt.Sprintf("storm-%d", i%*rooms)
				join, _ := json.Marshal(map[string]string{"type": "join", "room_id": room})
				if err := c.WriteMessage(websocket.TextMessage, join); err != nil {
					atomic.AddInt64(&r.Errors, 1)
					c.Close()
					continue
				}
				conns[i] = c
				atomic.AddInt64(&r.Connected, 1)
				go func() {
					for {
						if _, _, err := c.ReadMessage(); err != nil {
							if _, ok := err.(*websocket.CloseError); ok {
								closed.Add(1)
							}
							return
						}
						received.Add(1)
					}
				}()
			}
		}()
	}
	for i := 0; i < *clients; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	r.OpenSeconds = time.Since(started).Seconds()
	time.Sleep(500 * time.Millisecond)
	close(stopSampling)
	<-sampled
	perConn := func(kib int64) float64 {
		return float64(kib-r.BaseKiB) / float64(r.Connected)
	}
	r.PeakPerConn = perConn(peak.Load())

	// Publishers: connection i of room k is conns[k] (the first joiner of each room).
	publish := func(roomCount int, d time.Duration) {
		var writers sync.Mutex
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) {
			for k := 0; k < roomCount && k < len(conns); k++ {
				c := conns[k]
				if c == nil {
					continue
				}
				msg, _ := json.Marshal(map[string]string{
					"type": "message", "room_id": fmt.Sprintf("storm-%d", k), "content": "tick",
				})
				writers.Lock()
				_ = c.WriteMessage(websocket.TextMessage, msg)
				writers.Unlock()
			}
			time.Sleep(time.Second)
		}
	}
	publish(1, *settle)
	r.IdlePerConn = perConn(rssKiB(*pid))
	publish(*rooms, *settle)
	r.LightPerConn = perConn(rssKiB(*pid))
	r.Received = received.Load()
	r.ClosedByServer = closed.Load()

	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
