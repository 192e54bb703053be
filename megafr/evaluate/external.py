"""The paper's own metrics (Tables 1 and 2): FID, LPIPS and ID similarity, where their weights exist.

The paper reports FID, LPIPS and ID similarity on CelebA-HQ without saying which image pairs
or code; the study pins them as follows (``docs/metrics.md`` has the full definitions):

- **FID**: clean-fid's ``clean`` mode (Parmar et al., CVPR 2022): each uint8 image is resized to
  299 x 299 by PIL bicubic without re-quantisation (``cleanfid.resize.build_resizer("clean")``),
  fed in [0, 255] to the Inception-v3 torchscript network ``inception-2015-12-05.pt`` (2048-d
  pool features), and the Frechet distance is taken between the method's outputs and the real
  reference photos;
- **LPIPS**: the ``lpips`` package, AlexNet backbone (``lpips.LPIPS(net="alex")``, v0.1 heads),
  images in [-1, 1] at their own resolution, between each output and its source photo;
- **ID similarity**: ArcFace IR-SE50 (``model_ir_se50.pth``), pSp's crop and pooling
  (:func:`megafr.nets.identity.identity_similarity`), between each output and its source photo.

Nothing is downloaded. Each network is loaded only when its weight file is already on the
machine and its package imports; otherwise the metric is "n/a" and :class:`PaperMetrics` keeps
the reason, which the tables print. (On CPU machines with PyPI's CUDA-linked torchvision,
``lpips`` and ``cleanfid.fid`` fail to import; the Inception network itself is loaded through
``cleanfid.inception_torchscript``, which does not need torchvision.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from megafr.config import study_path
from megafr.devices import module_device
from megafr.nets.identity import identity_similarity
from megafr.metrics import feature_statistics, frechet_distance

INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's (and StyleGAN2-ADA's) Inception-v3 torchscript file
CLEANFID_DEFAULT_DIR = "/tmp"  # the folder clean-fid itself downloads that file to on Linux
FID_MODE = "clean"  # clean-fid's resizing mode (PIL bicubic to 299 px, no quantisation)
FEATURE_BATCH = 32  # images per Inception / LPIPS / ArcFace forward pass
PAPER_METRICS = ("fid", "lpips", "id_similarity")  # column names of the paper's metrics

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # [B, 3, 299, 299] in [0, 255] -> [B, F]


def load_inception(folder: str = "") -> tuple[Optional[FeatureFn], str]:
    """clean-fid's Inception network from ``folder/inception-2015-12-05.pt`` -> (network or None, log line)."""
    folder_path = study_path(folder) if folder else Path(CLEANFID_DEFAULT_DIR)
    path = folder_path / INCEPTION_FILE
    if not path.is_file():
        return None, (f"FID n/a: clean-fid's Inception weights {path} are not on this machine (nothing is "
                      f"downloaded; put {INCEPTION_FILE} there or name its folder in evaluate.inception_dir)")
    try:
        from cleanfid.inception_torchscript import InceptionV3W

        model = InceptionV3W(str(folder_path), download=False, resize_inside=False).eval()
    except Exception as error:  # a corrupt file or an incompatible clean-fid: say so, do not crash
        return None, f"FID n/a: {path} does not load with clean-fid ({type(error).__name__}: {error})"
    return model, f"FID on: clean-fid Inception-v3 from {path}"


def load_lpips() -> tuple[Optional[torch.nn.Module], str]:
    """LPIPS with the AlexNet backbone when its weights are here and the package imports -> (net or None, log line)."""
    from megafr.losses.perceptual import load_lpips as load_lpips_network

    net, message = load_lpips_network()
    return net, message if net is not None else message.replace("LPIPS off:", "LPIPS n/a:", 1)


def load_paper_arcface(path: str) -> tuple[Optional[torch.nn.Module], str]:
    """ArcFace IR-SE50 (``model_ir_se50.pth``) for the paper's ID similarity -> (net or None, log line). An ArcFace
    file of another shape is used too, with a log line saying its numbers are not comparable with the paper's."""
    from megafr.nets.checkpoints import load_arcface
    from megafr.nets.irse import ArcFaceConfig

    if not path:
        return None, ("ID similarity n/a: no ArcFace IR-SE50 file given (evaluate.arcface_path; the paper "
                      "profile names weights/model_ir_se50.pth); the CSIM column uses the study's own ID network")
    file = study_path(path)
    if not file.is_file():
        return None, f"ID similarity n/a: ArcFace IR-SE50 file {file} is not on this machine (nothing is downloaded)"
    try:
        net = load_arcface(file)
    except Exception as error:  # wrong layout: say which, do not crash
        return None, f"ID similarity n/a: {file} does not load as ArcFace ({type(error).__name__}: {error})"
    if net.config != ArcFaceConfig():  # e.g. paper-ci's stand-in: the code path runs, the numbers are not the paper's
        return net.requires_grad_(False), (f"ID similarity on: {file} is an ArcFace of another shape than the IR-SE50 "
                                            f"release ({net.config.input_size} px input), so its numbers are not "
                                            "comparable with the paper's")
    return net.requires_grad_(False), f"ID similarity on: ArcFace IR-SE50 from {file}"


@torch.no_grad()
def inception_features(model: FeatureFn, images: np.ndarray, batch: int = FEATURE_BATCH) -> np.ndarray:
    """Inception features [N, F] of uint8 images [N, S, S, 3], resized the clean-fid way."""
    from cleanfid.resize import build_resizer

    resize = build_resizer(FID_MODE)  # uint8 [S, S, 3] -> float32 [299, 299, 3] in [0, 255]
    device = module_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")
    features = []
    for start in range(0, len(images), batch):
        resized = np.stack([resize(image) for image in images[start:start + batch]])
        x = torch.from_numpy(resized.transpose(0, 3, 1, 2).copy()).float().to(device)  # [B, 3, 299, 299]
        features.append(model(x).reshape(len(x), -1).cpu().numpy())
    return np.concatenate(features).astype(np.float64)


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between two feature sets [N, F] (the formula clean-fid uses)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


@torch.no_grad()
def _batched_pairs(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor,
                   b: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(a[i:i + FEATURE_BATCH], b[i:i + FEATURE_BATCH]).reshape(-1)
                      for i in range(0, len(a), FEATURE_BATCH)])


class PaperMetrics:
    """The paper's metrics with whichever networks are available; ``reasons`` says why others are not."""

    def __init__(self, inception: Optional[FeatureFn], lpips_net: Optional[torch.nn.Module],
                 arcface: Optional[torch.nn.Module], reasons: dict[str, str]):
        self.inception = inception
        self.lpips_net = lpips_net
        self.arcface = arcface
        self.reasons = reasons  # metric -> log line ("... n/a: why" or "... on: which weights")
        self._reference: Optional[np.ndarray] = None

    @classmethod
    def detect(cls, inception_dir: str = "", arcface_path: str = "") -> "PaperMetrics":
        """Load what is on the machine; never downloads, never raises for a missing network."""
        inception, fid_line = load_inception(inception_dir)
        lpips_net, lpips_line = load_lpips()
        arcface, id_line = load_paper_arcface(arcface_path)
        return cls(inception, lpips_net, arcface, {"fid": fid_line, "lpips": lpips_line, "id_similarity": id_line})

    def to(self, device: torch.device) -> "PaperMetrics":
        """Move the metric networks to ``device`` (in place; the images they score must be there too)."""
        for name in ("inception", "lpips_net", "arcface"):
            network = getattr(self, name)
            if isinstance(network, torch.nn.Module):
                setattr(self, name, network.to(device))
        return self

    def available(self, name: str) -> bool:
        return {"fid": self.inception, "lpips": self.lpips_net, "id_similarity": self.arcface}[name] is not None

    def set_reference(self, photos: np.ndarray) -> None:
        """Real photos uint8 [N, S, S, 3] that FID compares every method's outputs with (features kept)."""
        if self.inception is not None:
            self._reference = inception_features(self.inception, photos)

    def fid_of_features(self, features: np.ndarray) -> Optional[float]:
        """FID of outputs given their Inception features [N, F] (:func:`inception_features`) against the
        reference photos, or None when the Inception network is not here."""
        if self.inception is None:
            return None
        if self._reference is None:
            raise RuntimeError("PaperMetrics.set_reference must be called before FID is computed")
        return fid_from_features(features, self._reference)

    def lpips(self, outputs: torch.Tensor, sources: torch.Tensor) -> Optional[torch.Tensor]:
        """LPIPS (AlexNet) per pair [N] of [-1, 1] images, or None when unavailable."""
        if self.lpips_net is None:
            return None
        return _batched_pairs(self.lpips_net, outputs, sources)

    def id_similarity(self, outputs: torch.Tensor, sources: torch.Tensor) -> Optional[torch.Tensor]:
        """ArcFace IR-SE50 cosine similarity per pair [N], or None when unavailable."""
        if self.arcface is None:
            return None
        return _batched_pairs(lambda a, b: identity_similarity(self.arcface, a, b), outputs, sources)
