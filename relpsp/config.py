"""Typed configuration: frozen dataclasses, TOML experiment files, command-line overrides.

A TOML file has sections ``[model]``, ``[data]`` and ``[train]`` whose keys are the fields below;
flags override single fields. ``extends = "base.toml"`` makes a file a set of changes to another file
(see ``load_toml``). Every checkpoint and results file stores the resolved config.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from relpsp._fileio import why_not_a_file

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "Setting",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "config_to_toml",
    "find_config",
    "list_settings",
    "load_toml",
    "packaged_configs",
    "parse_override",
]


_T = TypeVar("_T")


def _setting(default: _T, doc: str) -> _T:
    """A config field with its meaning kept beside it (``list_settings`` and ``relpsp train --show-config``
    print it, docs/GUIDE.md tabulates it)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class ModelConfig:
    """The network: architecture string (``relpsp.arch``), input shape and neuron settings."""

    arch: str = _setting(
        "784-800-10", "architecture string (relpsp.arch), e.g. 784-800-10 or 16C5-P2-32C5-P2-800-128-10"
    )
    input_shape: tuple[int, ...] = _setting((1, 28, 28), "shape of one sample, [C, H, W] for images, [N] for features")
    theta: float = _setting(1.0, "firing threshold of every spiking neuron")
    t_max: float = _setting(math.inf, "cut-off of every spiking layer: a later spike is dropped; inf = none")
    t_in: float = _setting(1.0, "input coding window: intensity x fires at t_in * (1 - x)")
    zero_fires: bool = _setting(False, "whether intensity 0 spikes (at t_in) or never")
    init_mean: float = _setting(5.0, "initial weight mean = init_mean * theta / fan_in")
    init_std: float = _setting(1.0, "initial weight std = init_std * theta / sqrt(fan_in)")
    init_centered: bool = _setting(False, "shift each neuron's initial weights to sum to exactly init_mean * theta")
    kernel: str = _setting(
        "relpsp",
        '"relpsp" (the paper\'s neuron) | "alpha" (decaying baseline, dense layers only) | "window" (per-layer'
        " time windows, dynamic threshold: relpsp.window; a departure)",
    )
    kernel_tau: float = _setting(1.0, "alpha kernel: time to the PSP peak")
    window: float = _setting(1.0, "window kernel: length of every spiking layer's time window")
    weight_norm: bool = _setting(
        False, "window kernel: standardised weights, each neuron's summing to init_mean (a departure)"
    )
    w_sum_min: float = _setting(
        1e-3, "relpsp kernel: the backward's lower clamp of a firing neuron's causal weight sum W_j (training only)"
    )


@dataclass(frozen=True)
class DataConfig:
    """The dataset and how its samples are prepared (a TOML file's ``[data]`` section)."""

    dataset: str = _setting(
        "mnist",
        "mnist | mnist-pkl | fashion-mnist | caltech-face-motorbike | yinyang | cifar10, or your own FILE.npz (docs/DATA.md)",
    )
    data_dir: str | None = _setting(None, "dataset folder; unset: $RELPSP_DATA or ~/.cache/relpsp")
    val_size: int = _setting(
        0, "samples held out of the training set for validation, seeded (refused for Yin-Yang, which has its own)"
    )
    train_size: int = _setting(0, "train on a seeded random subset of this many samples; 0 = the whole training set")
    augment: bool = _setting(
        False, "training images only: random shifts of up to max_shift pixels, and the options below"
    )
    max_shift: int = _setting(2, "with augment: largest shift in pixels, in each direction")
    flip: bool = _setting(False, "with augment: also mirror each image left-right with probability 1/2")
    max_rotation: float = _setting(
        0.0, "with augment: rotate by a uniform angle in [-max_rotation, max_rotation] degrees"
    )
    max_scale: float = _setting(0.0, "with augment: scale about the centre by a uniform factor in [1 - s, 1 + s]")
    elastic_alpha: float = _setting(0.0, "with augment: elastic distortion, displacement scale in pixels (0: none)")
    elastic_sigma: float = _setting(
        4.0, "with elastic_alpha: smoothness of the displacement field, Gaussian sigma in pixels"
    )
    invert: bool = _setting(False, "image sets: x -> 1 - x before the latency code (dark pixels fire first)")
    dog: bool = _setting(
        False, "image sets: difference-of-Gaussians ON/OFF contrast maps (C channels -> 2C), after invert"
    )
    dog_sigmas: tuple[float, ...] = _setting((1.0, 2.0), "with dog: centre and surround sigma in pixels (7x7 window)")
    dog_threshold: float = _setting(0.0, "with dog: contrasts below this fraction of the image's largest never fire")
    bias_input: float = _setting(-1.0, "feature sets (Yin-Yang): constant extra input of this intensity; < 0: none")
    image_size: tuple[int, ...] = _setting((), "image folders (Caltech): [H, W]; empty: the dataset's default")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, loss, regularisers and where the run executes (a TOML file's ``[train]`` section)."""

    epochs: int = _setting(30, "passes over the training set")
    batch_size: int = _setting(256, "training batch (the global batch when data-parallel)")
    lr: float = _setting(3e-4, "learning rate (the peak, under the cosine schedule)")
    lr_schedule: str = _setting("cosine", '"cosine" (per step, from lr towards 0 at the end of the run) | "constant"')
    weight_decay: float = _setting(0.0, "the optimizer's weight decay (decoupled for adamw)")
    grad_clip: float = _setting(0.0, "largest global L2 norm of the gradient per step (rescaled above it); 0 = off")
    ema_decay: float = _setting(0.0, "exponential moving average of the weights, evaluated and saved; 0 = off")
    init_from: str | None = _setting(
        None,
        "start from this checkpoint's (or run folder's) network instead of random weights: the same arch, input"
        " shape and kernel; a fresh optimizer and schedule (fine-tuning); unset: random weights",
    )
    optimizer: str = _setting("adam", '"adam" | "adamw" | "sgd" (momentum 0.9)')
    seed: int = _setting(0, "seed of the initial weights, data order, validation split, augmentation and dropout masks")
    device: str = _setting("cpu", "cpu | cuda | cuda:N")
    backend: str = _setting("auto", "auto | torch | numba | triton (auto: numba on the CPU, triton on CUDA)")
    tau: float = _setting(0.1, "time scale of the loss: softmax(-t_out / tau); 1 = the plain form")
    label_smoothing: float = _setting(0.0, "training loss only: the target puts this mass evenly on all K classes")
    silent_margin: float = _setting(
        1.0, "the loss counts a silent output as firing this long after the batch's latest output spike"
    )
    silent_penalty: float = _setting(0.0, "weight of relpsp.functional.silent_neuron_penalty, summed over layers")
    target_penalty: float = _setting(
        0.0, "the same term on the correct output only where silent (window: held at its end)"
    )
    spike_dropout: float = _setting(0.0, "training only: drop each input spike of a dense layer with this probability")
    spike_dropout_conv: float = _setting(0.0, "the same for each input spike of a convolution layer (pixels included)")
    spike_jitter: float = _setting(
        0.0, "training only: move every spike (input and ReL-PSP layers) by Gaussian noise of this sigma; 0 = off"
    )
    checkpoint_every: int = _setting(0, "steps between mid-epoch checkpoints; 0 = end of each epoch only")
    eval_batch_size: int = _setting(1000, "batch of every evaluation")
    threads: int = _setting(0, "torch/numba threads; 0 = all cores (shared between the processes of one machine)")


@dataclass(frozen=True)
class Setting:
    """One key of an experiment file: its section, name, type (as written in the code), default and meaning."""

    section: str
    key: str
    type: str
    default: Any
    doc: str

    @property
    def default_text(self) -> str:
        """The default as an experiment file writes it (``inf``, ``true``, ``[1, 28, 28]``; ``(unset)`` for none)."""
        return "(unset)" if self.default is None else _toml_value(self.default)


def list_settings() -> list[Setting]:
    """Every key of the ``[model]``, ``[data]`` and ``[train]`` sections, in the order of the code."""
    return [
        Setting(section, f.name, str(f.type), f.default, f.metadata.get("doc", ""))
        for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig))
        for f in dataclasses.fields(cls)
    ]


@dataclass(frozen=True)
class Config:
    """One experiment: ``model``, ``data`` and ``train``, as in a TOML file (``relpsp.train.fit`` runs it)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def _coerce(cls: type, name: str, value: Any) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = f.default
    if isinstance(default, tuple):
        floats = bool(default) and all(isinstance(v, float) for v in default)
        kinds = (int, float) if floats else (int,)
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, kinds) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(
                f"{cls.__name__}.{name} must be a list of {'numbers' if floats else 'integers'}, got {value!r}"
            )
        return tuple(float(v) for v in value) if floats else tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{cls.__name__}.{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{cls.__name__}.{name} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str) and re.fullmatch(r"[+-]?(inf|infinity)", value, re.IGNORECASE):
            return -math.inf if value.startswith("-") else math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{cls.__name__}.{name} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer literal beyond the float range
            raise ValueError(f"{cls.__name__}.{name} is out of the range of a float, got {value!r}") from None
        if math.isnan(number):
            raise ValueError(f"{cls.__name__}.{name} must be a number, got {value!r}")
        return number
    if value is None and default is None:  # an optional setting left unset (data_dir)
        return value
    if not isinstance(value, str):
        raise ValueError(f"{cls.__name__}.{name} must be a string, got {value!r}")
    return value


def parse_override(section: str, key: str, text: str) -> Any:
    """The value of a command-line override ``SECTION.KEY=TEXT``, read by the field's type: a number field
    takes any Python float or int literal (``.2``, ``1.``, ``+1e-3``, ``inf``), a string field takes the text
    as it is (``2024`` stays a string), lists and booleans are JSON (``[1,28,28]``, ``true``). Text that does
    not read as the field's type is passed on unchanged, so ``config_from_dict`` names the field in its
    error; an unknown section or key is left for it to report too."""
    cls = _SECTIONS.get(section)
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls is not None else {}
    if key not in fields:
        return _json_or_text(text)
    default = fields[key].default
    if isinstance(default, bool) or isinstance(default, tuple):
        return _json_or_text(text)
    if isinstance(default, int):
        try:
            return int(text.strip())
        except ValueError:
            return text
    if isinstance(default, float):
        try:
            return float(text.strip())
        except ValueError:
            return text
    value = _json_or_text(text)  # a string field: a JSON string literal loses its quotes, the rest stays text
    return value if isinstance(value, str) or (value is None and default is None) else text


def _json_or_text(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_from_dict(d: dict[str, Any], base: Config | None = None) -> Config:
    """Apply ``{"model": {...}, "data": {...}, "train": {...}}`` on ``base`` (default: defaults)."""
    base = base or Config()
    if not isinstance(d, dict):
        raise ValueError(f"a config must be a table/dict of sections, got {type(d).__name__}")
    parts = {}
    for section, cls in _SECTIONS.items():
        raw = d.get(section, {})
        if not isinstance(raw, dict):
            raise ValueError(f"[{section}] must be a table of keys, got {raw!r}")
        values = dict(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            import difflib

            near = {m for k in unknown for m in difflib.get_close_matches(k, known, n=1)}
            hint = f" (did you mean {', '.join(repr(m) for m in sorted(near))}?)" if near else ""
            raise ValueError(
                f"unknown key(s) in [{section}]: {sorted(unknown)}{hint}; known: {sorted(known)}"
                " (relpsp train --show-config lists them with their meanings)"
            )
        updates = {k: _coerce(cls, k, v) for k, v in values.items()}
        parts[section] = dataclasses.replace(getattr(base, section), **updates)
    extra = set(d) - set(_SECTIONS) - {"name", "description"}
    if extra:
        raise ValueError(f"unknown section(s) {sorted(extra)}; expected {sorted(_SECTIONS)}")
    return Config(**parts)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """JSON-friendly dict (infinities written as the strings "inf" and "-inf", which ``config_from_dict``
    reads back)."""

    def clean(v: Any) -> Any:
        if isinstance(v, os.PathLike):  # a data_dir given as a Path in Python: its text, as TOML would give it
            return os.fspath(v)
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if isinstance(v, tuple):
            return list(v)
        return v

    return {s: {k: clean(v) for k, v in dataclasses.asdict(getattr(cfg, s)).items()} for s in _SECTIONS}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    import json

    return json.dumps(os.fspath(v) if isinstance(v, os.PathLike) else v, ensure_ascii=False)


def config_to_toml(cfg: Config, *, comments: bool = True) -> str:
    """``cfg`` as an experiment file: every key of ``[model]``, ``[data]`` and ``[train]`` with its value,
    and with ``comments`` its meaning as a comment (``list_settings``). ``load_toml`` and
    ``config_from_dict`` read it back to ``cfg``; an unset optional key (``data.data_dir = None``) is
    written commented out, since TOML has no null."""
    lines: list[str] = []
    by_section: dict[str, list[Setting]] = {}
    for st in list_settings():
        by_section.setdefault(st.section, []).append(st)
    for section, settings in by_section.items():
        lines.append(("\n" if lines else "") + f"[{section}]")
        values = getattr(cfg, section)
        for st in settings:
            v = getattr(values, st.key)
            text = f"# {st.key} = (unset)" if v is None else f"{st.key} = {_toml_value(v)}"
            lines.append(f"{text}  # {st.doc}" if comments and st.doc else text)
    return "\n".join(lines) + "\n"


_MAX_EXTENDS = 16

#: the experiment files shipped with the package (in the repository, a link to ``configs/``)
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> dict[str, str]:
    """Name -> the first sentence of the opening comment of every experiment file shipped with relpsp,
    sorted by name."""
    out = {}
    for p in sorted(PACKAGED_CONFIG_DIR.glob("*.toml")):
        lines = p.read_text(encoding="utf-8").splitlines()
        comment = []
        for line in lines:
            if not line.startswith("#"):
                break
            comment.append(line[1:].strip())
        out[p.stem] = _first_sentence(" ".join(comment))
    return out


_ABBREVIATIONS = ("et al.", "e.g.", "i.e.", "cf.", "vs.")


def _first_sentence(text: str, limit: int = 120) -> str:
    """The text up to its first full stop that ends a sentence (not "et al." or "e.g."), cut to ``limit``
    characters with an ellipsis."""
    end = len(text)
    for m in re.finditer(r"\.(?=\s)", text):
        if not text[: m.end()].endswith(_ABBREVIATIONS):
            end = m.end()
            break
    first = text[:end]
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def find_config(name: str | Path) -> Path:
    """The experiment file ``name``: a path to a file, or else the name of one shipped with relpsp
    (``"yinyang"`` or ``"yinyang.toml"``, see ``packaged_configs``). A file at the path wins."""
    path = Path(name)
    if len(path.parts) != 1 and not path.exists() and (PACKAGED_CONFIG_DIR / f"{path.stem}.toml").is_file():
        raise ValueError(
            f"config file {path} does not exist here ({Path.cwd()}); the experiment of that name shipped with"
            f" relpsp runs from anywhere as: relpsp train {path.stem}"
        )
    if path.is_file() or len(path.parts) != 1:  # a folder of the name does not hide a shipped config
        return path
    shipped = PACKAGED_CONFIG_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if shipped.is_file():
        return shipped
    raise ValueError(
        f"config {str(name)!r} is neither a file nor the name of an experiment shipped with relpsp "
        "(relpsp train --list-configs lists them)"
    )


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML experiment file into a dict of sections.

    A top-level ``extends = "other.toml"`` (a path relative to this file's folder) starts from the
    sections of that file, itself read this way; this file's keys then replace the inherited ones key
    by key. ``name`` and ``description`` are never inherited. A cycle, a missing file and a chain of
    more than 16 files are errors.
    """
    return _load_toml(Path(path), ())


def _read_toml(p: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    if not p.is_file():
        raise ValueError(f"config file {p} {why_not_a_file(p)}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {p} is not a UTF-8 text (TOML) file ({e.reason} at byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {p} is not valid TOML: {e}") from e


def _load_toml(p: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    raw = _read_toml(p)
    parent_name = raw.pop("extends", None)
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str) or not parent_name:
        raise ValueError(f"config file {p}: extends must be a file name (a string), got {parent_name!r}")
    chain = (*chain, p.resolve())
    parent_path = p.parent / parent_name
    if (resolved := parent_path.resolve()) in chain:
        names = " -> ".join(str(c) for c in (*chain, resolved))
        raise ValueError(f"config file {p}: extends forms a cycle: {names}")
    if not parent_path.is_file():
        raise ValueError(f"config file {p}: extends {parent_name!r}, but {parent_path} {why_not_a_file(parent_path)}")
    if len(chain) >= _MAX_EXTENDS:
        raise ValueError(f"config file {p}: more than {_MAX_EXTENDS} files in its extends chain")
    merged = {k: v for k, v in _load_toml(parent_path, chain).items() if k not in ("name", "description")}
    for key, value in raw.items():
        inherited = merged.get(key)
        if key in _SECTIONS and isinstance(value, dict) and isinstance(inherited, dict):
            merged[key] = {**inherited, **value}
        else:
            merged[key] = value
    return merged
