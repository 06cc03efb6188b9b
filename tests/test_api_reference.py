"""docs/API.md is what scripts/api_reference.py makes of the code, and every public name has a docstring."""

from __future__ import annotations

import pytest

from tests.helpers import load_script

api_reference = load_script("api_reference")


def test_api_page_matches_the_code():
    page = api_reference.OUT.read_text(encoding="utf-8")
    assert page == api_reference.render(), "docs/API.md is out of date: run python scripts/api_reference.py"


def test_every_public_module_is_listed_once_and_signatures_read_as_source():
    page = api_reference.render()
    for module in api_reference.MODULES:
        assert page.count(f"\n## `{module}`\n") == 1
    assert "- **`relpsp_linear(t_in: Tensor, weight: Tensor, *, theta: float = 1.0, t_max: float = inf," in page
    assert "'Tensor'" not in page  # annotations written as in the source, not as quoted strings


def test_a_public_name_without_docstring_is_refused():
    def undocumented():
        pass

    with pytest.raises(SystemExit, match=r"some\.module\.undocumented has no docstring"):
        api_reference.describe("some.module", "undocumented", undocumented)


def test_guide_settings_table_matches_the_code():
    page = api_reference.GUIDE.read_text(encoding="utf-8")
    assert page == api_reference.guide_with_settings(page), "docs/GUIDE.md is out of date: run scripts/api_reference.py"
    table = api_reference.render_settings()
    assert "| `weight_decay` | `float` | `0.0` |" in table
    assert "| `data_dir` | `str \\| None` | `(unset)` |" in table  # a pipe inside a cell is escaped
    with pytest.raises(SystemExit, match="settings markers"):
        api_reference.guide_with_settings("# a page without the markers\n")
