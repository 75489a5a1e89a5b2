package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// config is the plugin configuration (JSON, unknown fields rejected):
//
//	{"requests_per_unit": 100, "unit": "second", "burst": 10,
//	 "key": "source-identity" | "header:NAME" | "path" | "global",
//	 "dry_run": false,
//	 "enable_x_ratelimit_headers": "OFF" | "DRAFT_VERSION_03",
//	 "max_keys": 10000}
//
// Each key value gets a bucket holding burst tokens (requests_per_unit when
// burst is 0), refilled continuously at requests_per_unit per unit.
// enable_x_ratelimit_headers has the name, values and default (OFF) of
// Envoy's local_ratelimit field: DRAFT_VERSION_03 adds x-ratelimit-limit,
// -remaining and -reset to admitted responses as well as to the 429s,
// which carry them either way. max_keys bounds the
// buckets one VM keeps in memory (DefaultMaxKeys when 0), as Envoy's
// max_dynamic_descriptors bounds local_ratelimit's: beyond it the least
// recently used is forgotten (its state stays in shared data; see the
// package comment).
type config struct {
	RequestsPerUnit int64  `json:"requests_per_unit"`
	Unit            string `json:"unit"`
	Burst           int64  `json:"burst"`
	Key             string `json:"key"`
	DryRun          bool   `json:"dry_run"`
	XRateLimit      string `json:"enable_x_ratelimit_headers"`
	MaxKeys         int    `json:"max_keys"`
}

// DefaultMaxKeys is max_keys when the configuration leaves it 0.
const DefaultMaxKeys = 10_000

// keyKind says where a request's bucket key comes from.
type keyKind int

const (
	keyGlobal keyKind = iota
	keyPath
	keyHeader
	keySourceIdentity
)

// settings is a validated configuration.
type settings struct {
	limits
	rpu     int64
	kind    keyKind
	header  string // for keyHeader, lower case
	dryRun  bool
	headers bool // enable_x_ratelimit_headers is DRAFT_VERSION_03
	maxKeys int  // most buckets a VM keeps in memory
}

func parseConfig(data []byte) (settings, error) {
	var c config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return settings{}, fmt.Errorf("plugin configuration: %w", err)
	}
	if c.RequestsPerUnit <= 0 {
		return settings{}, errors.New("plugin configuration: requests_per_unit must be > 0")
	}
	if c.Burst < 0 {
		return settings{}, errors.New("plugin configuration: burst must be >= 0")
	}
	var unit time.Duration
	switch c.Unit {
	case "second", "":
		unit = time.Second
	case "minute":
		unit = time.Minute
	default:
		return settings{}, fmt.Errorf("plugin configuration: unit %q: want second or minute", c.Unit)
	}
	if c.MaxKeys < 0 {
		return settings{}, errors.New("plugin configuration: max_keys must be >= 0 (0 is the default, 10000)")
	}
	s := settings{rpu: c.RequestsPerUnit, dryRun: c.DryRun, maxKeys: c.MaxKeys}
	if s.maxKeys == 0 {
		s.maxKeys = DefaultMaxKeys
	}
	switch c.XRateLimit {
	case "OFF", "":
	case "DRAFT_VERSION_03":
		s.headers = true
	default:
		return settings{}, fmt.Errorf("plugin configuration: enable_x_ratelimit_headers %q: want OFF or DRAFT_VERSION_03", c.XRateLimit)
	}
	capacity := c.Burst
	if capacity == 0 {
		capacity = c.RequestsPerUnit
	}
	s.limits = newLimits(capacity, c.RequestsPerUnit, unit)
	switch {
	case c.Key == "global" || c.Key == "":
		s.kind = keyGlobal
	case c.Key == "path":
		s.kind = keyPath
	case c.Key == "source-identity":
		s.kind = keySourceIdentity
	case strings.HasPrefix(c.Key, "header:") && len(c.Key) > len("header:"):
		s.kind, s.header = keyHeader, strings.ToLower(strings.TrimPrefix(c.Key, "header:"))
	default:
		return settings{}, fmt.Errorf("plugin configuration: key %q: want source-identity, header:NAME, path or global", c.Key)
	}
	return s, nil
}
