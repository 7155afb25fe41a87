"""The embedding models behind the paper's CLAP score, FAD and KL, from the packages the official
evaluation uses (the eval extra, `pip install ".[eval]"`, see the README), and the note model
behind the note metrics (transcription.py; not in the paper). Each loader
returns a small object with one method, or raises `Unavailable` with one line saying why and
what would make it available; the evaluation then skips that metric and says so.

CLAP: LAION-CLAP's music_audioset checkpoint (HTSAT-base), from Hugging Face
(lukewys/laion_clap) or a local file. VGGish (FAD) and PANNs CNN14 at 16 kHz (KL): through
frechet_audio_distance, which fetches their weights with torch.hub on first use into a folder
(torch's hub folder, or the one given), and reads them from there after.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import about, setting_of

METRIC_MODELS = ("clap", "fad", "kl", "notes")
CLAP_RATE = 48000
CLAP_REPO, CLAP_FILE = "lukewys/laion_clap", "music_audioset_epoch_15_esc_90.14.pt"


class Unavailable(Exception):
    """A metric's model cannot be used here; the message says why and how to get it."""


EVAL_EXTRA = "pip install '.[eval]' in the project"


def _why(e: Exception) -> str:
    """The error in one line of at most about 200 characters, cut between words and marked so."""
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    return text if len(text) <= 200 else text[:200].rsplit(" ", 1)[0] + " ..."


class Clap:
    """LAION-CLAP: `audio` embeds mono 48 kHz clips, `text` embeds captions."""

    def __init__(self, checkpoint: str | None, device, offline: bool):
        try:
            import laion_clap
        except Exception as e:  # noqa: BLE001 - any import failure means: not available
            raise Unavailable(f"laion_clap cannot be imported ({_why(e)}); {EVAL_EXTRA} (it brings laion-clap)") from None
        if checkpoint is None:
            from huggingface_hub import hf_hub_download
            try:
                checkpoint = hf_hub_download(CLAP_REPO, CLAP_FILE, local_files_only=offline)
            except Exception as e:  # noqa: BLE001
                raise about(Unavailable(f"the CLAP checkpoint {CLAP_REPO}/{CLAP_FILE} is not here and could not be "
                                        f"downloaded ({_why(e)}); a local copy can be given instead"),
                            "clap_checkpoint") from None
        try:
            self.model = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-base", device=device)
            self.model.load_ckpt(str(checkpoint))
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"the CLAP checkpoint {checkpoint} could not be loaded ({_why(e)})") from None
        self.model.eval()

    @torch.no_grad()
    def audio(self, wav48k: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(wav48k, dtype=np.float32))[None]
        return self.model.get_audio_embedding_from_data(x, use_tensor=True).cpu().numpy()[0]

    @torch.no_grad()
    def text(self, caption: str) -> np.ndarray:
        # laion_clap squeezes a batch of one text into the wrong shape; two copies avoid it
        return np.asarray(self.model.get_text_embedding([caption, caption]))[0]


# What frechet_audio_distance reads from its weights folder (torch's hub layout): VGGish is
# torchvggish's hub repository and its two release files, PANNs one file named as on Zenodo.
WEIGHT_FILES = {"vggish": ("harritaylor_torchvggish_master/hubconf.py", "checkpoints/vggish-10086976.pth",
                           "checkpoints/vggish_pca_params-970ea276.pth"),
                "pann": ("Cnn14_16k_mAP%3D0.438.pth",)}
LABELS = {"vggish": "VGGish (FAD)", "pann": "PANNs CNN14 (KL)"}


def missing_weights(name: str, folder: Path) -> list[str]:
    """The files of model `name` ("vggish" or "pann") that `folder` lacks."""
    return [f for f in WEIGHT_FILES[name] if not (folder / f).is_file()]


def _fad_model(name: str, weights: str | None, offline: bool):
    try:
        from frechet_audio_distance import FrechetAudioDistance
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"frechet_audio_distance cannot be imported ({_why(e)}); {EVAL_EXTRA}") from None
    folder = Path(weights) if weights else Path(torch.hub.get_dir())
    missing = missing_weights(name, folder)
    if offline and missing:  # frechet_audio_distance would try to download them, and wait on the network
        raise about(Unavailable(f"the {LABELS[name]} weights are not in {folder} (missing: {', '.join(missing)}) "
                                "and nothing is downloaded offline; run once with internet to fetch them "
                                "into that folder, or copy it from a machine where it ran"),
                    "metric_weights")
    try:
        try:
            fad = FrechetAudioDistance(ckpt_dir=str(folder), model_name=name, sample_rate=16000, use_pca=False,
                                       use_activation=False)
        except TypeError:  # releases before 0.2 had no sample_rate
            fad = FrechetAudioDistance(ckpt_dir=str(folder), model_name=name, use_pca=False, use_activation=False)
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"the {LABELS[name]} model could not be loaded from {folder} or downloaded there "
                          f"({_why(e)})") from None
    return fad


class Vggish:
    """VGGish embeddings (one 128-d row per 0.96 s) of mono 16 kHz clips, for FAD."""

    def __init__(self, weights: str | None = None, offline: bool = False):
        self.fad = _fad_model("vggish", weights, offline)

    def frames(self, wav16k: np.ndarray) -> np.ndarray:
        return np.asarray(self.fad.get_embeddings([np.asarray(wav16k, dtype=np.float32)], sr=16000))


class Panns:
    """PANNs CNN14 (16 kHz) logits over the 527 AudioSet classes, for KL."""

    def __init__(self, weights: str | None = None, offline: bool = False):
        self.model = _fad_model("pann", weights, offline).model.eval()

    @torch.no_grad()
    def logits(self, wav16k: np.ndarray) -> torch.Tensor:
        """As audioldm_eval feeds the network: the mean removed, zero-padded to at least 2 s."""
        device = next(self.model.parameters()).device
        x = np.asarray(wav16k, dtype=np.float32)
        x = np.pad(x - x.mean(), (0, max(0, 32000 - len(x))))
        out = self.model(torch.as_tensor(x, device=device)[None], None)
        probs = out["clipwise_output"][0].double().clamp(1e-7, 1 - 1e-7).cpu()
        return probs.log() - (-probs).log1p()  # the network's sigmoid, undone


def _note_model():
    from . import transcription
    for module, package in (("mir_eval", "mir_eval"), ("mido", "mido")):
        try:
            __import__(module)
        except ImportError:
            raise Unavailable(f"{module} is not installed; pip install {package}") from None
    try:
        return transcription.NoteModel()
    except transcription.Unavailable as e:
        raise Unavailable(str(e)) from None


def load(names, *, clap_checkpoint: str | None = None, metric_weights: str | None = None, device="cpu",
         offline: bool = False, report=print, hints: dict[str, str] | None = None, skipped: dict | None = None) -> dict:
    """The models for the metrics `names` (among METRIC_MODELS) that can be had: {name: model};
    one line through `report` for each that cannot, with the caller's hint for the setting at
    fault (`hints`: setting -> text) where there is one, and its reason in `skipped`."""
    loaders = {"clap": lambda: Clap(clap_checkpoint, device, offline),
               "fad": lambda: Vggish(metric_weights, offline), "kl": lambda: Panns(metric_weights, offline),
               "notes": _note_model}
    models = {}
    for name in names:
        try:
            models[name] = loaders[name]()
        except Unavailable as e:
            hint = (hints or {}).get(setting_of(e))
            report(f"{name.upper()} skipped: {e}" + (f" ({hint})" if hint else ""))
            if skipped is not None:
                skipped[name] = str(e)
    return models
