"""Loaders and writers for the official checkpoint files of the networks MegaFR builds on.

One loader per file type inspects the file, builds the matching configuration and loads the
weights with ``strict=True``:

| file | layout (from the public releases) | loader |
|---|---|---|
| ``stylegan2-ffhq-config-f.pt`` | ``{"g_ema": state dict, "latent_avg": [512], "g"?, "d"?}`` (rosinality) | ``load_stylegan2`` |
| ``e4e_ffhq_encode.pt`` | ``{"state_dict": {"encoder.*", "decoder.*"}, "opts": dict, "latent_avg": [18, 512], "discriminator_state_dict"?}`` | ``load_e4e``, ``load_latent_discriminator`` |
| ``psp_ffhq_encode.pt`` | same top level, GradualStyleEncoder | ``load_psp`` |
| ``model_ir_se50.pth`` | plain state dict of TreB1eN ``Backbone(112, 50, "ir_se")`` | ``load_arcface`` |

The study's own (mini-world) checkpoints are written by the ``save_*`` functions in exactly
these layouts plus one extra top-level ``"config"`` entry (plain dict); the loaders prefer
``"config"`` when present and otherwise infer the configuration from the tensor shapes, so a
mini file and an official file load the same way.

A missing file raises ``MissingFileError``; an unreadable, truncated or foreign file raises
``CheckpointError`` naming the file, the keys expected, the keys found and where the
official file is published. Written here because the releases ship only research scripts
that load these files into their own classes.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from megafr.errors import CheckpointError, MissingFileError
from megafr.fileio import atomic_path
from megafr.nets.encoders import (
    EncoderConfig,
    Encoder4Editing,
    GradualStyleEncoder,
    InversionNet,
    LatentCodesDiscriminator,
)
from megafr.nets.irse import ArcFace, ArcFaceConfig, IRSEConfig
from megafr.nets.stylegan2 import (
    CHANNEL_BASE,
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    stylegan2_channels,
)

SOURCES = {
    "stylegan2": "stylegan2-ffhq-config-f.pt from rosinality/stylegan2-pytorch (README, 'Pretrained Checkpoints'; "
    "also linked from the pixel2style2pixel README), or a mini-world file written by megafr.nets.checkpoints.save_stylegan2",
    "e4e": "e4e_ffhq_encode.pt from omertov/encoder4editing (README, 'Pretrained Models'), "
    "or a mini-world file written by megafr.nets.checkpoints.save_encoder",
    "psp": "psp_ffhq_encode.pt from eladrich/pixel2style2pixel (README, 'Pretrained Models'), "
    "or a mini-world file written by megafr.nets.checkpoints.save_encoder",
    "arcface": "model_ir_se50.pth from TreB1eN/InsightFace_Pytorch (README, 'IR-SE50 @ Onedrive'; also linked from the "
    "pixel2style2pixel README as the ID-loss model), or a mini-world file written by megafr.nets.checkpoints.save_arcface",
}
MAX_MULTIPLIER = 64  # largest channel multiplier tried when inferring a generator config
_TRUNCATED = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, AttributeError, ImportError)


# --------------------------------------------------------------------------- file access
def _read(path: str | os.PathLike, kind: str, allow_pickle: bool = False) -> dict:
    """torch.load to CPU, turning every failure into a CheckpointError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{kind} checkpoint not found: {path}. Get {SOURCES[kind]} and pass its path.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle or "weights_only" not in str(err):
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({err}); it may be truncated. Expected {SOURCES[kind]}.") from err
        try:  # release files whose `opts` hold non-tensor objects need the full unpickler
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except _TRUNCATED as err2:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({err2}); it may be truncated. Expected {SOURCES[kind]}.") from err2
    except _TRUNCATED as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); it may be truncated. Expected {SOURCES[kind]}.") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict. Expected {SOURCES[kind]}.")
    return obj


def _keys_summary(keys, limit: int = 8) -> str:
    keys = sorted(str(k) for k in keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + more + "]"


def _require(obj: dict, path, kind: str, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise CheckpointError(
            f"{path} is not a {kind} checkpoint: expected top-level keys {list(keys)}, missing {missing}; "
            f"found {_keys_summary(obj.keys())}. Expected {SOURCES[kind]}."
        )


def _load_strict(module: nn.Module, state: dict, path, kind: str, what: str) -> None:
    expected = module.state_dict()
    # BatchNorm fills num_batches_tracked itself when a file from an old torch lacks it
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items() if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: the {what} weights do not match the configuration inferred from the file. "
            f"Keys expected {_keys_summary(expected)}; found {_keys_summary(state)}; missing {_keys_summary(missing, 5)}; "
            f"unexpected {_keys_summary(unexpected, 5)}; shape mismatches {wrong[:5]}. Expected {SOURCES[kind]}."
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the {what} weights do not load ({err}). Expected {SOURCES[kind]}.") from err


def _sub(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _indices(state: dict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state for m in [rx.match(k)] if m})


# --------------------------------------------------------------------------- config inference
def infer_generator_config(state: dict, lr_mlp: float = GeneratorConfig.lr_mlp) -> GeneratorConfig:
    """GeneratorConfig from a rosinality ``g_ema`` state dict (KeyError if keys are absent)."""
    n_mlp = len(_indices(state, r"style\.(\d+)\.weight$"))
    style_dim = state["style.1.weight"].shape[0]
    log_size = len(_indices(state, r"to_rgbs\.(\d+)\.conv\.weight$")) + 2
    size = 2**log_size
    found = {4: state["conv1.conv.weight"].shape[1]}
    for i in range(log_size - 2):
        found[2 ** (i + 3)] = state[f"to_rgbs.{i}.conv.weight"].shape[2]
    max_channels = found[4]
    for cm in range(1, MAX_MULTIPLIER + 1):
        if stylegan2_channels(size, cm, max_channels) == found:
            return GeneratorConfig(size, style_dim, n_mlp, cm, max_channels, lr_mlp)
    raise ValueError(f"channel widths {found} follow no (multiplier, cap) of the table min(cap, {CHANNEL_BASE} * m / res)")


def infer_discriminator_config(state: dict) -> DiscriminatorConfig:
    """DiscriminatorConfig from a rosinality ``d`` state dict."""
    n_blocks = len(_indices(state, r"convs\.(\d+)\.conv1\.0\.weight$"))
    size = 2 ** (n_blocks + 2)
    max_channels = state["final_conv.0.weight"].shape[0]
    found = {size: state["convs.0.0.weight"].shape[0]}
    for cm in range(1, MAX_MULTIPLIER + 1):
        if stylegan2_channels(size, cm, max_channels)[size] == found[size]:
            return DiscriminatorConfig(size, cm, max_channels)
    raise ValueError(f"discriminator widths {found} follow no (multiplier, cap) of the reference table")


def infer_irse_config(state: dict) -> IRSEConfig:
    """IRSEConfig from ``input_layer.*`` / ``body.*`` keys (stages = runs of equal width)."""
    stem = state["input_layer.0.weight"].shape[0]
    widths: list[int] = []
    units: list[int] = []
    for i in _indices(state, r"body\.(\d+)\.res_layer\.1\.weight$"):
        w = state[f"body.{i}.res_layer.1.weight"].shape[0]
        if widths and widths[-1] == w:
            units[-1] += 1
        else:
            widths.append(w)
            units.append(1)
    if len(widths) != 4:
        raise ValueError(
            f"body widths per unit run {widths} do not show 4 stages (inference needs distinct stage widths; "
            "files written by megafr's save_* functions carry a 'config' entry instead)"
        )
    mode = "ir_se" if "body.0.res_layer.5.fc1.weight" in state else "ir"
    if mode == "ir_se":
        hidden = state["body.0.res_layer.5.fc1.weight"].shape[0]
        reduction = widths[0] // hidden
    else:
        reduction = IRSEConfig.se_reduction
    return IRSEConfig(widths=tuple(widths), units=tuple(units), stem_channels=stem, mode=mode, se_reduction=reduction)


def infer_encoder_config(state: dict) -> EncoderConfig:
    """EncoderConfig from encoder keys (without the ``encoder.`` prefix)."""
    first = state["input_layer.0.weight"]  # [stem, input_nc, 3, 3]
    styles = _indices(state, r"styles\.(\d+)\.linear\.weight$")
    style_dim = state["styles.0.linear.weight"].shape[0]
    n_convs0 = len(_indices(state, r"styles\.0\.convs\.(\d+)\.weight$"))  # log2(input / 16)
    return EncoderConfig(input_nc=first.shape[1], input_size=16 * 2**n_convs0, n_latent=len(styles), style_dim=style_dim, body=infer_irse_config(state))


def infer_arcface_config(state: dict) -> ArcFaceConfig:
    body = infer_irse_config(state)
    emb, flat = state["output_layer.3.weight"].shape
    feat = int(round((flat / body.widths[-1]) ** 0.5))
    return ArcFaceConfig(input_size=feat * 16, embedding_dim=emb, body=body, affine="output_layer.4.weight" in state)


def _infer(fn, state: dict, path, kind: str, what: str):
    try:
        return fn(state)
    except (KeyError, ValueError, IndexError, AttributeError, TypeError) as err:
        raise CheckpointError(
            f"{path}: cannot infer the {what} configuration ({type(err).__name__}: {err}); found keys {_keys_summary(state)}. "
            f"Expected {SOURCES[kind]}."
        ) from err


# --------------------------------------------------------------------------- StyleGAN2
def load_stylegan2(path: str | os.PathLike, key: str = "g_ema", impl: str = "fast") -> tuple[Generator, torch.Tensor]:
    """``(generator, latent_avg [style_dim])`` from a rosinality StyleGAN2 file; eval mode.

    ``key`` picks ``"g_ema"`` (default) or ``"g"`` (the non-averaged training generator).
    """
    obj = _read(path, "stylegan2")
    _require(obj, path, "stylegan2", (key, "latent_avg"))
    state = obj[key]
    if "config" in obj and "generator" in obj["config"]:
        config = GeneratorConfig(**obj["config"]["generator"])
    else:
        config = _infer(infer_generator_config, state, path, "stylegan2", "generator")
    gen = Generator.from_config(config, impl=impl)
    _load_strict(gen, state, path, "stylegan2", f"generator ({key})")
    latent_avg = obj["latent_avg"].float().reshape(-1)
    if latent_avg.shape[0] != config.style_dim:
        raise CheckpointError(f"{path}: latent_avg has {latent_avg.shape[0]} values, the generator's style_dim is {config.style_dim}. Expected {SOURCES['stylegan2']}.")
    return gen.eval(), latent_avg


def load_stylegan2_discriminator(path: str | os.PathLike, impl: str = "fast") -> Discriminator:
    """The image discriminator ``d`` of a StyleGAN2 file (only training files carry it)."""
    obj = _read(path, "stylegan2")
    _require(obj, path, "stylegan2", ("d",))
    if "config" in obj and "discriminator" in obj["config"]:
        config = DiscriminatorConfig(**obj["config"]["discriminator"])
    else:
        config = _infer(infer_discriminator_config, obj["d"], path, "stylegan2", "discriminator")
    disc = Discriminator.from_config(config, impl=impl)
    _load_strict(disc, obj["d"], path, "stylegan2", "discriminator (d)")
    return disc


def save_stylegan2(
    path: str | os.PathLike, g_ema: Generator, latent_avg: torch.Tensor, g: Generator | None = None, d: Discriminator | None = None, extra: dict | None = None
) -> None:
    """Write the rosinality layout (``g_ema``, ``latent_avg`` [style_dim], optional ``g``, ``d``) + ``config``."""
    config = {"generator": g_ema.config.to_dict()}
    obj: dict = {"g_ema": g_ema.state_dict(), "latent_avg": latent_avg.detach().reshape(-1).cpu()}
    if g is not None:
        obj["g"] = g.state_dict()
    if d is not None:
        obj["d"] = d.state_dict()
        config["discriminator"] = d.config.to_dict()
    obj["config"] = config
    obj.update(extra or {})
    _save(obj, path)


def _save(obj: dict, path: str | os.PathLike) -> None:
    """torch.save atomically: an interrupted write leaves the old file (or none), never a truncated one."""
    with atomic_path(path) as temp:
        torch.save(obj, temp)


# --------------------------------------------------------------------------- pSp / e4e
def _load_inversion(path, kind: str, encoder_cls) -> InversionNet:
    obj = _read(path, kind, allow_pickle=True)
    _require(obj, path, kind, ("state_dict", "latent_avg"))
    state = obj["state_dict"]
    opts = obj.get("opts") or {}
    if not isinstance(opts, dict):
        opts = dict(vars(opts)) if hasattr(opts, "__dict__") else {}
    other = {"e4e": "GradualStyleEncoder", "psp": "Encoder4Editing"}[kind]
    if opts.get("encoder_type") == other:
        loader = "load_psp" if kind == "e4e" else "load_e4e"
        raise CheckpointError(f"{path} holds a {other} (opts['encoder_type']), not a {kind} encoder; load it with megafr.nets.checkpoints.{loader}.")
    enc_state, dec_state = _sub(state, "encoder."), _sub(state, "decoder.")
    if not enc_state:
        raise CheckpointError(f"{path}: state_dict has no 'encoder.*' keys; found {_keys_summary(state)}. Expected {SOURCES[kind]}.")
    config = obj.get("config") or {}
    enc_config = EncoderConfig.from_dict(config["encoder"]) if "encoder" in config else _infer(infer_encoder_config, enc_state, path, kind, "encoder")
    encoder = encoder_cls(enc_config)
    _load_strict(encoder, enc_state, path, kind, "encoder")
    decoder = None
    if dec_state:
        gen_config = GeneratorConfig(**config["generator"]) if "generator" in config else _infer(infer_generator_config, dec_state, path, kind, "decoder")
        if gen_config.n_latent != enc_config.n_latent:
            raise CheckpointError(f"{path}: encoder has {enc_config.n_latent} W+ entries, decoder {gen_config.n_latent}. Expected {SOURCES[kind]}.")
        decoder = Generator.from_config(gen_config)
        _load_strict(decoder, dec_state, path, kind, "decoder")
        decoder.eval()
    latent_avg = obj["latent_avg"].float()
    try:
        net = InversionNet(encoder, latent_avg, decoder, opts=opts)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}. Expected {SOURCES[kind]}.") from err
    return net.eval()


def load_e4e(path: str | os.PathLike) -> InversionNet:
    """e4e release (or mini) file -> InversionNet(Encoder4Editing, decoder, latent_avg); eval mode."""
    return _load_inversion(path, "e4e", Encoder4Editing)


def load_psp(path: str | os.PathLike) -> InversionNet:
    """pSp release (or mini) file -> InversionNet(GradualStyleEncoder, decoder, latent_avg); eval mode."""
    return _load_inversion(path, "psp", GradualStyleEncoder)


def load_latent_discriminator(path: str | os.PathLike) -> LatentCodesDiscriminator:
    """e4e's latent discriminator from ``discriminator_state_dict`` of an e4e file (or a plain ``mlp.*`` state dict)."""
    obj = _read(path, "e4e", allow_pickle=True)
    state = obj.get("discriminator_state_dict", obj if any(str(k).startswith("mlp.") for k in obj) else None)
    if state is None:
        raise CheckpointError(
            f"{path} has no latent discriminator: expected a 'discriminator_state_dict' entry (keys mlp.0 ... mlp.6), "
            f"found top-level keys {_keys_summary(obj.keys())}. The released e4e_ffhq_encode.pt may omit it; use an e4e "
            f"training checkpoint or one written by megafr.nets.checkpoints.save_encoder(..., discriminator=...)."
        )
    try:
        linears = _indices(state, r"mlp\.(\d+)\.weight$")
        style_dim = state["mlp.0.weight"].shape[1]
    except (KeyError, AttributeError) as err:
        raise CheckpointError(f"{path}: latent discriminator keys not understood ({err}); found {_keys_summary(state)}.") from err
    disc = LatentCodesDiscriminator(style_dim, n_mlp=len(linears))
    _load_strict(disc, state, path, "e4e", "latent discriminator")
    return disc.eval()


def save_encoder(path: str | os.PathLike, net: InversionNet, opts: dict | None = None, discriminator: LatentCodesDiscriminator | None = None, extra: dict | None = None) -> None:
    """Write the pSp / e4e layout (``state_dict`` with ``encoder.``/``decoder.``, ``opts``, ``latent_avg``) + ``config``."""
    encoder_type = "Encoder4Editing" if isinstance(net.encoder, Encoder4Editing) else "GradualStyleEncoder"
    cfg = net.encoder.config
    merged_opts = {**net.opts, **(opts or {}), "encoder_type": encoder_type, "input_nc": cfg.input_nc, "start_from_latent_avg": True}
    config: dict = {"encoder": cfg.to_dict()}
    if hasattr(net, "decoder"):
        config["generator"] = net.decoder.config.to_dict()
        merged_opts.setdefault("stylegan_size", net.decoder.config.size)
    obj: dict = {"state_dict": net.state_dict(), "opts": merged_opts, "latent_avg": net.latent_avg.detach().cpu()}
    if discriminator is not None:
        obj["discriminator_state_dict"] = discriminator.state_dict()
    obj["config"] = config
    obj.update(extra or {})
    _save(obj, path)


# --------------------------------------------------------------------------- ArcFace
def load_arcface(path: str | os.PathLike) -> ArcFace:
    """ArcFace IR-SE from a plain TreB1eN state dict (``model_ir_se50.pth`` or a mini file); eval mode."""
    obj = _read(path, "arcface")
    config_dict = obj.pop("config", None)
    if "input_layer.0.weight" not in obj or "output_layer.3.weight" not in obj:
        raise CheckpointError(
            f"{path} is not an ArcFace IR-SE state dict: expected keys under input_layer., body., output_layer. "
            f"(input_layer.0.weight, output_layer.3.weight, ...); found {_keys_summary(obj.keys())}. Expected {SOURCES['arcface']}."
        )
    config = ArcFaceConfig.from_dict(config_dict) if isinstance(config_dict, dict) else _infer(infer_arcface_config, obj, path, "arcface", "ArcFace")
    net = ArcFace(config)
    _load_strict(net, obj, path, "arcface", "ArcFace")
    return net.eval()


def save_arcface(path: str | os.PathLike, net: ArcFace) -> None:
    """Write the plain TreB1eN state dict plus a ``config`` entry."""
    obj = dict(net.state_dict())
    obj["config"] = net.config.to_dict()
    _save(obj, path)
