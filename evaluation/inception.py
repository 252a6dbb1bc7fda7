"""Inception-v3 pool3 features for FID, through torch-fidelity's ``FeatureExtractorInceptionV3``.

The network is torch-fidelity's port of the 2015-12-05 TensorFlow Inception (the one FID was defined
with); its forward takes ``uint8 [B, 3, H, W]``, resizes to 299 with a TF1.x-exact bilinear resize
(no antialias), maps to ``(x - 128) / 128`` and returns the 2048-d pool3 features. We never rewrite it.

Weights come from a LOCAL file only (these machines cannot download). The standard file is pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``; torch-fidelity's release asset
``weights-inception-2015-12-05-6726825d.pth`` is the same TF graph converted to the same layer names
(torchvision's Inception3 names, which this class uses). Both names carry ``6726825d``, by the torch.hub
convention (``check_hash``) the start of the file's sha256. The file's sha256 is checked BEFORE it is
loaded: it must start with ``eval.inception_sha256`` when that is set, else with the hash in the file's
name, else with ``6726825d``; a file that does not match is refused (a tampered or wrong download). It is
then read with ``torch.load(weights_only=True)`` (tensors only; torch-fidelity's own loader would unpickle
anything) and handed to torch-fidelity's extractor. Weights of your own: set ``eval.inception_sha256`` to
their sha256 (the protocol then says they are not the standard file). Not verified against the real files
here: no internet.

Without a weights file a *stand-in* is used: the same torch-fidelity class loaded with a fixed random
state dict (torchvision's Inception3 layout, Kaiming-normal convolutions, seed 0, identity batch norm).
Its protocol says "stand-in, not comparable to published FID"; it only checks the plumbing and ranks
runs measured with the same stand-in.

Two resize modes feed the same network:
  * ``fid``: the ``fid_resize`` (256) image goes in as is; the extractor's TF1 bilinear makes it 299.
  * ``clean_fid``: first a per-channel float32 PIL bicubic resize to 299 (PIL antialiases when it
    downsamples: clean-fid's "clean" resize), clipped to [0, 255] and rounded to uint8 because the
    extractor takes uint8 (clean-fid itself keeps float32: at most 0.5 grey level apart); the
    extractor's own resize is then the identity. Numbers are close to, not bit-identical with, the
    clean-fid package (which also uses its own TorchScript Inception).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.hub import HASH_REGEX

from core.files import sha256_of

STANDARD_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
STANDARD_SHA256_PREFIX = "6726825d"  # the hash in the file name (torch.hub naming convention)
PYTORCH_FID_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
STAND_IN_NOTE = "stand-in, not comparable to published FID"
FEATURE_LAYER = "2048"
INPUT_SIZE = 299
MODES = ("fid", "clean_fid")


class MissingWeightsError(FileNotFoundError):
    """The configured Inception weights file does not exist."""


def torch_fidelity_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def missing_weights_message(path: str | Path) -> str:
    return (
        f"FID Inception weights not found: {path}\n"
        f"FID needs the TF-Inception (2015-12-05) weights in PyTorch form, {STANDARD_WEIGHTS_NAME}. "
        f"This machine cannot download them: on a machine with internet download torch-fidelity's "
        f"GitHub release asset {torch_fidelity_url()} (or pytorch-fid's {PYTORCH_FID_URL}), copy the "
        f"file here and set eval.inception_weights to its path. Leave eval.inception_weights unset "
        f"to run with a stand-in extractor ({STAND_IN_NOTE})."
    )


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a weights file's bytes (``core.files.sha256_of``)."""
    return sha256_of(path, chunk)


def state_dict_sha256(state: dict) -> str:
    """A content hash of a state dict (names, dtypes, shapes, values) independent of pickling."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def stand_in_state_dict(seed: int = 0) -> dict:
    """A fixed random Inception state dict in the layout torch-fidelity's extractor loads."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=gen)
        elif isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.01, generator=gen)
            torch.nn.init.zeros_(module.bias)
    return net.state_dict()


def _build(weights) -> torch.nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE_LAYER], feature_extractor_weights_path=weights)


def expected_sha256(path: str | Path, configured: str | None = None) -> str:
    """The sha256 (or its start) the weights file must have: ``configured``, else the hash in its name
    (torch.hub's convention, ``NAME-HASH.ext``), else the standard file's."""
    if configured:
        return configured.lower()
    found = HASH_REGEX.search(Path(path).name)
    return found.group(1) if found and found.group(1) else STANDARD_SHA256_PREFIX


def verify_sha256(path: str | Path, expected: str) -> str:
    """The file's sha256; ``ValueError`` naming both when it does not start with ``expected``."""
    sha = file_sha256(path)
    if not sha.startswith(expected):
        raise ValueError(
            f"{path}: sha256 {sha} does not start with {expected}, the hash its name or eval.inception_sha256 "
            f"promises; refusing to load it (a damaged or tampered file?). Download {STANDARD_WEIGHTS_NAME} "
            f"again, or set eval.inception_sha256 to this file's sha256 if these are weights of your own"
        )
    return sha


def load_extractor(weights_path: str | Path, sha256: str | None = None) -> torch.nn.Module:
    """torch-fidelity's extractor with weights from a local file whose sha256 is checked first and which is
    read with ``weights_only=True`` (clear errors for a missing, tampered or wrong file)."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(missing_weights_message(path))
    verify_sha256(path, expected_sha256(path, sha256))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"expected a dict of tensors, got {type(state).__name__}")
        buf = io.BytesIO()
        torch.save(state, buf)  # tensors only: what torch-fidelity's loader reads back
        buf.seek(0)
        return _build(buf)
    except (RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        why = next((line.strip() for line in lines if "GLOBAL" in line), lines[0])  # what weights_only refused
        raise ValueError(
            f"{path} is not an Inception state dict in the layout torch-fidelity's "
            f"FeatureExtractorInceptionV3 loads ({STANDARD_WEIGHTS_NAME}): {why}"
        ) from None


def clean_resize(batch: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid's resize: per-channel float32 PIL bicubic, clipped, here rounded to uint8."""
    out = np.empty((batch.shape[0], size, size, 3), np.uint8)
    for i, img in enumerate(batch):
        for c in range(3):
            ch = Image.fromarray(img[:, :, c].astype(np.float32)).resize((size, size), Image.BICUBIC)
            out[i, :, :, c] = np.rint(np.clip(np.asarray(ch), 0, 255))
    return out


class InceptionFeatures:
    """Pool3 features of ``uint8 [B, H, W, 3]`` batches, with the protocol that produced them."""

    def __init__(
        self,
        weights_path: str | Path | None = None,
        device: str | None = None,
        stand_in_seed: int = 0,
        sha256: str | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        import torch_fidelity

        common = {
            "extractor": "torch-fidelity FeatureExtractorInceptionV3 (TF Inception-v3 port), pool3",
            "feature_layer": FEATURE_LAYER,
            "torch_fidelity": torch_fidelity.__version__,
        }
        if weights_path is None:
            state = stand_in_state_dict(stand_in_seed)
            buf = io.BytesIO()
            torch.save(state, buf)
            buf.seek(0)
            self.net = _build(buf)
            self.protocol = {
                **common,
                "weights": f"stand-in: random Kaiming init, seed {stand_in_seed}",
                "weights_sha256": state_dict_sha256(state),
                "stand_in": True,
                "note": STAND_IN_NOTE,
            }
        else:
            self.net = load_extractor(weights_path, sha256)
            sha = file_sha256(Path(weights_path).expanduser())
            standard = sha.startswith(STANDARD_SHA256_PREFIX)
            self.protocol = {
                **common,
                "weights": str(weights_path),
                "weights_sha256": sha,
                "stand_in": False,
                "note": ""
                if standard
                else f"weights sha256 does not start with {STANDARD_SHA256_PREFIX} (the standard "
                f"{STANDARD_WEIGHTS_NAME}): check the file before comparing with published FID",
            }
        self.net.to(self.device)

    @torch.no_grad()
    def __call__(self, batch: np.ndarray, mode: str = "fid") -> np.ndarray:
        """``float64 [B, 2048]`` features of a ``uint8 [B, H, W, 3]`` batch, computed in float32 on any device:
        TF32 (cuDNN's default for convolutions on Ampere and later) is off meanwhile, so GPU and CPU features,
        and reference statistics cached on either, agree."""
        if mode not in MODES:
            raise ValueError(f"unknown FID mode {mode!r}; known: {', '.join(MODES)}")
        if mode == "clean_fid":
            batch = clean_resize(batch)
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(self.device)
        flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            (feats,) = self.net(x)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
        return feats.double().cpu().numpy()
