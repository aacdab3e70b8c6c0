"""A small index.html writer shared by probe reports: titled sections of text, tables and figures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import jinja2


@dataclass
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence]
    caption: str = ""


@dataclass
class Figure:
    src: str  # path relative to the html file
    caption: str = ""


@dataclass
class Section:
    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()
    code: str = ""  # shown verbatim, e.g. the command that made the report


_TEMPLATE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; }
caption { text-align: left; font-weight: bold; padding: 4px 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
</style></head><body>
<h1>{{ title }}</h1>
{% for p in intro %}<p>{{ p }}</p>
{% endfor %}
{% for s in sections %}<h2>{{ s.title }}</h2>
{% for p in s.paragraphs %}<p>{{ p }}</p>
{% endfor %}{% if s.code %}<pre>{{ s.code }}</pre>
{% endif %}{% for f in s.figures %}<figure><img src="{{ f.src }}" alt="{{ f.caption or f.src }}">
<figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}{% for t in s.tables %}<table>{% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<tr>{% for h in t.headers %}<th>{{ h }}</th>{% endfor %}</tr>
{% for r in t.rows %}<tr>{% for c in r %}<td>{{ fmt(c) }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}{% endfor %}
</body></html>
""")


def fmt(value) -> str:
    """Numbers to short strings; None to an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def write_index(out_dir, title: str, sections: Sequence[Section], intro: Sequence[str] = ()) -> Path:
    """Write out_dir/index.html and return its path. Figure paths are relative to out_dir."""
    path = Path(out_dir) / "index.html"
    path.write_text(_TEMPLATE.render(title=title, intro=intro, sections=sections, fmt=fmt), encoding="utf-8")
    return path
