"""The shared index.html writer escapes text and formats numbers."""
from probes.html import Figure, Section, Table, fmt, write_index


def test_write_index_escapes_and_formats(tmp_path):
    path = write_index(tmp_path, "T <1>", [
        Section("S & co", paragraphs=["a <script>x</script>"], figures=[Figure("f.png", "cap")],
                tables=[Table(["h"], [[0.123456], [None], [3]], caption="tab")], code="python -m probes x")],
        intro=["intro"])
    html = path.read_text()
    assert path.name == "index.html" and "<title>T &lt;1&gt;</title>" in html
    assert "&lt;script&gt;" in html and "<script>" not in html and "S &amp; co" in html
    assert '<img src="f.png"' in html and "<td>0.123</td>" in html and "<td>–</td>" in html
    assert "<pre>python -m probes x</pre>" in html and "<caption>tab</caption>" in html
    assert fmt(123456.0) == "1.235e+05" and fmt(2) == "2"
