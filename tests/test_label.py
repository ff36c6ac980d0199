"""`diffclass label`: the session (answers saved at once, resumed, undone, checked, fitted), the
server's guards (token, Host header, body size, images by row only, no answer lost to two pages),
and the page itself driven in headless Chromium from the first answer to the fitted head."""

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from diffclass_cli.data.labels_table import read_labels_table
from diffclass_cli.data.sources import open_source
from diffclass_cli.labeling.server import MAX_BODY, LabelServer
from diffclass_cli.labeling.session import LabelSession
from tests.conftest import unlabeled_copy

ROOT = Path(__file__).resolve().parent.parent
TRUTH = open_source("mnist-sample:train")
TRUE_CLASS = {image_id: TRUTH.class_names[y] for image_id, y in zip(TRUTH.ids, TRUTH.labels)}


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> dict[str, Path]:
    """mnist-sample featurized with the shipped extractor: the train split as a pool nobody has labeled."""
    from typer.testing import CliRunner

    from diffclass_cli.cli import app

    folder = tmp_path_factory.mktemp("mnist")
    for split in ("train", "test"):
        result = CliRunner().invoke(app, ["featurize", f"mnist-sample:{split}", str(folder / f"{split}.h5")])
        assert result.exit_code == 0, result.output
    return {"pool": unlabeled_copy(folder / "train.h5", folder / "pool.h5"), "test": folder / "test.h5"}


@pytest.fixture
def session(mnist, tmp_path) -> LabelSession:
    return LabelSession(mnist["pool"], tmp_path / "labels.csv", budget=10, out=tmp_path / "head.skops")


def test_answers_are_saved_at_once_undone_and_resumed(session, mnist, tmp_path):
    first, second, third = session.pending()[:3]
    session.label(first, "  seven ")
    session.skip(second)
    session.label(third, "=1+1")
    assert read_labels_table(tmp_path / "labels.csv") == {session.paths[first]: "seven", session.paths[third]: "=1+1"}
    assert session.undo() == third and session.undo() == second and second in session.pending()
    again = LabelSession(mnist["pool"], tmp_path / "labels.csv", budget=10)
    assert again.labels == {session.paths[first]: "seven"} and first not in again.pending()
    assert len(again.pending()) == 9  # the other suggestions of the first session, the answered one left out
    session.label(again_first := session.pending()[0], "one")
    assert session.fit()["classes"] == ["one", "seven"] and (tmp_path / "head.skops").exists()
    before = set(session.queue)
    session.more(5)
    added = [r for r in session.queue if r not in before]
    assert len(added) == 5 and not {session.paths[r] for r in added} & set(session.labels)
    assert again_first not in added
    with pytest.raises(Exception, match="a class name has 1 to"):
        session.label(first, " ")
    with pytest.raises(Exception, match="no image"):
        session.label(10**9, "x")


def _request(server: LabelServer, path: str, body=None, token: str | None = "", host: str | None = None):
    headers = {"Content-Type": "application/json", "Host": host or f"127.0.0.1:{server.server_port}"}
    if token is not None:
        headers["X-Token"] = token or server.token
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.server_port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def server(session):
    served = LabelServer(session)
    served.start_in_thread()
    yield served
    served.shutdown()
    served.server_close()


def test_the_server_refuses_what_a_local_page_must(server, session, tmp_path):
    assert _request(server, "/api/state")[0] == 200
    assert _request(server, "/api/state", token=None)[0] == 403
    assert _request(server, "/api/state", token="guess")[0] == 403
    assert _request(server, "/api/state", host="attacker.example:80")[0] == 421  # DNS rebinding
    for path in ("/image/../../etc/passwd", "/image/%2e%2e/labels.csv", "/labels.csv", f"/{tmp_path}/labels.csv",
                 "/image/-1", "/image/99999999"):
        status, body = _request(server, path)
        assert status in (400, 404) and b"label" not in body.lower().replace(b"labeling", b"")
    assert _request(server, "/image/0")[1].startswith(b"\x89PNG")
    assert _request(server, "/api/label", b"x" * (MAX_BODY + 1))[0] == 413
    assert _request(server, "/api/label", b"[1, 2]")[0] == 400
    status, body = _request(server, "/api/label", {"row": "0; rm -rf /", "label": "x"})
    assert status == 400 and b"no image" in body
    assert not (tmp_path / "labels.csv").exists()


def test_two_pages_at_once_lose_no_answer(server, session, tmp_path):
    rows = session.pending()

    def answer(part):
        for row in part:
            assert _request(server, "/api/label", {"row": row, "label": f"c{row % 3}"})[0] == 200

    threads = [threading.Thread(target=answer, args=(rows[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert read_labels_table(tmp_path / "labels.csv") == {session.paths[r]: f"c{r % 3}" for r in rows}


# --- the page in a real browser -------------------------------------------------------------------------------------

def _browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium and chromium-driver (.ci/run installs them)")
        pytest.skip("no chromium / chromedriver here (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def _wait(driver, condition, seconds=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: condition(d))


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    """Each view as a picture: into DIFFCLASS_SCREENSHOTS (the guide's docs/label/) where set."""
    folder = Path(os.environ.get("DIFFCLASS_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


def test_label_ten_images_reopen_fix_one_fit_and_match_the_command_line(cli, mnist, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    labels, head = tmp_path / "labels.csv", tmp_path / "head.skops"
    driver = _browser(tmp_path)
    try:
        server = LabelServer(LabelSession(mnist["pool"], labels, budget=10, out=head))
        server.start_in_thread()
        driver.get(server.url)
        wrong, seen = None, []
        for i in range(10):
            current = _wait(driver, lambda d: (a := d.find_element(By.ID, "current").get_attribute("alt"))
                            and a not in seen and a)
            seen.append(current)
            if i == 0:
                _screenshot(driver, "label", tmp_path)
            truth = TRUE_CLASS[current]
            typed = str((int(truth) + 1) % 10) if i == 3 else truth  # one wrong on purpose
            wrong = current if i == 3 else wrong
            driver.find_element(By.ID, "label").send_keys(typed + Keys.ENTER)
            _wait(driver, lambda d, before=current: d.find_element(By.ID, "current").get_attribute("alt") != before
                  or d.find_element(By.ID, "check-view").is_displayed())
        _wait(driver, lambda d: d.find_element(By.ID, "check-view").is_displayed())
        server.shutdown()
        server.server_close()
        assert len(read_labels_table(labels)) == 10  # on disk before the page closed

        server = LabelServer(LabelSession(mnist["pool"], labels, budget=10, out=head))  # run again
        server.start_in_thread()
        driver.get(server.url)
        items = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".check-item"))
        assert len(items) == 10  # nothing lost, nothing asked again
        _screenshot(driver, "check", tmp_path)
        row = server.session.row_of[wrong]
        fix = driver.find_element(By.CSS_SELECTOR, f".check-item[data-row='{row}'] input")
        fix.clear()
        fix.send_keys(TRUE_CLASS[wrong] + Keys.ENTER)
        _wait(driver, lambda d: read_labels_table(labels)[wrong] == TRUE_CLASS[wrong])
        driver.find_element(By.ID, "fit").click()
        text = _wait(driver, lambda d: d.find_element(By.ID, "fitted").text)
        _screenshot(driver, "fitted", tmp_path)
        assert "head on 10 labeled images" in text
        server.shutdown()
        server.server_close()
    finally:
        driver.quit()

    page_labels = read_labels_table(labels)
    assert page_labels == {path: TRUE_CLASS[path] for path in seen}
    # The command line's way: suggest's list, filled in with the true classes, then fit --labels.
    listed = cli("suggest", mnist["pool"], "--budget", 10)
    table = tmp_path / "cli-labels.csv"
    table.write_text("path,label\n" + "".join(f"{line.split(',')[0]},{TRUE_CLASS[line.split(',')[0]]}\n"
                                              for line in listed.stdout.splitlines()[1:]))
    assert set(read_labels_table(table)) == set(page_labels)  # the page asked what suggest suggests
    assert cli("fit", mnist["pool"], "--labels", table, "--out", tmp_path / "cli.skops").exit_code == 0
    scores = [json.loads(cli("evaluate", mnist["test"], "--head", h, "--json").stdout)["accuracy"]
              for h in (head, tmp_path / "cli.skops")]
    assert scores[0] == scores[1] and scores[0] > 0.9, scores
    print(f"accuracy on mnist-sample:test after labeling 10 images on the page: {scores[0]:.3f}")


def test_the_command_prints_the_address_and_stops_on_ctrl_c(mnist, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "diffclass_cli", "label", str(mnist["pool"]), "--no-browser",
                                "--budget", "3", "--labels", str(tmp_path / "l.csv")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:") and "?token=" in url
    with urllib.request.urlopen(url, timeout=30) as reply:
        assert b"diffclass label" in reply.read()
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err and "stopped; the labels are in" in err
