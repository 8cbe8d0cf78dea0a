// Fetch one URL with Go's net/http default client, as an unmodified app
// would: proxies from HTTP_PROXY/HTTPS_PROXY/NO_PROXY (upper or lower case,
// http.ProxyFromEnvironment), CA trust from SSL_CERT_FILE.
//
// usage: go run main.go URL
//
// Prints one JSON object {status, body}; exit 0 when an HTTP response
// arrived, 2 on a transport error (JSON has "error").
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run main.go URL")
		os.Exit(64)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	out := json.NewEncoder(os.Stdout)
	resp, err := client.Get(os.Args[1])
	if err != nil {
		out.Encode(map[string]string{"error": err.Error()})
		os.Exit(2)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		out.Encode(map[string]string{"error": "reading body: " + err.Error()})
		os.Exit(2)
	}
	out.Encode(map[string]interface{}{"status": resp.StatusCode, "body": string(body)})
}
