"""The HTML report of a run: every section, embedded pictures, and a real browser render."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser

import pytest

from cordfuse.cli import main
from cordfuse.report import SECTIONS, build_report

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)


class Outline(HTMLParser):
    """Sections (id -> text length, images) and every image source of a page."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current = None
        self.images: list[str] = []
        self.body_attrs: dict = {}
        self.tables: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body_attrs = attrs
        if tag == "section":
            self.current = attrs["id"]
            self.sections[self.current] = {"text": 0, "images": 0, "figures": 0}
        if tag == "img":
            self.images.append(attrs["src"])
            if self.current:
                self.sections[self.current]["images"] += 1
        if tag == "figure" and self.current:
            self.sections[self.current]["figures"] += 1

    def handle_data(self, data):
        if self.current:
            self.sections[self.current]["text"] += len(data.strip())
        if self.lasttag == "caption":
            self.tables.append(data)


def outline(html: str) -> Outline:
    parser = Outline()
    parser.feed(html)
    return parser


def test_results_come_first_and_the_subject_table_is_folded(tmp_path):
    """A 90-subject study's report opens with its answer (Tables 1-2, what the extra sequences
    add), not with a 90-row subject table, which is folded under the counts per cohort."""
    run = tmp_path / "study"
    (run / "prepared").mkdir(parents=True)
    subjects = [
        {"id": f"sub-{i:03d}", "cohort": "ABC"[i % 3], "sequences": ["T2Sag", "STIR"]}
        for i in range(90)
    ]
    (run / "prepared" / "dataset.json").write_text(json.dumps({"subjects": subjects}))
    ids = [s["id"] for s in subjects]
    (run / "fold.json").write_text(json.dumps({"train": ids[:87], "val": ids[87:], "test": []}))
    html = build_report(run)
    sections = list(outline(html).sections)
    assert sections == [key for key, _ in SECTIONS]
    assert sections.index("tables") < sections.index("extra") < sections.index("availability")
    assert sections.index("availability") < sections.index("qc")
    dataset = html[html.index('<section id="availability">') :]
    dataset = dataset[: dataset.index("</section>")]
    assert dataset.index('class="counts"') < dataset.index("<details>")
    folded = dataset[dataset.index("<details>") : dataset.index("</details>")]
    assert "(90 subjects)</summary>" in folded and folded.count("<td>sub-") == 90


def test_demo_report_has_every_section_with_content(tiny_demo):
    out = tiny_demo["out"]
    html = (out / "report.html").read_text()
    page = outline(html)
    assert list(page.sections) == [key for key, _ in SECTIONS]
    for key, content in page.sections.items():
        assert content["text"] > 0, key
    fold = json.loads((out / "fold.json").read_text())
    assert page.sections["qc"]["figures"] == len(fold["test"]) == 3
    assert page.sections["curves"]["figures"] == 2  # baseline and the anchored model
    assert page.sections["boxplots"]["images"] == 3  # one per cohort
    # the report opens the model zip and the derivative dataset the demo predicted into
    assert 'href="cordfuse-demo-anchored.zip"' in html and 'href="derivative/"' in html
    assert "<th>participant_id</th>" in html
    assert any(t.startswith("Table 1") for t in page.tables)
    assert any(t.startswith("Table 2") for t in page.tables)
    # self-contained: every picture is an embedded PNG, nothing is fetched
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"""(src|href)=["']https?://""", html)
    # the availability matrix lists every prepared subject with its role
    document = json.loads((out / "prepared" / "dataset.json").read_text())
    for subject in document["subjects"]:
        assert f"<td>{subject['id']}</td>" in html
    assert "<td>test</td>" in html and "<td>validation</td>" in html
    # configuration and versions used
    assert '"model": "anchored"' in unescape(html) and "<td>torch</td>" in html


def test_report_command_rebuilds_and_refuses_other_folders(tiny_demo, tmp_path, capsys):
    target = tmp_path / "again.html"
    assert main(["report", str(tiny_demo["out"]), "-o", str(target)]) == 0
    assert f"Report: {target.resolve()}" in capsys.readouterr().out
    assert list(outline(target.read_text()).sections) == [key for key, _ in SECTIONS]
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a cordfuse run folder" in err and "Traceback" not in err


def test_report_of_a_training_folder_alone(tiny_demo, tmp_path, capsys):
    """The output of ``cordfuse train`` has no dataset: the report shows what is there."""
    run = tmp_path / "baseline"
    shutil.copytree(tiny_demo["out"] / "runs" / "baseline" / "seed-0", run)
    assert main(["report", str(run)]) == 0
    page = outline((run / "report.html").read_text())
    assert list(page.sections) == [key for key, _ in SECTIONS]
    assert page.sections["curves"]["figures"] == 1 and page.sections["curves"]["images"] == 1
    html = unescape((run / "report.html").read_text())
    assert "Not in this folder." in html and '"model": "baseline"' in html


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not installed (Debian: apt-get install chromium; .ci/run installs it)",
)
def test_report_renders_in_headless_chromium(tiny_demo, tmp_path):
    report = tiny_demo["out"] / "report.html"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            report.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    page = outline(result.stdout)
    assert list(page.sections) == [key for key, _ in SECTIONS]
    # the page's own load handler counted the images the browser decoded
    loaded, total = page.body_attrs["data-images"].split("/")
    assert int(total) == len(page.images) > 0 and loaded == total
