package accesslog

import (
	"fmt"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
)

// Filter decides whether a stream is logged. A nil Filter logs everything.
type Filter interface {
	Match(i *Info) bool
}

type filterFunc func(*Info) bool

func (f filterFunc) Match(i *Info) bool { return f(i) }

// compileFilter compiles an AccessLogFilter: status_code_filter,
// duration_filter, not_health_check_filter, response_flag_filter,
// and_filter and or_filter. Errors name the field.
func compileFilter(f *accesslogv3.AccessLogFilter) (Filter, error) {
	switch t := f.GetFilterSpecifier().(type) {
	case *accesslogv3.AccessLogFilter_StatusCodeFilter:
		cmp, err := compileComparison(t.StatusCodeFilter.GetComparison())
		if err != nil {
			return nil, fmt.Errorf("status_code_filter.comparison.%w", err)
		}
		return filterFunc(func(i *Info) bool {
			code := 0
			if i.Response != nil {
				code = i.Response.Status
			}
			return cmp(uint64(code))
		}), nil
	case *accesslogv3.AccessLogFilter_DurationFilter:
		cmp, err := compileComparison(t.DurationFilter.GetComparison())
		if err != nil {
			return nil, fmt.Errorf("duration_filter.comparison.%w", err)
		}
		return filterFunc(func(i *Info) bool {
			return cmp(uint64(max(i.Duration(), 0) / time.Millisecond))
		}), nil
	case *accesslogv3.AccessLogFilter_NotHealthCheckFilter:
		// Envoy marks health checks answered by its health_check HTTP
		// filter; meshd has none, so no stream is a health check.
		return filterFunc(func(*Info) bool { return true }), nil
	case *accesslogv3.AccessLogFilter_ResponseFlagFilter:
		var want Flags
		for k, name := range t.ResponseFlagFilter.GetFlags() {
			fl, ok := FlagByName(name)
			if !ok {
				return nil, fmt.Errorf("response_flag_filter.flags[%d]: unknown response flag %q", k, name)
			}
			want |= fl
		}
		if want == 0 {
			return filterFunc(func(i *Info) bool { return i.Flags != 0 }), nil
		}
		return filterFunc(func(i *Info) bool { return i.Flags&want != 0 }), nil
	case *accesslogv3.AccessLogFilter_AndFilter:
		fs, err := compileFilters(t.AndFilter.GetFilters(), "and_filter")
		if err != nil {
			return nil, err
		}
		return filterFunc(func(i *Info) bool {
			for _, f := range fs {
				if !f.Match(i) {
					return false
				}
			}
			return true
		}), nil
	case *accesslogv3.AccessLogFilter_OrFilter:
		fs, err := compileFilters(t.OrFilter.GetFilters(), "or_filter")
		if err != nil {
			return nil, err
		}
		return filterFunc(func(i *Info) bool {
			for _, f := range fs {
				if f.Match(i) {
					return true
				}
			}
			return false
		}), nil
	case nil:
		return nil, fmt.Errorf("filter_specifier: required")
	default:
		return nil, fmt.Errorf("%T: not supported (status_code_filter, duration_filter, not_health_check_filter, response_flag_filter, and_filter, or_filter)", t)
	}
}

func compileFilters(fs []*accesslogv3.AccessLogFilter, field string) ([]Filter, error) {
	if len(fs) < 2 {
		return nil, fmt.Errorf("%s.filters: at least 2 filters required", field)
	}
	out := make([]Filter, len(fs))
	for k, f := range fs {
		c, err := compileFilter(f)
		if err != nil {
			return nil, fmt.Errorf("%s.filters[%d].%w", field, k, err)
		}
		out[k] = c
	}
	return out, nil
}

// compileComparison compiles a ComparisonFilter; its runtime_key has no
// runtime to read, so default_value is the threshold.
func compileComparison(c *accesslogv3.ComparisonFilter) (func(uint64) bool, error) {
	if c.GetValue() == nil {
		return nil, fmt.Errorf("value: required")
	}
	v := uint64(c.GetValue().GetDefaultValue())
	switch c.GetOp() {
	case accesslogv3.ComparisonFilter_EQ:
		return func(x uint64) bool { return x == v }, nil
	case accesslogv3.ComparisonFilter_GE:
		return func(x uint64) bool { return x >= v }, nil
	case accesslogv3.ComparisonFilter_LE:
		return func(x uint64) bool { return x <= v }, nil
	case accesslogv3.ComparisonFilter_NE:
		return func(x uint64) bool { return x != v }, nil
	}
	return nil, fmt.Errorf("op: %v is not supported", c.GetOp())
}
