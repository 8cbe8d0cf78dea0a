// HTTPS load through a CONNECT proxy with Go's net/http, for benches/h2.sh:
// either N streams multiplexed on ONE HTTP/2 connection, or N HTTP/1.1
// keep-alive connections, N workers each sending GETs back to back.
//
// usage: go run main.go -url https://bench.test:8443/ -proxy http://127.0.0.1:4000 \
//            -ca ca.pem -proto h2|http1 -workers 32 -duration 10s
//
// One warm-up request per worker is not counted (handshakes, leaf minting).
// Prints one JSON line {proto, workers, connections, requests, errors,
// non_2xx, seconds, rps, p50_ms, p99_ms, rate, late}; exits 1 when nothing
// succeeded.
//
// -rate R paces the load at R requests per second in all (each worker on
// its own schedule, workers/R apart, offset from each other) instead of
// back to back, so that proxies of different speeds can be compared at the
// same offered load: below saturation, the CPU a proxy spends per request
// is not shaped by how busy it keeps the client and the origin. "late"
// counts requests sent after their slot because the previous answer came
// too late (then the rate was not held). A plain http:// URL needs no -ca;
// with -proxy it goes to the proxy in absolute form, as to a forward proxy.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	target := flag.String("url", "", "HTTPS URL to GET")
	proxy := flag.String("proxy", "", "http://host:port of the proxy (empty: direct)")
	caFile := flag.String("ca", "", "CA bundle that verifies the server certificate")
	proto := flag.String("proto", "h2", "h2 (one connection, many streams) or http1 (one connection per worker)")
	workers := flag.Int("workers", 32, "concurrent requests")
	duration := flag.Duration("duration", 10*time.Second, "measured load")
	rate := flag.Float64("rate", 0, "requests per second in all, paced (0: back to back)")
	flag.Parse()

	roots := x509.NewCertPool()
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fail(err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			fail(fmt.Errorf("no certificate in %s", *caFile))
		}
	}
	if *rate < 0 {
		fail(fmt.Errorf("-rate must be 0 or more"))
	}
	var proxyURL *url.URL
	if *proxy != "" {
		u, err := url.Parse(*proxy)
		if err != nil {
			fail(err)
		}
		proxyURL = u
	}
	newClient := func() *http.Client {
		tr := &http.Transport{
			TLSClientConfig:    &tls.Config{RootCAs: roots},
			DisableCompression: true,
		}
		if proxyURL != nil {
			tr.Proxy = http.ProxyURL(proxyURL)
		}
		if *proto == "h2" {
			// Every stream on one connection.
			tr.ForceAttemptHTTP2 = true
			tr.MaxConnsPerHost = 1
		} else {
			// A non-nil empty map disables HTTP/2; one connection per
			// worker (its own transport).
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			tr.MaxConnsPerHost = 1
		}
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	if *proto != "h2" && *proto != "http1" {
		fail(fmt.Errorf("-proto must be h2 or http1"))
	}
	clients := make([]*http.Client, *workers)
	shared := newClient()
	for i := range clients {
		if *proto == "h2" {
			clients[i] = shared
		} else {
			clients[i] = newClient()
		}
	}

	var conns int64
	trace := &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) {
			if !i.Reused {
				atomic.AddInt64(&conns, 1)
			}
		},
	}
	get := func(client *http.Client) (int, string, error) {
		req, err := http.NewRequest("GET", *target, nil)
		if err != nil {
			return 0, "", err
		}
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Proto, err
	}

	// Warm up every worker's connection (h2: the one shared connection).
	var wg sync.WaitGroup
	protoSeen := ""
	var mu sync.Mutex
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, p, err := get(clients[i]); err == nil {
				mu.Lock()
				protoSeen = p
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()

	var ok, errs, non2xx, late int64
	lat := make([][]time.Duration, *workers)
	start := time.Now()
	stop := start.Add(*duration)
	// Each worker's slot interval when paced; worker i starts i/workers of
	// an interval in, so that the workers' requests interleave evenly.
	var every time.Duration
	if *rate > 0 {
		every = time.Duration(float64(*workers) / *rate * float64(time.Second))
	}
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			next := start.Add(every * time.Duration(i) / time.Duration(*workers))
			for time.Now().Before(stop) {
				if every > 0 {
					if wait := time.Until(next); wait > 0 {
						time.Sleep(wait)
					} else if wait < -every/2 {
						atomic.AddInt64(&late, 1)
					}
					next = next.Add(every)
					if !next.Before(stop.Add(every)) {
						break
					}
				}
				t0 := time.Now()
				code, _, err := get(clients[i])
				d := time.Since(t0)
				switch {
				case err != nil:
					atomic.AddInt64(&errs, 1)
				case code < 200 || code > 299:
					atomic.AddInt64(&non2xx, 1)
				default:
					atomic.AddInt64(&ok, 1)
					lat[i] = append(lat[i], d)
				}
			}
		}(i)
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
	}
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"proto": protoSeen, "workers": *workers, "connections": atomic.LoadInt64(&conns),
		"requests": ok, "errors": errs, "non_2xx": non2xx, "seconds": secs,
		"rps": float64(ok) / secs, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
		"rate": *rate, "late": atomic.LoadInt64(&late),
	})
	if ok == 0 {
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "h2load:", err)
	os.Exit(2)
}
