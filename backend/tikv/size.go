package tikv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tikv/client-go/v2/util/codec"
)

// sizeRefresh is how often the keyspace's size is asked of PD. PD's figure
// comes from region heartbeats (about a minute apart) and is approximate
// anyway, so asking more often would only add load.
const sizeRefresh = 30 * time.Second

// Size implements backend.Backend. TiKV's transactional API cannot tell the
// size of a key range, but PD's HTTP API can: with Options.PDEndpoints set,
// a background loop asks PD every 30 seconds for the approximate size of
// the regions holding the keyspace and Size returns the last answer. That
// is one replica's worth, rounded to MiB per region, and it counts whole
// regions, so a keyspace sharing regions with other data is over-reported
// by up to a region or two (96 MiB each by default).
//
// Until PD has answered, or without PD endpoints (OpenWithClient on the
// mock), Size is the bytes of keys and values this DB has put since it was
// opened: overwritten and deleted data still count and a restart starts
// again from zero, so it is a write-volume gauge, not storage used.
func (d *DB) Size() int64 {
	if n := d.pdSize.Load(); n >= 0 {
		return n
	}
	return d.written.Load()
}

// sizeLoop refreshes pdSize until ctx ends. Errors are logged once per
// change of error, not every 30 seconds.
func (d *DB) sizeLoop(ctx context.Context, endpoints []string) {
	defer close(d.sizeDone)
	client := &http.Client{Timeout: 10 * time.Second}
	t := time.NewTicker(sizeRefresh)
	defer t.Stop()
	lastErr := ""
	for {
		n, err := regionStorageSize(ctx, client, endpoints, d.prefix, d.prefixEnd)
		switch {
		case err == nil:
			d.pdSize.Store(n)
			lastErr = ""
		case ctx.Err() != nil:
			return
		case err.Error() != lastErr:
			lastErr = err.Error()
			d.log.Warn("size: asking PD for the keyspace's size failed; Size reports bytes written instead",
				"err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// regionStorageSize asks PD's /pd/api/v1/stats/region for the approximate
// size of the regions overlapping [start, end), trying each endpoint in
// turn (any PD member answers).
func regionStorageSize(ctx context.Context, client *http.Client, endpoints []string, start, end []byte) (int64, error) {
	// PD knows regions by their keys in TiKV's memcomparable encoding.
	q := url.Values{}
	q.Set("start_key", string(codec.EncodeBytes(nil, start)))
	q.Set("end_key", string(codec.EncodeBytes(nil, end)))
	var errs []error
	for _, ep := range endpoints {
		if !strings.Contains(ep, "://") {
			ep = "http://" + ep
		}
		n, err := getStorageSize(ctx, client, strings.TrimRight(ep, "/")+"/pd/api/v1/stats/region?"+q.Encode())
		if err == nil {
			return n, nil
		}
		errs = append(errs, err)
	}
	return 0, errors.Join(errs...)
}

func getStorageSize(ctx context.Context, client *http.Client, u string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", req.URL.Redacted(), resp.Status)
	}
	var stats struct {
		StorageSize *int64 `json:"storage_size"` // MiB
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		return 0, fmt.Errorf("GET %s: %w", req.URL.Redacted(), err)
	}
	if stats.StorageSize == nil {
		return 0, fmt.Errorf("GET %s: no storage_size in the answer", req.URL.Redacted())
	}
	return *stats.StorageSize << 20, nil
}

// sizeState is the part of DB that Size uses.
type sizeState struct {
	// pdSize is PD's last answer in bytes, -1 until there is one.
	pdSize atomic.Int64
	// written approximates Size when PD cannot be asked.
	written  atomic.Int64
	sizeDone chan struct{}
}
