"""What a learner does in a browser, in a real headless Chromium driven by Selenium: upload a photo to the chapter 2
Gradio app and read its prediction; open a chapter copy in JupyterLab 4, run a questionnaire cell, see the verdict.

Screenshots go to test-artifacts/ (git-ignored). The tests skip only where Chromium or its driver is not installed.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
    pytest.skip(f"Chromium or chromedriver is not installed ({CHROMIUM}, {DRIVER}): apt-get install chromium chromium-driver",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev requirement: pip install -e '.[dev]'")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url, proc, timeout=180):
    "Wait until `url` answers (any status), or fail with the server's output if it died or never answered."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None: break
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError: return
        except OSError: time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"{url} never answered; server output:\n{proc.communicate()[0][-3000:]}")


@pytest.fixture
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000", "--disable-gpu"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(120)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture
def server_env(tmp_path):
    env = {**os.environ, "COURSE_HOME": str(tmp_path / "home"), "GRADIO_ANALYTICS_ENABLED": "False",
           "COURSE_WORKSPACE": str(tmp_path / "ws"), "PYTHONUNBUFFERED": "1"}
    return env


def small_export(folder: Path) -> Path:
    "A classifier (ResNet-18 with random weights, 32 px) exported with its preprocessing: enough for the app."
    from course.data.block import CategoryBlock, DataBlock, parent_label, RandomSplitter
    from course.vision.augment import Normalize
    from course.vision.core import get_image_files, ResizeTo
    from course.vision.data import ImageBlock
    from course.vision.deploy import export_classifier
    from course.vision.learner import vision_learner
    data = folder.parent / "photos"
    for k, (cls, colour) in enumerate({"black": (20, 20, 20), "grizzly": (120, 80, 50), "teddy": (220, 170, 110)}.items()):
        (data / cls).mkdir(parents=True)
        for i in range(4): Image.new("RGB", (40, 30), tuple(min(255, c + 7 * i) for c in colour)).save(data / cls / f"{i}.jpg")
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                    splitter=RandomSplitter(0.25, seed=0), item_tfms=ResizeTo(32), batch_tfms=[Normalize()]).dataloaders(data, bs=4, device="cpu")
    learn = vision_learner(dls, "resnet18", pretrained=False)
    export_classifier(learn, folder)   # size and resize method read from the validation pipeline: 32 px, crop
    return data / "teddy" / "0.jpg"


def test_gradio_app_predicts_an_uploaded_photo(tmp_path, browser, server_env):
    from course.vision.deploy import ImageClassifier
    folder = tmp_path / "bear-app"
    photo = small_export(folder)
    expected = ImageClassifier(folder).predict(photo)[0]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from course.tools.cli import cli; cli()", "app", str(folder), "--port", str(port)],
                            env=server_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", proc)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0]
        upload.send_keys(str(photo))
        submit = wait.until(lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Submit"])[0]
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "img"))   # the photo is on the page before we submit
        submit.click()
        # gr.Label writes the top class as a heading and one confidence (in %) per class
        wait.until(lambda d: "%" in d.find_element(By.TAG_NAME, "body").text)
        browser.save_screenshot(str(ARTIFACTS / "gradio_app.png"))
        lines = [l.strip() for l in browser.find_element(By.TAG_NAME, "body").text.splitlines() if l.strip()]
        after = lines[lines.index("prediction") + 1:]   # the output block: its top class, then class / percentage rows
        assert after[0] == expected, lines
        assert {"black", "grizzly", "teddy"} <= set(after) and sum(l.endswith("%") for l in after) == 3, lines
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()


def test_jupyterlab_learner_runs_a_question_and_sees_the_verdict(tmp_path, browser, server_env):
    ws = tmp_path / "ws"
    start = subprocess.run([sys.executable, "-c", "from course.tools.cli import cli; cli()", "start", "4"], env=server_env,
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert start.returncode == 0, start.stderr
    notebook = next(ws.glob("04_*.ipynb"))
    port, token = free_port(), "course-browser-test"
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ws}", "--LabApp.news_url=",
                             "--ServerApp.disable_check_xsrf=True", *(["--allow-root"] if os.geteuid() == 0 else [])],
                            env=server_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/status?token={token}", proc)
        browser.get(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
        wait = WebDriverWait(browser, 180)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
        wait.until(lambda d: "Idle" in d.find_element(By.TAG_NAME, "body").text or d.find_elements(By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator[data-status='idle']"))
        def run(cell):
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", cell)
            cell.find_element(By.CSS_SELECTOR, ".cm-content").click()
            cell.find_element(By.CSS_SELECTOR, ".cm-content").send_keys(Keys.SHIFT, Keys.ENTER)
            wait.until(lambda d: cell.find_element(By.CSS_SELECTOR, ".jp-InputPrompt").text.strip() not in ("[ ]:", "[*]:", ""))
        # the chapter's imports first (they bring `check`), as a learner runs the notebook from the top
        run(wait.until(lambda d: [c for c in d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")
                                  if "from course.quiz import" in c.text])[0])
        # then the first questionnaire cell: check("04.01", ...)
        cell = wait.until(lambda d: [c for c in d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")
                                     if 'check("04.01"' in c.text])[0]
        run(cell)
        out = wait.until(lambda d: [o for o in cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output") if o.text.strip()])
        browser.save_screenshot(str(ARTIFACTS / "jupyterlab_question.png"))
        text = " ".join(o.text for o in out)
        assert "04.01" in text and "Traceback" not in text and "Error" not in text, text
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()
