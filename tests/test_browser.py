"""The node pack in a real browser: every shipped workflow dropped on the canvas and run with the
Run button, the node search, Cancel, and the error a broken file shows (browser_harness.py).

Screenshots go to IMGEN_SCREENSHOTS (default: a pytest temporary folder, printed on failure)."""
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from browser_harness import CHROMIUM_ARGS, Frontend, chromium_path
from comfyui_harness import CLIP_SECONDS, INPUT_CHANNELS, INPUT_RATES, REPO, SLOW, SONG_SECONDS, TINY, error_message, layout_problems
from hub_harness import CHECKPOINT

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
DISPLAY_NAMES = ["Load Model (Instruct-MusicGen)", "Load Audio (Instruct-MusicGen)", "Encode Audio (Instruct-MusicGen)",
                 "Instruct Edit (Instruct-MusicGen)", "Decode Audio (Instruct-MusicGen)"]


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests: playwright is not installed "
                                         "(pip install '.[test]')")
    path = chromium_path()
    if path is None:
        pytest.skip("browser tests: no Chromium found (apt-get install chromium, or set IMGEN_CHROMIUM)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    return Path(os.environ.get("IMGEN_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


@pytest.fixture
def frontend(browser, comfy_server, screenshots, request):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    fe = Frontend(page, comfy_server.url).open()
    yield fe
    name = request.node.name.replace("/", "_")
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    shot = fe.screenshot(screenshots / f"{name}{'-FAILED' if failed else ''}.png")
    if failed:
        print(f"\nscreenshot: {shot}\nbrowser errors: {fe.errors[-10:]}")
    page.close()


def _workflow(name: str, object_info: dict) -> dict:
    workflow = json.loads((REPO / "workflows" / name).read_text())
    if "SaveAudio" not in object_info:  # ComfyUI before its core audio nodes: the pack's saver
        for node in workflow["nodes"]:
            if node["type"] == "SaveAudio":
                node["type"] = "InstructMusicGenSaveAudio"
    return workflow


def _choose_models(fe: Frontend, models: dict):
    for node in fe.nodes():
        if node["type"] == "InstructMusicGenLoader":
            for name, value in models.items():
                fe.set_widget(node["id"], name, value)


def _choose_audio(fe: Frontend, name: str):
    for node in fe.nodes():
        if node["type"] == "InstructMusicGenLoadAudio":
            fe.set_widget(node["id"], "audio", name)


def _source_of(workflow: dict, node_id: str) -> str:
    """The input file feeding a saver: follow the links back to the Load Audio node."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    node = nodes[int(node_id)]
    while node["type"] != "InstructMusicGenLoadAudio":
        ins = [i for i in node.get("inputs", []) if i.get("link") is not None and i["type"] in ("AUDIO", "IMGEN_CODES")]
        node = nodes[links[ins[0]["link"]][1]]
    return node["widgets_values"][0]


@pytest.mark.parametrize("workflow_path", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_shipped_workflow_runs_from_the_run_button(frontend, comfy_server, object_info, workflow_path):
    workflow = _workflow(workflow_path.name, object_info)
    started = time.time()
    frontend.load_workflow(workflow, workflow_path.name)
    built = {n["id"]: n for n in frontend.nodes()}
    for node in workflow["nodes"]:
        assert built[node["id"]]["type"] == node["type"]
    assert layout_problems(list(built.values()), workflow["links"]) == [], "as the frontend sized the nodes"
    _choose_models(frontend, TINY)
    prompt_id, sent = frontend.run()
    runnable = {str(n["id"]) for n in workflow["nodes"] if n["type"] not in ("Note", "MarkdownNote")}
    assert set(sent) == runnable, "the frontend left nodes out of the prompt"
    assert all(sent[i]["class_type"] for i in sent)
    history = comfy_server.wait(prompt_id)
    assert history["status"]["status_str"] == "success", error_message(history) or comfy_server.log_text()[-3000:]
    files = comfy_server.output_files(history)
    savers = [n for n in workflow["nodes"] if n["type"] in ("SaveAudio", "InstructMusicGenSaveAudio")]
    assert len(files) == len(savers) >= 1
    for node_id, path in files.items():
        source = _source_of(workflow, node_id)
        data, sr = sf.read(str(path), always_2d=True)
        assert sr == INPUT_RATES[source], path  # preserve rendering: the input's rate
        assert data.shape[1] == INPUT_CHANNELS[source], (path, data.shape)
        assert abs(data.shape[0] / sr - CLIP_SECONDS.get(source, SONG_SECONDS)) < 0.01, (path, data.shape)
        assert torch.isfinite(torch.from_numpy(data)).all() and abs(data).max() > 0
    print(f"\n{workflow_path.stem}: {time.time() - started:.1f} s in {frontend.version}")


def test_node_search_finds_the_pack(frontend):
    entries = frontend.search_nodes("Instruct-MusicGen")
    for name in DISPLAY_NAMES:
        assert any(name in e for e in entries), (name, entries)


def test_template_browser_shows_the_workflows_with_titles_and_thumbnails(frontend):
    if frontend.legacy:
        pytest.skip("this frontend predates workflow templates")
    frontend.page.get_by_role("button", name="Templates").first.click()
    frontend.page.get_by_text("instruct_musicgen", exact=True).first.click()
    for title in sorted(w.stem for w in WORKFLOWS):  # scrolled to, as a user does: thumbnails load lazily
        label = frontend.page.get_by_text(title, exact=True).first
        label.scroll_into_view_if_needed()
        frontend.page.wait_for_function("""(t) => [...document.querySelectorAll('img')]
            .some(i => i.alt === t && i.complete && i.naturalWidth > 0)""", arg=title, timeout=20000)
        assert label.is_visible()


def test_templates_without_thumbnails_still_list_and_open(frontend):
    """A server that serves a pack's template JSON but not its images (newer servers may serve
    only .json): every workflow is still listed by its title and opens with our nodes."""
    if frontend.legacy:
        pytest.skip("this frontend predates workflow templates")
    blocked = []

    def refuse(route):
        blocked.append(route.request.url)
        route.fulfill(status=404, body="")
    frontend.page.route("**/workflow_templates/**/*.jpg", refuse)
    frontend.page.get_by_role("button", name="Templates").first.click()
    frontend.page.get_by_text("instruct_musicgen", exact=True).first.click()
    titles = sorted(w.stem for w in WORKFLOWS)
    for title in titles:
        label = frontend.page.get_by_text(title, exact=True).first
        label.scroll_into_view_if_needed()
        assert label.is_visible(), title
    # no broken-image icon in place of a thumbnail: the frontend draws its placeholder
    frontend.page.wait_for_timeout(1000)
    broken = frontend.page.evaluate("""(titles) => [...document.querySelectorAll('img')].filter(i => titles.includes(i.alt)
        && i.complete && i.naturalWidth === 0 && i.offsetParent !== null).map(i => i.alt)""", titles)
    assert not broken, broken
    assert blocked, "the frontend asked for no thumbnail: the test did not test what it says"
    frontend.page.get_by_text("Remove a stem", exact=True).first.click()
    frontend.page.wait_for_function("() => (window.app?.graph?._nodes || []).some(n => n.type === "
                                    "'InstructMusicGenEdit')", timeout=20000)
    assert {n["type"] for n in frontend.nodes()} >= {"InstructMusicGenLoader", "InstructMusicGenEdit"}


def test_a_file_dropped_on_load_audio_is_uploaded_played_edited_and_the_saver_plays_the_result(
        frontend, comfy_server, object_info):
    if frontend.legacy:
        pytest.skip("this frontend predates audio upload and audio players")
    workflow = _workflow("Remove a stem.json", object_info)
    for node in workflow["nodes"]:
        if node["type"] == "SaveAudio":
            node["type"] = "InstructMusicGenSaveAudio"  # the pack's own saver, with its player
    frontend.load_workflow(workflow, "Remove a stem.json")
    load = next(n["id"] for n in workflow["nodes"] if n["type"] == "InstructMusicGenLoadAudio")
    saver = next(n["id"] for n in workflow["nodes"] if n["type"] == "InstructMusicGenSaveAudio")
    content = (comfy_server.input_dir / "clip2.wav").read_bytes()
    frontend.drop_on_node(load, "my song.wav", content, "audio/wav")
    frontend.page.wait_for_function("(id) => window.app.graph.getNodeById(id).widgets.find(w => w.name === 'audio')"
                                    ".value === 'my song.wav'", arg=load, timeout=20000)
    assert (comfy_server.input_dir / "my song.wav").read_bytes() == content
    assert "filename=my%20song.wav" in frontend.player_source(load)
    assert frontend.player_source(saver) == ""
    _choose_models(frontend, TINY)
    prompt_id, sent = frontend.run()
    history = comfy_server.wait(prompt_id)
    assert history["status"]["status_str"] == "success", error_message(history)
    [path] = comfy_server.output_files(history).values()
    data, sr = sf.read(str(path), always_2d=True)
    assert abs(data.shape[0] / sr - CLIP_SECONDS["clip2.wav"]) < 0.01
    frontend.page.wait_for_function("([id, name]) => (window.app.graph.getNodeById(id).widgets.find(w => w.name === "
                                    "'audioUI').element.getAttribute('src') || '').includes(name)",
                                    arg=[saver, path.name], timeout=20000)


def test_the_loader_node_shows_progress_while_it_loads(frontend, comfy_server, object_info):
    models = comfy_server.base / "models" / "instruct_musicgen"
    shutil.copy(models / "tiny.safetensors", models / "fresh.safetensors")  # files not loaded yet
    frontend.load_workflow(_workflow("Remove a stem.json", object_info), "Remove a stem.json")
    _choose_models(frontend, {**TINY, "adapter": "fresh.safetensors"})
    loader = next(str(n["id"]) for n in frontend.nodes() if n["type"] == "InstructMusicGenLoader")
    prompt_id, _ = frontend.run()
    assert comfy_server.wait(prompt_id)["status"]["status_str"] == "success"
    frontend.page.wait_for_timeout(1000)  # Playwright hands over websocket frames while it runs
    steps = [(m["data"]["value"], m["data"]["max"]) for m in frontend.messages
             if m.get("type") == "progress" and str(m["data"].get("node")) == loader]
    assert steps and steps[-1][0] == steps[-1][1], steps


def test_free_text_greys_out_operation_and_stem_and_new_nodes_show_their_whole_title(frontend, object_info,
                                                                                     screenshots):
    if frontend.legacy:
        pytest.skip("this frontend draws no inactive widgets")
    frontend.load_workflow(_workflow("Remove a stem.json", object_info), "Remove a stem.json")
    edit = next(n["id"] for n in frontend.nodes() if n["type"] == "InstructMusicGenEdit")
    state = """(id) => { const n = window.app.graph.getNodeById(id);
        return ['operation', 'stem'].map(name => !!n.widgets.find(w => w.name === name).computedDisabled); }"""
    assert frontend.page.evaluate(state, edit) == [False, False]
    frontend.set_widget(edit, "instruction", "Music piece. Instruct: Add Piano.")
    assert frontend.page.evaluate(state, edit) == [True, True]  # ignored by the node, so shown inactive
    frontend.page.wait_for_timeout(300)
    frontend.screenshot(screenshots / "free_text_greys_out_operation_and_stem.png")
    frontend.set_widget(edit, "instruction", "  ")
    assert frontend.page.evaluate(state, edit) == [False, False]
    # a node added as from the node search: its title fits
    fits = frontend.page.evaluate("""() => {
        const node = window.LiteGraph.createNode('InstructMusicGenEncode');
        window.app.graph.add(node);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = window.app.canvas.title_text_font;
        return [node.size[0], ctx.measureText(node.title).width + window.LiteGraph.NODE_TITLE_HEIGHT]; }""")
    assert fits[0] >= fits[1], fits


def test_the_stem_list_opens_with_the_released_checkpoints_stems_first(frontend, object_info, screenshots):
    if frontend.legacy:
        pytest.skip("the old frontend's menus are not read here")
    frontend.load_workflow(_workflow("Remove a stem.json", object_info), "Remove a stem.json")
    edit = next(n["id"] for n in frontend.nodes() if n["type"] == "InstructMusicGenEdit")
    gx, gy = frontend.page.evaluate("""(id) => { const n = window.app.graph.getNodeById(id);
        const w = n.widgets.find(w => w.name === 'stem');
        return [n.pos[0] + n.size[0] / 2, n.pos[1] + w.last_y + 10]; }""", edit)
    frontend.page.mouse.click(*frontend.to_screen(gx, gy))
    menu = frontend.page.locator(".litecontextmenu, .p-contextmenu, [role=menu]").first
    menu.wait_for(timeout=10000)
    entries = [e.strip() for e in menu.inner_text().splitlines() if e.strip()]
    frontend.screenshot(screenshots / "stem_list.png")
    assert entries[:4] == ["drums", "bass", "piano", "guitar"], entries
    assert "organ (other checkpoints)" in entries
    frontend.page.keyboard.press("Escape")


def test_encode_shows_progress(frontend, comfy_server, object_info):
    """EnCodec works through a long song in chunks; the Encode node's bar follows them to the end."""
    frontend.load_workflow(_workflow("Remove a stem.json", object_info), "Remove a stem.json")
    _choose_models(frontend, TINY)
    _choose_audio(frontend, "long.wav")
    encoder = next(str(n["id"]) for n in frontend.nodes() if n["type"] == "InstructMusicGenEncode")
    prompt_id, _ = frontend.run()
    assert comfy_server.wait(prompt_id)["status"]["status_str"] == "success"
    frontend.page.wait_for_timeout(1000)
    steps = [(m["data"]["value"], m["data"]["max"]) for m in frontend.messages
             if m.get("type") == "progress" and str(m["data"].get("node")) == encoder]
    assert len(steps) >= 2 and steps[-1] == (600, 600), steps  # 12 s at 50 frames/s, in chunks of 500


def test_encode_progress_is_drawn_on_the_node_while_it_runs(frontend, comfy_server, object_info, screenshots):
    """A minute of music is six EnCodec chunks: the page is shown mid-way, then the run is cancelled."""
    frontend.load_workflow(_workflow("Remove a stem.json", object_info), "Remove a stem.json")
    _choose_models(frontend, TINY)
    _choose_audio(frontend, "minute.wav")
    encoder = next(str(n["id"]) for n in frontend.nodes() if n["type"] == "InstructMusicGenEncode")
    prompt_id, _ = frontend.run()
    deadline = time.time() + 120
    while not any(m.get("type") == "progress" and str(m["data"].get("node")) == encoder and
                  0 < m["data"]["value"] < m["data"]["max"] for m in frontend.messages):
        assert time.time() < deadline, "no progress from Encode within 120 s"
        frontend.page.wait_for_timeout(100)
    frontend.page.wait_for_timeout(300)  # one frame of the canvas
    frontend.screenshot(screenshots / "encode_progress.png")
    shown = [m["data"] for m in frontend.messages if m.get("type") == "progress"]
    frontend.cancel()
    comfy_server.wait(prompt_id, timeout=120)
    assert shown[-1]["max"] == 3000 and 0 < shown[-1]["value"] < 3000, shown  # 60 s at 50 frames/s


def test_cancel_stops_a_long_edit_and_the_next_run_succeeds(frontend, comfy_server, object_info):
    frontend.load_workflow(_workflow("Remove a stem.json", object_info), "Remove a stem.json")
    _choose_models(frontend, SLOW)
    _choose_audio(frontend, "long.wav")
    prompt_id, _ = frontend.run()
    comfy_server.wait_until_decoding(prompt_id, "slow.safetensors")
    start = time.time()
    frontend.cancel()
    history = comfy_server.wait(prompt_id, timeout=60)
    assert time.time() - start < 10
    assert "execution_interrupted" in [m[0] for m in history["status"]["messages"]]
    _choose_models(frontend, TINY)
    _choose_audio(frontend, "song.wav")
    prompt_id, _ = frontend.run()
    assert comfy_server.wait(prompt_id)["status"]["status_str"] == "success"


def test_broken_input_file_shows_one_line_not_a_traceback(frontend, comfy_server, object_info):
    frontend.load_workflow(_workflow("Remove a stem.json", object_info), "Remove a stem.json")
    _choose_models(frontend, TINY)
    _choose_audio(frontend, "corrupt.wav")
    prompt_id, _ = frontend.run()
    history = comfy_server.wait(prompt_id)
    message = error_message(history)
    assert message.startswith("corrupt.wav cannot be read as audio: ") and "does not exist" not in message and \
        "\n" not in message.strip(), message
    details = frontend.page.get_by_role("button", name="View details")
    try:  # newer frontends first show a toast; its button opens the issues panel
        details.first.click(timeout=5000)
    except Exception:  # noqa: BLE001 - frontends that open the error dialog at once
        pass
    frontend.page.wait_for_function("(text) => document.body.innerText.includes(text)", arg=message[:40],
                                    timeout=20000)
    shown = frontend.visible_dialog_text()
    if message[:40] not in shown:  # not in a dialog: in a side panel
        shown = frontend.page.evaluate("() => document.body.innerText")
    lines = [line.strip() for line in shown.splitlines() if line.strip()]
    if frontend.legacy:
        # ComfyUI's old frontend prints the traceback of every execution error under its
        # message; ours leads, on one line, right after the header naming the node.
        assert "InstructMusicGenLoadAudio" in lines[0] and lines[1] == message.strip(), lines[:3]
    elif "Show Report" in shown:
        # The error dialog: our message on one line; the traceback stays behind "Show Report".
        assert message.strip() in lines and "Traceback" not in shown and 'File "' not in shown, shown
    else:
        # The issues panel: the node by its display name, then ComfyUI's error report, which
        # begins with our message (the stack trace follows in the report, as for any node).
        assert "Load Audio (Instruct-MusicGen)" in lines, lines[:20]
        assert any(line.endswith(message.strip()) for line in lines), lines[:40]


# ------------------------------------------------------------------ a new user's first run

@pytest.fixture(scope="module")
def first_run_server(tmp_path_factory):
    """A ComfyUI server whose model folders are empty and whose hub is a local stand-in serving
    the parity fixture under the released names (hub_harness.py)."""
    from comfyui_harness import start_test_server
    from hub_harness import Hub, hub_root
    from support import fixture_dir
    hub = Hub(hub_root(tmp_path_factory.mktemp("hub"), fixture_dir("instruct_musicgen_tiny")))
    server = None
    try:
        server = start_test_server(tmp_path_factory.mktemp("first_run"), roomy=False, models=False,
                                   env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                                        "HF_HUB_DISABLE_XET": "1"})
        if server is None:
            pytest.skip("first-run tests: no ComfyUI found")
        yield server, hub
    finally:
        if server is not None:
            server.stop()
        hub.stop()


def hub_files_of(hub) -> Path:
    return hub.root / CHECKPOINT[0] / CHECKPOINT[1]


@pytest.fixture
def first_run_page(browser, first_run_server, screenshots, request):
    server, _ = first_run_server
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    fe = Frontend(page, server.url).open()
    yield fe
    fe.screenshot(screenshots / f"{request.node.name}.png")
    page.close()


def test_a_shipped_workflow_without_weights_offers_the_checkpoint_download(first_run_page, first_run_server,
                                                                          screenshots):
    """The newest frontend reads the workflow's `models` and offers the download of the checkpoint
    it does not find in models/instruct_musicgen."""
    fe = first_run_page
    if fe.legacy:
        pytest.skip("this frontend predates the missing-models dialog")
    server, _ = first_run_server
    assert not (server.base / "models" / "instruct_musicgen" / "finetuned.ckpt").exists()
    fe.load_workflow(json.loads((REPO / "workflows" / "Remove a stem.json").read_text()), "Remove a stem.json")
    fe.page.get_by_text("finetuned.ckpt is missing").first.wait_for(timeout=20000)
    fe.screenshot(screenshots / "first_run_missing_models.png")
    fe.page.get_by_role("button", name="View details").first.click()
    fe.page.wait_for_timeout(2000)
    fe.screenshot(screenshots / "first_run_missing_models_details.png")
    panel = fe.page.get_by_text("Missing Models", exact=True).first
    assert panel.is_visible()
    text = fe.page.evaluate("() => document.body.innerText")
    assert "finetuned.ckpt\ninstruct_musicgen" in text  # the file and the folder it goes in
    # the download is offered only for a huggingface.co address of a model file: the workflow's own
    assert fe.page.evaluate("""() => [...document.querySelectorAll('button')]
        .some(b => b.innerText.trim() === 'Download' && b.offsetParent !== null)""")


def test_the_first_run_downloads_every_part_with_progress_on_the_loader_then_edits(first_run_page, first_run_server):
    """Run on a server without weights: the loader fetches the checkpoint, MusicGen-large's config,
    T5 and EnCodec into ComfyUI's model folders (the bytes' progress reaching the page), converts
    the checkpoint once, and the edit is saved."""
    fe = first_run_page
    server, hub = first_run_server
    fe.load_workflow(_workflow("Remove a stem.json", server.get("/object_info")), "Remove a stem.json")
    fe.close_dialogs()
    loader = next(str(n["id"]) for n in fe.nodes() if n["type"] == "InstructMusicGenLoader")
    prompt_id, _ = fe.run()
    history = server.wait(prompt_id)
    assert history["status"]["status_str"] == "success", error_message(history) or server.log_text()[-3000:]
    models = server.base / "models"
    served = hub_files_of(hub)
    assert (models / "instruct_musicgen" / "finetuned.ckpt").read_bytes() == served.read_bytes()
    for place in ("musicgen/musicgen-large/config.json", "musicgen/t5-base/model.safetensors",
                  "musicgen/t5-base/tokenizer.json", "musicgen/encodec_32khz/model.safetensors"):
        assert (models / place).is_file(), place
    assert not list(models.rglob("*.partial"))
    assert len(list((models / "instruct_musicgen").glob("finetuned.*.model.safetensors"))) == 1
    assert len(server.output_files(history)) == 1
    fe.page.wait_for_timeout(1000)  # Playwright hands over websocket frames while it runs
    steps = [(m["data"]["value"], m["data"]["max"]) for m in fe.messages
             if m.get("type") == "progress" and str(m["data"].get("node")) == loader]
    size = served.stat().st_size
    assert (size, size) in steps, steps[:20]  # the checkpoint's bytes, to the last
    assert any(0 < value < total == size for value, total in steps) or size <= 10 * 2**20
