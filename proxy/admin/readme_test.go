package admin

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"meshd.dev/meshd/proxy/stats"
)

// TestReadmeAdminPaths: every path the README's "Admin API" section lists
// is served, and every path with help text (the index's) is listed there
// with the query parameters its help names, so the README and GET /help
// agree.
func TestReadmeAdminPaths(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start := strings.Index(doc, "\n## Admin API\n")
	if start < 0 {
		t.Fatal(`README.md has no "## Admin API" section`)
	}
	section := doc[start+1:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile("`(?:GET |POST )?(/[a-z_/]*)").FindAllStringSubmatch(section, -1) {
		listed[m[1]] = true
	}
	s := New(newFakeBackend(), stats.NewStore(), nil)
	for p := range listed {
		if _, ok := s.routes[p]; !ok {
			t.Errorf("README's Admin API lists %s, which the admin server does not serve", p)
		}
	}
	for _, p := range s.paths {
		if p == "/" || p == "/help" {
			continue
		}
		if !listed[p] {
			t.Errorf("the admin server serves %s (in /help), which README's Admin API section does not list", p)
		}
	}
	// Every query parameter a path's help names is documented too.
	for _, p := range s.paths {
		for _, m := range regexp.MustCompile(`\?([a-z_]+)`).FindAllStringSubmatch(s.routes[p].help, -1) {
			if !strings.Contains(section, "`?"+m[1]) {
				t.Errorf("%s takes ?%s (in /help), which README's Admin API section does not document", p, m[1])
			}
		}
	}
	if len(listed) < 10 {
		t.Errorf("found %d paths in README's Admin API section; is the pattern still right?", len(listed))
	}
}
