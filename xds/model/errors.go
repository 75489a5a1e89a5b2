package model

import (
	"fmt"
	"strings"
)

// origin locates a document in its file.
type origin struct {
	source string
	index  int // 1-based position among the file's documents; 0: none
	kind   string
	ns     string
	name   string
}

// label returns "document N (Kind ns/name)", with what is known of it.
func (o origin) label() string {
	if o.index == 0 {
		return ""
	}
	s := fmt.Sprintf("document %d", o.index)
	switch {
	case o.kind != "" && o.name != "":
		s += " (" + o.kind + " " + o.ns + "/" + o.name + ")"
	case o.kind != "":
		s += " (" + o.kind + ")"
	}
	return s
}

// Problem is one reason a mesh file is rejected.
type Problem struct {
	// Source is the file name.
	Source string
	// Document is "document N (Kind ns/name)"; N counts from 1 in file
	// order; empty for a problem with the file as a whole.
	Document string
	// Field is the path of the offending field from the document root
	// (spec.outbound[1].port); empty for a problem with the whole document.
	Field string
	// Reason says what is wrong and, where it helps, what is allowed.
	Reason string
	// Index is the document's 1-based position in the file (the N of
	// Document), 0 for a problem with the file as a whole. A source that
	// builds the file from objects (kube/source) maps it back to the object.
	Index int
}

// String returns "FILE: document N (Kind ns/name): field.path: reason",
// leaving out the parts that are empty.
func (p Problem) String() string {
	parts := make([]string, 0, 4)
	for _, s := range []string{p.Source, p.Document, p.Field, p.Reason} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, ": ")
}

// Error is returned by Parse and Load for an invalid mesh file. It lists
// every problem found, in file order, and is never empty.
type Error struct {
	Problems []Problem
}

// Error returns the problems, one per line.
func (e *Error) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d problems in the mesh file:", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// problems collects Problems while a file is parsed and validated.
type problems struct {
	list []Problem
}

func (ps *problems) add(o origin, field, format string, args ...any) {
	ps.list = append(ps.list, Problem{Source: o.source, Document: o.label(), Field: field, Reason: fmt.Sprintf(format, args...), Index: o.index})
}

func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	return &Error{Problems: ps.list}
}
