package accesslog

import (
	"os"
	"strings"
	"testing"
)

// TestOperatorsDocumented keeps docs/observability.md's operator table in
// step with the operators the compiler accepts.
func TestOperatorsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range OperatorNames() {
		if !strings.Contains(string(doc), "`%"+name) && !strings.Contains(string(doc), "`%"+strings.Split(name, "_WITHOUT_PORT")[0]) {
			t.Errorf("operator %%%s%% is not documented in docs/observability.md", name)
		}
	}
	if want := "`" + strings.Join(flagNames[:], " ") + "`"; !strings.Contains(string(doc), want) {
		t.Errorf("docs/observability.md does not list the response flags in order: %s", want)
	}
}
