"""The 3D face reconstruction network of MegaFR (paper section 3.1; ``docs/method.md`` section 3).

A CNN regresses, from one image [B, 3, S, S] in [-1, 1], the FLAME parameters and a camera:

- identity ``beta`` [B, n_shape] and expression ``psi`` [B, n_expr] (FLAME coefficients);
- pose ``theta`` [B, 15] in FLAME's joint order (global, neck, jaw, left eye, right eye; axis-angle).
  The neck stays zero: with a single global rotation the neck is redundant for a head crop;
- an orthographic (DECA weak-perspective) camera: ``x_ndc = s * (x + t)`` with scale ``s`` [B] and
  translation ``t`` [B, 2] (``megafr.face3d.render.OrthoCamera``).

The reenactment encoder's landmark losses (L_lmk, L_pair) back-propagate through this network, so
every operation is differentiable w.r.t. the image (no argmax, no hard resizing; only the eye crops' centres
are detached, so the crops follow the keypoints without training them).
``FaceModel`` bundles the network with FLAME and the renderer: ``reconstruct`` gives the parameters,
the 68 posed 3D landmarks (the ``p`` of L_lmk, in FLAME model space, metres), their 2D projections in
pixels (x right, y down, pixel centres at ``j + 0.5``) and the vertices; ``render_geometry`` draws
``r_t``, the shaded geometry image of the paper.

``LandmarkFlame`` evaluates FLAME at the 68 landmarks only: it applies the blend shapes and linear
blend skinning to the vertices of the 68 landmark triangles (at most 204 of FLAME's 5023), with the
joints from a precomputed joint regressor of the blend shapes. This is what the training loss needs
each step and is exactly FLAME's landmark output (``tests/test_recon.py`` compares the two paths).
Hand-written because smplx's ``lbs`` always poses the whole mesh; the rotation and kinematic-chain
maths is smplx's (``batch_rodrigues``, ``batch_rigid_transform``).

Why the CNN is hand-written and not a torchvision backbone: the study must train it in minutes on
two CPU cores, and at 64 px a ResNet-18 (~150 M multiply-adds per image) costs about 5x the small
network below (~32 M at width 24, plus ~5 M for the eye branch at eye_patch 12, counted by hand;
ResNet-18 was not trained here for comparison).
The layers are standard (conv, batch norm, ReLU), plus two coordinate channels (CoordConv, Liu et al. 2018) and a keypoint head whose
soft-argmax (integral regression, Sun et al. ECCV 2018) gives the parameter regressor precise 2D positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from smplx.lbs import batch_rigid_transform, batch_rodrigues

from megafr.config import require, study_path
from megafr.errors import CheckpointError, InputError, MissingFileError
from megafr.face3d import landmarks as lmk
from megafr.face3d.flame import FLAME, GLOBAL_JOINT, JAW_JOINT, LEFT_EYE_JOINT, N_JOINTS, POSE_DIM, RIGHT_EYE_JOINT
from megafr.face3d.render import OrthoCamera, Renderer, ndc_to_pixels, project

IMAGE_CHANNELS = 3  # RGB
COORD_CHANNELS = 2  # x and y coordinate maps appended to the image (CoordConv)
IMAGE_RANGE_TOLERANCE = 1e-3  # images may exceed [-1, 1] by this much (rounding) before they are refused
FEATURE_SIZE = 4  # the encoder stops at a FEATURE_SIZE x FEATURE_SIZE map (flattened, keeps position)
MAX_WIDTH_FACTOR = 8  # channels stop growing at this multiple of the stem width
N_KEYPOINTS = 68  # iBUG-68 keypoints estimated inside the network
HEATMAP_STRIDE = 4  # keypoint heatmaps are input_size / HEATMAP_STRIDE cells wide
HIDDEN_FEATURES = 256  # width of the fully connected layer before the parameter head
EYE_FEATURES = 32  # features the eye branch adds per eye
EYE_UPSAMPLE = 2  # the eye crops are sampled at this many points per input pixel
EYE_CONV_BLOCKS = 3  # convolution blocks of the eye branch, before its pooling and linear layer
ROTATION_DIM = 3  # axis-angle
CAMERA_DIM = 3  # log-scale offset, tx, ty
NDC_OFFSET_UNIT = 0.5  # NDC units of image-plane offset per unit of the raw camera output (raw outputs near unit size)
HEAD_INIT_STD = 1e-3  # initial weights of the parameter head: the first predictions sit at the priors
PREDICTED_JOINTS = (GLOBAL_JOINT, JAW_JOINT, LEFT_EYE_JOINT, RIGHT_EYE_JOINT)  # the neck is held at zero
CHECKPOINT_KEYS = ("state_dict", "config", "step")
DEFAULT_MODEL_ARGS = ("model_path", "landmark_path")


@dataclass(frozen=True)
class ReconConfig:
    """Shape of the reconstruction network and of the FLAME parameters it regresses."""

    n_shape: int  # identity coefficients regressed (first FLAME identity columns)
    n_expr: int  # expression coefficients regressed
    image_size: int  # side of the images the caller passes, pixels
    input_size: int = 64  # side the CNN sees; larger inputs are area-resized (differentiably) first
    width: int = 32  # channels of the stem; doubled at each stride-2 stage (capped at MAX_WIDTH_FACTOR x)
    cam_scale_init: float = 7.5  # camera scale predicted for a zero output (NDC units per metre)
    cam_ty_init: float = 0.0  # vertical camera translation predicted for a zero output (metres)
    eye_patch: int = 0  # side (input pixels) of the crop around each eye the eye branch reads (0: no branch)

    def __post_init__(self):
        require(self.n_shape >= 0 and self.n_expr >= 0, f"n_shape and n_expr must be >= 0, got {self.n_shape}, {self.n_expr}")
        require(self.image_size >= 16, f"image_size must be at least 16 px, got {self.image_size}")
        require(self.input_size >= 4 * FEATURE_SIZE and (self.input_size & (self.input_size - 1)) == 0,
                f"input_size must be a power of two >= {4 * FEATURE_SIZE}, got {self.input_size}")
        require(self.image_size >= self.input_size,
                f"input_size ({self.input_size}) must not exceed image_size ({self.image_size})")
        require(self.width >= 4, f"width must be at least 4 channels, got {self.width}")
        require(self.cam_scale_init > 0, f"cam_scale_init must be positive, got {self.cam_scale_init}")
        require(0 <= self.eye_patch <= self.input_size // 2,
                f"eye_patch must be 0 (off) or up to half of input_size ({self.input_size // 2}), got {self.eye_patch}")

    @property
    def n_outputs(self) -> int:
        return self.n_shape + self.n_expr + ROTATION_DIM * len(PREDICTED_JOINTS) + CAMERA_DIM


class FaceParams(NamedTuple):
    shape: torch.Tensor  # [B, n_shape] FLAME identity beta
    expression: torch.Tensor  # [B, n_expr] FLAME expression psi
    pose: torch.Tensor  # [B, 15] global, neck (zero), jaw, left eye, right eye, axis-angle
    cam_scale: torch.Tensor  # [B] orthographic scale, NDC units per metre
    cam_translation: torch.Tensor  # [B, 2] metres, added before scaling

    @property
    def camera(self) -> OrthoCamera:
        return OrthoCamera(self.cam_scale, self.cam_translation)


class Reconstruction(NamedTuple):
    params: FaceParams
    landmarks_3d: torch.Tensor  # [B, 68, 3] posed FLAME landmarks, model space (metres)
    landmarks_2d: torch.Tensor  # [B, 68, 2] their projections in pixels (x right, y down)
    vertices: torch.Tensor  # [B, N, 3] posed mesh, model space


def check_images(images: torch.Tensor, image_size: int, name: str = "images") -> None:
    """Raise ``InputError`` unless ``images`` is a float tensor [B, 3, image_size, image_size] in [-1, 1]."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor [B, 3, {image_size}, {image_size}], got {type(images).__name__}; "
                         "convert with megafr.imageio.images_to_tensor")
    if not images.is_floating_point():
        raise InputError(f"{name}: expected a float tensor in [-1, 1], got dtype {images.dtype}; "
                         "convert uint8 images with megafr.imageio.images_to_tensor (x / 127.5 - 1)")
    expected = (IMAGE_CHANNELS, image_size, image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise InputError(f"{name}: expected shape [B, {IMAGE_CHANNELS}, {image_size}, {image_size}] (RGB, the size the "
                         f"network was built for), got {tuple(images.shape)}; resize/convert the images to RGB "
                         f"{image_size}x{image_size}")
    if images.shape[0] == 0:
        raise InputError(f"{name}: expected at least one image, got an empty batch {tuple(images.shape)}")
    with torch.no_grad():
        low, high = float(images.min()), float(images.max())
    if not (math.isfinite(low) and math.isfinite(high)) or low < -1 - IMAGE_RANGE_TOLERANCE or high > 1 + IMAGE_RANGE_TOLERANCE:
        raise InputError(f"{name}: expected values in [-1, 1], got [{low:.4g}, {high:.4g}]; images in [0, 1] need "
                         "x * 2 - 1, images in [0, 255] need x / 127.5 - 1")


def _conv_block(c_in: int, c_out: int, stride: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        torch.nn.BatchNorm2d(c_out),
        torch.nn.ReLU(inplace=True),
    )


class EyeBranch(torch.nn.Module):
    """Features of the two eye regions, read from crops of the input image at twice its resolution.

    At 64 px an open eyelid is about a pixel high: the strided trunk blurs it away, and without this
    branch the mini network's eyelid gaps were no better than a constant guess. Each eye's crop is
    ``patch`` input pixels wide, centred on the mean of that eye's six keypoints (detached: the crop
    follows the keypoints but does not train them), sampled bilinearly (``grid_sample``) at
    ``EYE_UPSAMPLE`` points per pixel; the subject's left eye is mirrored so that one small CNN serves
    both eyes.
    """

    def __init__(self, patch: int, input_size: int, width: int):
        super().__init__()
        self.samples = patch * EYE_UPSAMPLE  # crop side in samples
        self.half = patch / input_size  # crop half-side in normalised [-1, 1] image units
        self.net = torch.nn.Sequential(
            _conv_block(IMAGE_CHANNELS, width, 1), _conv_block(width, 2 * width, 2), _conv_block(2 * width, 2 * width, 2),
            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * width, EYE_FEATURES),
            torch.nn.ReLU(inplace=True),
        )
        ramp = torch.linspace(-1.0, 1.0, self.samples)
        self.register_buffer("offsets", torch.stack([ramp[None, :].expand(self.samples, -1),
                                                     ramp[:, None].expand(-1, self.samples)], dim=-1),
                             persistent=False)  # [n, n, 2] (x right, y down) in [-1, 1]

    def crops(self, small: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """small [B, 3, s, s], keypoints [B, 68, 2] (NDC, y up) -> the crops [2, B, 3, n, n]: the subject's
        right eye, then the mirrored left eye."""
        out = []
        for indices, mirror in ((lmk.RIGHT_EYE, 1.0), (lmk.LEFT_EYE, -1.0)):
            centre = keypoints[:, list(indices)].mean(dim=1).detach()  # [B, 2] NDC, y up
            centre = centre * centre.new_tensor([1.0, -1.0])  # grid_sample's y points down
            scale = self.half * self.offsets.new_tensor([mirror, 1.0])
            grid = centre[:, None, None, :] + (self.offsets * scale).to(small.dtype)  # [B, n, n, 2]
            out.append(F.grid_sample(small, grid, mode="bilinear", padding_mode="border", align_corners=False))
        return torch.stack(out)

    def conv_maps(self, crops: torch.Tensor) -> list[torch.Tensor]:
        """The maps of the branch's convolution blocks for crops [N, 3, n, n] (before pooling)."""
        maps = [crops]
        for block in self.net[:EYE_CONV_BLOCKS]:
            maps.append(block(maps[-1]))
        return maps[1:]

    def forward(self, small: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """small [B, 3, s, s], keypoints [B, 68, 2] (NDC, y up) -> [B, 2 * EYE_FEATURES]."""
        crops = self.crops(small, keypoints)  # [2, B, 3, n, n]
        features = self.net(crops.flatten(0, 1)).reshape(2, small.shape[0], EYE_FEATURES)
        return torch.cat([features[0], features[1]], dim=1)


class FaceReconstructor(torch.nn.Module):
    """Image [B, 3, S, S] in [-1, 1] -> ``FaceParams`` (see module docstring).

    Two stages: a strided CNN with a small feature pyramid predicts 68 heatmaps at ``input_size / 4``
    whose soft-argmax (integral regression, Sun et al. ECCV 2018) gives 2D keypoints [B, 68, 2] in NDC;
    an MLP maps those keypoints plus the pooled deep features (and, with ``eye_patch``, the eye branch's
    features, :class:`EyeBranch`) to the FLAME parameters and camera.
    Training supervises the keypoints with the image's landmarks too (``keypoints`` output), which is
    what makes the network learn precise positions quickly on a CPU budget.
    """

    def __init__(self, config: ReconConfig):
        super().__init__()
        self.config = config  # sizes of the network and its outputs
        n_stages = int(math.log2(config.input_size // FEATURE_SIZE)) - 1  # stride-2 stages after the stem
        self.stem = _conv_block(IMAGE_CHANNELS + COORD_CHANNELS, config.width, 2)  # [B, w, s/2, s/2]
        stages, widths, channels = [], [], config.width
        for k in range(n_stages):
            out = config.width * min(2 ** (k + 1), MAX_WIDTH_FACTOR)
            stages.append(torch.nn.Sequential(_conv_block(channels, out, 2), _conv_block(out, out, 1)))  # halves the map
            widths.append(out)
            channels = out
        self.stages = torch.nn.ModuleList(stages)
        pyramid = 2 * config.width  # channels of the feature pyramid
        self.laterals = torch.nn.ModuleList(torch.nn.Conv2d(w, pyramid, 1) for w in widths)
        self.refine = _conv_block(pyramid, pyramid, 1)
        self.heatmaps = torch.nn.Conv2d(pyramid, N_KEYPOINTS, 1)  # [B, 68, s/4, s/4]
        self.fc = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(channels * FEATURE_SIZE * FEATURE_SIZE, HIDDEN_FEATURES),
            torch.nn.ReLU(inplace=True),
        )
        self.eyes = EyeBranch(config.eye_patch, config.input_size, config.width) if config.eye_patch else None
        eye_features = 2 * EYE_FEATURES if config.eye_patch else 0
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(HIDDEN_FEATURES + 2 * N_KEYPOINTS + eye_features, HIDDEN_FEATURES), torch.nn.ReLU(inplace=True),
        )
        self.head = torch.nn.Linear(HIDDEN_FEATURES, config.n_outputs)
        torch.nn.init.normal_(self.head.weight, std=HEAD_INIT_STD)
        torch.nn.init.zeros_(self.head.bias)
        ramp = torch.linspace(-1.0, 1.0, config.input_size)
        coords = torch.stack([ramp[None, :].expand(config.input_size, -1), ramp[:, None].expand(-1, config.input_size)])
        self.register_buffer("coords", coords, persistent=False)  # [2, s, s] x then y, in [-1, 1]
        cells = config.input_size // HEATMAP_STRIDE
        centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * (2.0 / cells) - 1.0  # NDC of the cell centres
        grid = torch.stack([centres[None, :].expand(cells, -1), -centres[:, None].expand(-1, cells)], dim=-1)
        self.register_buffer("grid", grid.reshape(-1, 2), persistent=False)  # [cells^2, 2] (x, y up)

    def forward(self, images: torch.Tensor) -> FaceParams:
        """images [B, 3, image_size, image_size] in [-1, 1] -> FaceParams (``InputError`` for bad images)."""
        check_images(images, self.config.image_size)
        return self.regress(self.resize(images))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, image_size, image_size] -> [B, 3, input_size, input_size] (area average, differentiable)."""
        size = self.config.input_size
        return images if images.shape[-1] == size else F.interpolate(images, size=(size, size), mode="area")

    def regress(self, small: torch.Tensor) -> FaceParams:
        """The network on images already at ``input_size`` [B, 3, s, s] (training calls this directly)."""
        return self.regress_with_keypoints(small)[0]

    def regress_with_keypoints(self, small: torch.Tensor) -> tuple[FaceParams, torch.Tensor]:
        """(FaceParams, the intermediate 2D keypoints [B, 68, 2] in NDC, y up)."""
        cfg = self.config
        if small.ndim != 4 or tuple(small.shape[1:]) != (IMAGE_CHANNELS, cfg.input_size, cfg.input_size):
            raise InputError(f"regress: expected [B, 3, {cfg.input_size}, {cfg.input_size}], got {tuple(small.shape)}")
        maps = self.trunk(small)[1:]  # the strided stages': [B, C_k, s/4, ...], [B, C_k, s/8, ...], ...
        top = self.laterals[-1](maps[-1])
        for lateral, fine in zip(reversed(self.laterals[:-1]), reversed(maps[:-1])):
            top = lateral(fine) + F.interpolate(top, size=fine.shape[-2:], mode="nearest")
        logits = self.heatmaps(self.refine(top)).flatten(2)  # [B, 68, cells^2]
        keypoints = torch.softmax(logits, dim=-1) @ self.grid  # [B, 68, 2] soft-argmax in NDC
        parts = [self.fc(maps[-1]), keypoints.flatten(1)]  # [B, HIDDEN], [B, 136]
        if self.eyes is not None:
            parts.append(self.eyes(small, keypoints))  # [B, 2 * EYE_FEATURES]
        features = torch.cat(parts, dim=1)
        out = self.head(self.mlp(features))  # [B, n_outputs]
        return self._params(out), keypoints

    def trunk(self, small: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's feature maps for images at ``input_size`` [B, 3, s, s]: the stem's [B, w, s/2, s/2], then
        each strided stage's (what the keypoints, the parameters and :mod:`megafr.losses.face_features` read)."""
        x = torch.cat([small, self.coords.to(small.dtype).expand(small.shape[0], -1, -1, -1)], dim=1)  # [B, 5, s, s]
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps

    def _params(self, out: torch.Tensor) -> FaceParams:
        cfg = self.config
        batch = out.shape[0]
        shape, expression, rotations, camera = torch.split(
            out, [cfg.n_shape, cfg.n_expr, ROTATION_DIM * len(PREDICTED_JOINTS), CAMERA_DIM], dim=1)
        pose = out.new_zeros(batch, N_JOINTS, ROTATION_DIM)
        pose = pose.index_copy(1, torch.tensor(PREDICTED_JOINTS, device=out.device),
                               rotations.reshape(batch, len(PREDICTED_JOINTS), ROTATION_DIM))
        cam_scale = cfg.cam_scale_init * torch.exp(camera[:, 0])  # [B], always positive
        # The net predicts the image-plane offset s * t (NDC units), so an error in the scale does not move the
        # face's centre; OrthoCamera's translation is that offset over the scale (metres).
        offset = out.new_tensor([0.0, cfg.cam_scale_init * cfg.cam_ty_init]) + NDC_OFFSET_UNIT * camera[:, 1:]  # [B, 2]
        cam_translation = offset / cam_scale[:, None]  # [B, 2]
        return FaceParams(shape, expression, pose.reshape(batch, POSE_DIM), cam_scale, cam_translation)


class LandmarkFlame(torch.nn.Module):
    """FLAME's 68 landmarks [B, 68, 3] computed from the landmark triangles' vertices only (module docstring)."""

    def __init__(self, flame: FLAME):
        super().__init__()
        faces = flame.faces[flame.lmk_faces_idx]  # [68, 3] vertex ids of the landmark triangles
        used, local = torch.unique(faces.reshape(-1), return_inverse=True)  # [U], [68*3]
        dirs = flame.shapedirs  # [N, 3, K]
        self.register_buffer("local_faces", local.reshape(-1, 3))  # [68, 3] indices into the subset
        self.register_buffer("bary", flame.lmk_bary_coords.clone())  # [68, 3]
        self.register_buffer("v_template", flame.v_template[used].clone())  # [U, 3]
        self.register_buffer("shapedirs", dirs[used].clone())  # [U, 3, K]
        posedirs = flame.posedirs.reshape(flame.posedirs.shape[0], -1, 3)[:, used]  # [P, U, 3]
        self.register_buffer("posedirs", posedirs.reshape(posedirs.shape[0], -1).clone())  # [P, U*3]
        self.register_buffer("lbs_weights", flame.lbs_weights[used].clone())  # [U, 5]
        self.register_buffer("j_template", flame.j_regressor @ flame.v_template)  # [5, 3]
        self.register_buffer("j_dirs", torch.einsum("jn,nck->jck", flame.j_regressor, dirs))  # [5, 3, K]
        self.register_buffer("parents", flame.parents.clone())  # [5]
        self.n_shape, self.n_expr = flame.n_shape, flame.n_expr

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        batch = shape.shape[0]
        betas = torch.cat([shape, expression], dim=1)  # [B, K]
        v_shaped = self.v_template + torch.einsum("bk,uck->buc", betas, self.shapedirs)  # [B, U, 3]
        joints = self.j_template + torch.einsum("bk,jck->bjc", betas, self.j_dirs)  # [B, 5, 3]
        rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(batch, N_JOINTS, 3, 3)
        eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
        pose_feature = (rot[:, 1:] - eye).reshape(batch, -1)  # [B, 36]
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(batch, -1, 3)
        _, transforms = batch_rigid_transform(rot, joints, self.parents, dtype=pose.dtype)  # [B, 5, 4, 4]
        per_vertex = torch.einsum("uj,bjrc->burc", self.lbs_weights, transforms)  # [B, U, 4, 4]
        posed = (per_vertex[..., :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + per_vertex[..., :3, 3]  # [B, U, 3]
        corners = posed[:, self.local_faces]  # [B, 68, 3 (corner), 3 (xyz)]
        return (corners * self.bary[None, :, :, None]).sum(dim=2)  # [B, 68, 3]


class FaceModel(torch.nn.Module):
    """The reconstruction network with FLAME and the renderer: image -> parameters, landmarks, geometry image."""

    def __init__(self, config: ReconConfig, flame: FLAME):
        super().__init__()
        if (flame.n_shape, flame.n_expr) != (config.n_shape, config.n_expr):
            raise CheckpointError(f"the FLAME layer has n_shape={flame.n_shape}, n_expr={flame.n_expr} but the network "
                                  f"regresses {config.n_shape}, {config.n_expr}; build FLAME with the network's sizes")
        self.config = config  # network sizes
        self.net = FaceReconstructor(config)  # the only trained part
        self.flame = flame  # full mesh (rendering, vertices)
        self.landmark_flame = LandmarkFlame(flame)  # the 68 landmarks only (fast path for losses)
        self.renderer = Renderer(flame.faces, config.image_size)  # geometry images at the caller's size

    def network_state_dict(self) -> dict:
        """The trained weights only (FLAME and the renderer come from their own files)."""
        return self.net.state_dict()

    def landmarks(self, params: FaceParams) -> tuple[torch.Tensor, torch.Tensor]:
        """3D landmarks [B, 68, 3] (model space) and their NDC projections [B, 68, 2] (y up)."""
        points = self.landmark_flame(params.shape, params.expression, params.pose)
        return points, project(points, params.camera)[..., :2]

    def reconstruct(self, images: torch.Tensor, with_vertices: bool = True) -> Reconstruction:
        params = self.net(images)
        lmk3d, lmk_ndc = self.landmarks(params)
        vertices = self.flame(params.shape, params.expression, params.pose).vertices if with_vertices else None
        return Reconstruction(params, lmk3d, ndc_to_pixels(lmk_ndc, self.config.image_size), vertices)

    def render_geometry(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
                        camera: OrthoCamera) -> torch.Tensor:
        """r_t: the shaded geometry image [B, 3, S, S] in [-1, 1] of FLAME(shape, expression, pose) seen by ``camera``."""
        vertices = self.flame(shape, expression, pose).vertices  # [B, N, 3]
        return self.renderer(vertices, camera, mode="geometry").image


def save_checkpoint_dict(model: FaceModel, step: int, extra: Optional[dict] = None) -> dict:
    """``{"state_dict", "config", "step"}`` (+ ``extra``) for ``torch.save``; config is a plain dict."""
    return {"state_dict": model.network_state_dict(), "config": asdict(model.config), "step": int(step), **(extra or {})}


def read_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint dict and check its keys (``CheckpointError`` / ``MissingFileError`` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"3D reconstruction checkpoint not found: {path}; run the train_face3d stage "
                               "(`dvc repro train_face3d`) or pass the right path")
    try:
        data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # truncated or not a torch file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error}); "
                              "re-run the train_face3d stage") from error
    if not isinstance(data, dict) or any(key not in data for key in CHECKPOINT_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: expected a dict with keys {list(CHECKPOINT_KEYS)}, found {found}; "
                              "it is not a train_face3d checkpoint")
    return data


def load_face_model(checkpoint_path, model_path=None, landmark_path=None, map_location="cpu") -> FaceModel:
    """Rebuild a trained ``FaceModel`` from a checkpoint and the FLAME files.

    FLAME's files are licensed and not copied into checkpoints: pass ``model_path`` and
    ``landmark_path``, or leave them None to use the paths recorded at training time
    (``checkpoint["flame"]``). The model is returned in eval mode.
    """
    data = read_checkpoint(checkpoint_path, map_location)
    recorded = data.get("flame", {})  # relative paths are relative to the study root
    model_path = model_path or (recorded.get("model_path") and study_path(recorded["model_path"]))
    landmark_path = landmark_path or (recorded.get("landmark_path") and study_path(recorded["landmark_path"]))
    if not model_path or not landmark_path:
        raise CheckpointError(f"{checkpoint_path}: records no FLAME files; pass model_path and landmark_path")
    try:
        config = ReconConfig(**data["config"])
    except (TypeError, InputError) as error:
        raise CheckpointError(f"{checkpoint_path}: its config does not fit this code's ReconConfig ({error})") from error
    flame = FLAME.from_files(model_path, landmark_path, config.n_shape, config.n_expr)
    model = FaceModel(config, flame)
    try:
        model.net.load_state_dict(data["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{checkpoint_path}: weights do not fit the network of its config ({error})") from error
    return model.eval()
