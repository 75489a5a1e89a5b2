package localmesh

import (
	"fmt"
	"sync/atomic"

	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/source"
	"meshd.dev/meshd/xds/translate"
)

// editNotes bounds the edit reports waiting for the progress loop; a
// report that finds it full is dropped (the control plane's log keeps
// every one).
const editNotes = 8

// editReporter is the sink `meshd up -f` gives its file watcher: it passes
// every result on to the control plane's sink and, once armed (after the
// file's first load, which the start-up block already reports), tells the
// person at the terminal what became of each saved edit. Without it a
// rejected edit would show only in the control plane's log, inside the
// temporary directory, while the sidecars silently kept the last good
// config.
type editReporter struct {
	sink  source.Sink
	path  string
	armed atomic.Bool
	notes chan string // read by localMesh.watch
}

func newEditReporter(sink source.Sink, path string) *editReporter {
	return &editReporter{sink: sink, path: path, notes: make(chan string, editNotes)}
}

// Publish implements source.Sink.
func (r *editReporter) Publish(res *translate.Result, warnings []model.Warning) error {
	err := r.sink.Publish(res, warnings)
	switch {
	case err != nil:
		r.note(fmt.Sprintf("meshd up: %s not published, the sidecars keep the last good config: %v", r.path, err))
	case len(warnings) > 0:
		r.note(fmt.Sprintf("meshd up: %s applied (version %s) with %d warnings: meshd doctor -f %s explains them", r.path, res.Version, len(warnings), r.path))
	default:
		r.note(fmt.Sprintf("meshd up: %s applied (version %s)", r.path, res.Version))
	}
	return err
}

// RecordError implements source.Sink.
func (r *editReporter) RecordError(err error) {
	r.sink.RecordError(err)
	r.note(fmt.Sprintf("meshd up: %s rejected, the sidecars keep the last good config:\n%v", r.path, err))
}

func (r *editReporter) note(s string) {
	if !r.armed.Load() {
		return
	}
	select {
	case r.notes <- s:
	default:
	}
}
