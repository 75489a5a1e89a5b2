// Package datasource reads Envoy's DataSource values: a file name, inline
// bytes or an inline string.
package datasource

import (
	"fmt"
	"os"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Read returns the bytes ds names. A missing file or an empty DataSource is
// an error saying which.
func Read(ds *corev3.DataSource) ([]byte, error) {
	switch s := ds.GetSpecifier().(type) {
	case *corev3.DataSource_Filename:
		b, err := os.ReadFile(s.Filename)
		if err != nil {
			return nil, fmt.Errorf("filename: %w", err)
		}
		return b, nil
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), nil
	default:
		return nil, fmt.Errorf("one of filename, inline_bytes or inline_string is required")
	}
}
