"""Typed run configuration: the one place where YAML becomes objects.

A run config has one section per component; each component receives only its own section::

    seed: 0
    stage: pretrain | finetune | semi
    data:    DataConfig      (dataset, archive root, preprocessing, split, labeled count, batches)
    augment: AugmentConfig   (base augmentations and the paired transform T of the MI losses)
    model:   <network's own Config>, chosen by ``model.name`` through the model registry
    method:  <method's own Config>, chosen by ``method.name`` through the registry
    optim:   OptimConfig     (RAdam/Adam, lr, warm-up factor, cosine, parameter groups)
    train:   TrainConfig     (epochs, iterations per epoch, device, AMP, checkpoints)

Unknown keys are errors that carry the key path (pydantic ``extra="forbid"``). Method configs are
declared in the method's own file (``segssl/methods/<name>.py``) as a subclass of
:class:`MethodConfig` and looked up through the registry when a config is validated.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "OptimizerSettings",
    "ParamGroupConfig",
    "PreprocessConfig",
    "RunConfig",
    "SplitConfig",
    "TrainConfig",
    "apply_overrides",
    "canonical_json",
    "config_hash",
    "did_you_mean",
    "flatten",
    "format_validation_error",
    "keyed_dump",
    "load_run_config",
    "parse_run_config",
]


class ConfigError(ValueError):
    """A configuration could not be read or validated; the message names the file and key path."""


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys forbidden.

    ``key_neutral_defaults`` names fields added after trial keys were published: while such a
    field holds its default it is left out of :func:`canonical_json` (trial keys, config hashes,
    the resume check), so the keys and checkpoints of finished trials stay valid. It still
    appears in :func:`flatten` (the recorded parameters).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    key_neutral_defaults: ClassVar[frozenset[str]] = frozenset()


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------------------- data
class PreprocessConfig(Section):
    """How raw volumes become the cached 2D slices (see ``segssl.data.preprocess``).

    Defaults follow the BIM paper's ACDC protocol: 1st/99th percentile normalisation per scan,
    in-plane resampling to 1.0 x 1.0 mm, centre crop/pad to a fixed size, slicing along the
    through-plane axis.
    """

    key_neutral_defaults: ClassVar[frozenset[str]] = frozenset({"window"})

    percentiles: tuple[float, float] = (1.0, 99.0)
    # fixed intensity window (e.g. CT Hounsfield units [-160, 240]) instead of the scan's
    # percentiles: raw intensities are clipped to [low, high] and mapped to [0, 1]
    window: tuple[float, float] | None = None
    spacing: tuple[float, float] | None = (1.0, 1.0)  # in-plane target (mm); None keeps native
    size: tuple[int, int] = (256, 256)
    fit: Literal["crop_or_pad", "resize"] = "crop_or_pad"
    reorient: bool = True  # reorient from the affine to a canonical (RAS) orientation
    # through-plane axis: "auto" = the canonical axis with the coarsest spacing (the canonical
    # S axis, axial slices, when spacings tie within 10 %); "stored" = the stored third voxel axis
    slice_axis: Literal["auto", "stored"] = "auto"
    clip: bool = True  # clip normalised intensities to [0, 1]
    crop_center: Literal["image", "label"] = "image"  # BIM centres its ACDC crop on the labels
    dtype: Literal["float16", "float32"] = "float16"  # cached image precision

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"expected 0 <= low < high <= 100, got {v}")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
            raise ValueError(f"expected a window [low, high] with low < high, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _window_or_percentiles(self) -> PreprocessConfig:
        """A window replaces the percentiles and always clips: settings of those that it would
        silently ignore are refused."""
        if self.window is None:
            return self
        default = type(self).model_fields
        if self.percentiles != default["percentiles"].default:
            raise ValueError(
                f"window {list(self.window)} replaces the scan's percentiles: set "
                f"percentiles {list(self.percentiles)} or window, not both"
            )
        if not self.clip:
            raise ValueError(
                f"window {list(self.window)} clips to [low, high] by definition; clip: false "
                "would be ignored (remove one of them)"
            )
        return self

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and min(v) <= 0:
            raise ValueError(f"spacing must be positive, got {v}")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 8:
            raise ValueError(f"size must be at least 8 x 8 pixels, got {v}")
        return v


class SplitConfig(Section):
    """Train/val/test split. Sizes are counts of split units (subjects or scans).

    ``files`` (a mapping ``train|val|test -> path of a text file with one id a line``) overrides
    the seeded split. ``unit: scan`` is the BIM paper's protocol (ED and ES are separate scans).
    """

    unit: Literal["subject", "scan"] = "subject"
    seed: int = 0
    sizes: tuple[int, int, int] | None = None  # (train, val, test); None: 70/10/20 % of units
    # "labeled" (optional): scan ids that head the labeled ordering (a fixed labeled subset)
    files: dict[Literal["train", "val", "test", "labeled"], str] | None = None


LabeledCount = Annotated[
    int | str,
    Field(description="number of labeled training scans (int) or a percentage string like '5%'"),
]


class DataConfig(Section):
    """Which dataset, where it lies, how it is split and batched."""

    dataset: str = "acdc"
    root: str = "data/acdc"  # the archive's root as it is shipped (or a synthetic one)
    # cache root (one cache per dataset + settings below it), or a cache made by
    # `segssl data prepare --out` (has a manifest.json; used as is); None: <root>/.segssl-cache
    cache: str | None = None
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    labeled_scans: LabeledCount = 1
    target: str = "all"  # "all" classes at once, or one class name for a binary task (lv, rv, myo)
    partitions: int = Field(3, ge=1)  # S partitions per volume for meta-labels
    batch_size: int = Field(8, ge=1)  # labeled batch
    unlabeled_batch_size: int = Field(8, ge=1)
    # G^D-style unlabeled batches: unlabeled_batch_size / partitions volumes x one slice per
    # partition (Chaitanya et al.); applies to the unlabeled stream
    partition_sampler: bool = False
    modality: int | str = 0  # channel of multi-modal (4D) images: index or dataset.json name
    num_workers: int = Field(0, ge=0)

    @field_validator("labeled_scans", mode="before")
    @classmethod
    def _labeled(cls, v: Any) -> int | str:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError(f"expected a count or a percentage like '5%', got {v!r}")
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"expected at least 1 labeled scan, got {v}")
            return v
        text = v.strip()
        if not text.endswith("%"):
            raise ValueError(f"expected an int or a percentage like '5%', got {v!r}")
        try:
            pct = float(text[:-1])
        except ValueError as exc:
            raise ValueError(f"expected a percentage like '5%', got {v!r}") from exc
        if not 0 < pct <= 100:
            raise ValueError(f"percentage must be in (0, 100], got {v!r}")
        return text


# ------------------------------------------------------------------------------------ augment
class AugmentConfig(Section):
    """Base augmentations for training batches and the paired transform T of the MI losses.

    Ranges are the BIM paper's (Appendix F): gamma 0.5-2.0, scale 0.8-1.3, rotation +-45 deg,
    translation +-10 %. ``crop`` is the random training crop (224 in the papers); 0 disables it.
    """

    crop: int = Field(224, ge=0)
    flip: bool = True
    rotation: float = Field(10.0, ge=0.0, le=180.0)  # base augmentation, degrees
    intensity_jitter: float = Field(0.1, ge=0.0, le=1.0)  # brightness/contrast jitter amplitude
    gamma: tuple[float, float] = (0.5, 2.0)
    scale: tuple[float, float] = (0.8, 1.3)
    paired_rotation: float = Field(45.0, ge=0.0, le=180.0)
    translation: float = Field(0.1, ge=0.0, le=0.5)
    paired_flip: bool = False  # also flip in the paired T (not in the BIM paper's T)
    paired_vflip: bool = False  # vertical flip in T (GMI's T: horizontal and vertical flips)
    # stronger base augmentation (Chaitanya et al.'s fine-tuning "data augmentation" baseline):
    # random scaling, and elastic deformation of at most elastic_alpha pixels, smoothed with a
    # Gaussian of elastic_sigma pixels, applied to a share elastic_p of the images (0: off)
    base_scale: tuple[float, float] = (1.0, 1.0)
    elastic_alpha: float = Field(0.0, ge=0.0)
    elastic_sigma: float = Field(10.0, gt=0.0)
    elastic_p: float = Field(1.0, ge=0.0, le=1.0)

    @field_validator("gamma", "scale", "base_scale")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected 0 < low <= high, got {v}")
        return v


# -------------------------------------------------------------------------------------- model
class ModelConfig(Section):
    """Base of every network's config; chosen by ``model.name`` through the model registry
    (``segssl.models.MODELS``); each architecture declares its own subclass next to its code.

    ``freeze`` lists parameter-name prefixes that are not trained (e.g. ``["Conv_1x1"]`` during
    pre-training); their BatchNorm layers also stay in eval mode (running statistics frozen).
    """

    name: str = "unet"
    freeze: tuple[str, ...] = ()

    @property
    def input_multiple(self) -> int:
        """Image sides must be divisible by this (the network's total down-sampling)."""
        raise NotImplementedError


def _default_model() -> ModelConfig:
    from segssl.models import model_config_class  # registry lives above config

    return model_config_class("unet")()


# ------------------------------------------------------------------------------------- method
class MethodConfig(Section):
    """Base of every method's config; each method file declares ``class Config(MethodConfig)``."""

    name: str


# ---------------------------------------------------------------------------------- optimiser
class ParamGroupConfig(Section):
    """Own settings of the parameters whose names start with a prefix (``optim.groups``)."""

    lr: float | None = Field(None, gt=0.0)  # base lr of the group (scaled by the schedule)
    weight_decay: float | None = Field(None, ge=0.0)


class OptimizerSettings(Section):
    """One optimiser and its LR schedule: warm-up from ``lr`` to ``lr * warmup_factor`` over
    ``warmup_epochs``, then (``schedule``) ``cosine`` decay to ~0 over the remaining epochs (BIM
    Appendix F) or ``constant`` at ``lr * warmup_factor`` (Chaitanya et al.: Adam at a constant
    lr; with ``warmup_epochs: 0`` the lr is ``lr * warmup_factor`` throughout).

    ``groups`` maps a parameter-name prefix of the method (``heads``, ``model.Conv1``,
    ``heads.cluster``; the longest matching prefix wins) to its own lr / weight decay; a prefix
    that matches no trainable parameter is an error before training.
    """

    name: Literal["radam", "adam", "sgd"] = "radam"
    lr: float = Field(5e-7, gt=0.0)
    warmup_factor: float = Field(400.0, ge=1.0)
    warmup_epochs: int = Field(10, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"  # after the warm-up
    weight_decay: float = Field(1e-5, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0)  # max global grad norm; None: no clipping
    betas: tuple[float, float] = (0.9, 0.999)  # RAdam / Adam
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD only
    groups: dict[str, ParamGroupConfig] = {}

    key_neutral_defaults: ClassVar[frozenset[str]] = frozenset({"schedule"})

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"expected two values in [0, 1), got {v}")
        return v


class OptimConfig(OptimizerSettings):
    """The main optimiser (every trainable parameter a method does not step itself) and, in
    ``extra``, the settings of optimisers a method owns (``Method.optimizers``, e.g. a
    discriminator's); an owned optimiser not listed there uses the main settings without groups.
    """

    extra: dict[str, OptimizerSettings] = {}


# -------------------------------------------------------------------------------------- train
class TrainConfig(Section):
    """Loop settings. ``device: auto`` picks CUDA when available; AMP and channels_last are only
    ever enabled on CUDA.

    ``channels_last: auto`` is on exactly on CUDA. ``amp: auto`` is fp32 everywhere (on CUDA
    with cuDNN's TF32 convolutions, PyTorch's default): at the papers' model size the fastest
    measured for the supervised step, and as fast as bf16 for bim without cuDNN determinism
    (bench/gpu_check.py, H200, 2026-11-28, U-Net width 16, 224 px, batch 16, K=40, ms per step
    with channels_last: baseline fp32 13.0, bf16 14.5, fp16 + stock scaler 15.9, fp16 +
    sync-free scaler 34.4; bim 46.3, 45.9, 46.0, 68.4; with ``cudnn.deterministic``, the
    ``deterministic`` default, one run: baseline fp32 11.5, bf16 14.0, bim 45.5, 40.4, so bf16
    was 11 % faster for bim there); the engine's own loop (bench/gpu_engine_check.py, 128 px,
    iterations/s, fp32 / bf16 / fp16 stock / fp16 sync-free): baseline 64.6, 53.6, 50.8, 25.5;
    bim 30.9, 24.7, 24.5, 16.2. ``amp: on`` is autocast in ``amp_dtype``: ``float16`` with a
    gradient scaler, ``bfloat16`` without one (its range is fp32's). ``grad_scaler`` picks
    float16's scaler: ``stock`` is ``torch.amp.GradScaler`` (one host read of the overflow flag
    per step); ``sync_free`` is :class:`segssl.engine.amp.SyncFreeGradScaler`, which reads
    nothing back but copies every parameter and optimiser state tensor per step (slower where
    measured); with it, Adam and RAdam are built ``capturable`` (step counters on the GPU). A
    resumed run's optimisers take this run's ``capturable`` flag, whatever device the checkpoint
    was written on (a changed AMP setting is another config: its checkpoint is not resumed).
    Both scalers give the same weights. ``amp_dtype`` and ``grad_scaler`` set without
    ``amp: on`` (they would be ignored) and ``sync_free`` with ``bfloat16`` (no scaler) are
    refused. Before 2026-11-28 ``amp: auto`` on CUDA was float16 with the sync-free scaler under
    the same trial keys: CUDA results and checkpoints of that time were trained in float16 (CPU
    runs were fp32 then too)."""

    key_neutral_defaults: ClassVar[frozenset[str]] = frozenset({"amp_dtype", "grad_scaler"})

    epochs: int = Field(50, ge=1)
    iters_per_epoch: int = Field(200, ge=1)
    device: str = "auto"
    amp: Literal["auto", "on", "off"] = "auto"  # auto: fp32 (fastest measured, see above)
    amp_dtype: Literal["float16", "bfloat16"] = "float16"  # autocast dtype with amp: on
    grad_scaler: Literal["stock", "sync_free"] = "stock"  # float16's scaler
    channels_last: Literal["auto", "on", "off"] = "auto"
    # CPU runs only (glibc): "keep" reuses freed memory instead of mapping every large tensor
    # afresh (M_MMAP_MAX=0, no trimming); process-wide; results are unchanged, speed is not
    cpu_allocator: Literal["default", "keep"] = "keep"
    init_from: str | None = None  # checkpoint to start from (fine-tuning)
    init_strict: bool = True  # every tensor of the model must be in init_from
    # explicit partial loading: only these parameter-name prefixes (empty: all), minus excluded
    init_only: tuple[str, ...] = ()  # e.g. ["Conv1", "Conv2", "Conv3", "Conv4", "Conv5"]
    init_exclude: tuple[str, ...] = ()  # e.g. ["Conv_1x1"] when the class count differs
    val_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    save_best: bool = True
    pictures: int = Field(
        4, ge=0
    )  # validation slices drawn as cluster pictures (clustering methods)
    progress: bool = True
    deterministic: bool = True

    @model_validator(mode="after")
    def _amp_settings(self) -> TrainConfig:
        """Refuse AMP settings that would be silently ignored."""
        fields = type(self).model_fields
        if self.amp != "on":
            for key in ("amp_dtype", "grad_scaler"):
                value = getattr(self, key)
                if value != fields[key].default:
                    raise ValueError(
                        f"{key}={value!r} takes effect only with amp: on (amp={self.amp!r} "
                        "trains in fp32); set amp: on or remove it"
                    )
        if self.amp_dtype == "bfloat16" and self.grad_scaler != "stock":
            raise ValueError(
                f"grad_scaler={self.grad_scaler!r} with amp_dtype='bfloat16': bfloat16 autocast "
                "uses no gradient scaler (remove grad_scaler or use amp_dtype: float16)"
            )
        return self


# ------------------------------------------------------------------------------------ metrics
class MetricsConfig(Section):
    """Definitions of the test metrics (see :mod:`segssl.metrics`; every caption states them).

    ``hd95``: ``max`` of the two directed 95th percentiles (MONAI, DeepMind surface-distance,
    MetricsReloaded; the default) or ``pooled`` (medpy). ``nsd_tolerance``: the tolerance of the
    normalised surface Dice in mm. ``both_empty``: ``perfect`` (Dice 1, distance 0) or
    ``exclude``; ``one_empty``: ``exclude`` (HD95/ASD left out, counted) or ``worst`` (the volume
    diagonal). ``per_scan``: also log each test scan's Dice (``test/scan/dsc/<i>``), the variance
    unit "over test scans" of a table.
    """

    hd95: Literal["max", "pooled"] = "max"
    nsd_tolerance: float = Field(1.0, gt=0)
    both_empty: Literal["perfect", "exclude"] = "perfect"
    one_empty: Literal["exclude", "worst"] = "exclude"
    per_scan: bool = True


# ---------------------------------------------------------------------------------------- run
Stage = Literal["pretrain", "finetune", "semi"]


class RunConfig(Section):
    """One training run: everything the engine needs, nothing else."""

    seed: int = 0
    stage: Stage = "semi"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: SerializeAsAny[ModelConfig] = Field(default_factory=_default_model)
    method: SerializeAsAny[MethodConfig]  # dump the method's own fields, not just the base
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> ModelConfig:
        if isinstance(v, ModelConfig):
            return v
        if not isinstance(v, Mapping):
            raise ValueError("expected a mapping (model.name selects the architecture)")
        from segssl.models import model_config_class  # registry lives above config

        return model_config_class(str(v.get("name", "unet"))).model_validate(dict(v))

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> MethodConfig:
        if isinstance(v, MethodConfig):
            return v
        if not isinstance(v, Mapping) or "name" not in v:
            raise ValueError("expected a mapping with a 'name' (see `segssl methods`)")
        from segssl.methods import method_config_class  # registry lives above config

        return method_config_class(str(v["name"])).model_validate(dict(v))

    @model_validator(mode="before")
    @classmethod
    def _method_pins(cls, raw: Any) -> Any:
        """Apply settings a method pins in other sections (its class attribute ``pinned``,
        e.g. ``full`` uses every training label: ``{"data.labeled_scans": "100%"}``) and its
        per-dataset defaults (class attribute ``dataset_defaults``: dataset name -> method
        settings, e.g. GMI's lambdas per dataset) for the method keys the config does not give."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("method"), Mapping):
            return raw
        from segssl.methods import REGISTRY

        method_cls = REGISTRY.get(str(raw["method"].get("name")))
        pinned = getattr(method_cls, "pinned", None) or {}
        data = raw.get("data")
        dataset = (
            data.dataset
            if isinstance(data, DataConfig)
            else (data or {}).get("dataset", DataConfig.model_fields["dataset"].default)
            if isinstance(data, Mapping | type(None))
            else None
        )
        per_dataset = getattr(method_cls, "dataset_defaults", None) or {}
        defaults = {k: v for k, v in per_dataset.get(dataset, {}).items() if k not in raw["method"]}
        if not pinned and not defaults:
            return raw
        out = {
            k: v.model_dump() if isinstance(v, BaseModel) else json.loads(json.dumps(v))
            for k, v in raw.items()
        }
        for dotted, value in pinned.items():
            set_path(out, dotted, value)
        out["method"].update(defaults)
        return out

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        crop = self.augment.crop
        h, w = self.data.preprocess.size
        if crop and crop > min(h, w):
            raise ValueError(
                f"augment.crop={crop} is larger than the preprocessed image "
                f"data.preprocess.size={tuple(self.data.preprocess.size)}"
            )
        stride = self.model.input_multiple
        # whole slices train unpadded (only evaluation pads): both sides must divide
        for side in (crop,) if crop else (h, w):
            if side % stride:
                raise ValueError(
                    f"the training image side {side} must be divisible by {stride} (the "
                    f"down-sampling of model {self.model.name!r}); it is set by "
                    f"{self.training_size_key()}"
                )
        from segssl.methods import REGISTRY  # registry lives above config

        check = getattr(REGISTRY.get(self.method.name), "check_config", None)
        if check is not None:
            check(self)  # e.g. local regions that must fit a feature map
        return self

    def training_size(self) -> tuple[int, int]:
        """``(H, W)`` of the training input: the random crop, or the preprocessed slice."""
        crop = self.augment.crop
        return (crop, crop) if crop else tuple(self.data.preprocess.size)  # type: ignore[return-value]

    def training_size_key(self) -> str:
        """The key that sets :meth:`training_size`, with its value (for messages)."""
        if self.augment.crop:
            return f"augment.crop={self.augment.crop}"
        return f"data.preprocess.size={list(self.data.preprocess.size)}"


# ----------------------------------------------------------------------------- YAML and dicts
def format_validation_error(
    exc: ValidationError,
    source: str,
    what: str = "configuration",
    strip_value_prefix: bool = False,
    model: type[BaseModel] | None = None,
) -> str:
    """``<source>: invalid <what>`` then one ``key.path: message`` line per error.

    Unknown keys read ``unknown key``, with a "did you mean" among the keys ``model`` (the
    validated model class) accepts at that path; ``strip_value_prefix`` drops pydantic's
    ``Value error, ``.
    """
    lines = [f"{source}: invalid {what}"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            if model is not None and err["loc"]:
                msg += did_you_mean(str(err["loc"][-1]), _keys_at(model, err["loc"][:-1]))
        if strip_value_prefix:
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  {path or '<root>'}: {msg}")
    return "\n".join(lines)


def _annotation_model(ann: Any) -> Any:
    """The pydantic model (or ``dict[...]`` value annotation holder) inside an annotation."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if get_origin(ann) in (dict, Mapping):
        return ann
    for arg in get_args(ann):
        found = _annotation_model(arg)
        if found is not None:
            return found
    return None


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the model accepts at the mapping ``loc`` (empty when it cannot tell)."""
    node: Any = model
    for part in loc:
        if isinstance(part, int) or str(part).startswith("function-"):
            continue
        if get_origin(node) in (dict, Mapping):  # ``part`` is a free key of the mapping
            node = _annotation_model(get_args(node)[-1])
            continue
        fields = getattr(node, "model_fields", None)
        if not fields or part not in fields:
            return []
        node = _annotation_model(fields[part].annotation)
    return list(getattr(node, "model_fields", None) or [])


def _run_model(raw: Any) -> type[BaseModel]:
    """:class:`RunConfig` with the ``method`` section's own config class, for key suggestions."""
    name = raw.get("method", {}).get("name") if isinstance(raw, Mapping) else None
    if not isinstance(raw.get("method") if isinstance(raw, Mapping) else None, Mapping):
        return RunConfig
    try:
        from segssl.methods import method_config_class

        method_cls = method_config_class(str(name))
    except (KeyError, ValueError, ImportError):
        return RunConfig
    try:
        return create_model(  # type: ignore[call-overload, no-any-return]
            "RunConfigKeys", __base__=RunConfig, method=(method_cls, ...)
        )
    except Exception:  # noqa: BLE001 - only suggestions depend on it
        return RunConfig


def parse_run_config(raw: Mapping[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a plain mapping into a :class:`RunConfig`; raise :class:`ConfigError` on failure."""
    if not isinstance(raw, Mapping):
        kind = type(raw).__name__
        raise ConfigError(f"{source}: expected a mapping at the top level, got {kind}")
    try:
        return RunConfig.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, model=_run_model(raw))) from None
    except (KeyError, ValueError) as exc:  # registry lookups raised outside pydantic
        raise ConfigError(f"{source}: {exc}") from None


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping of a YAML document repeats a key."""


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (at any depth).

    Plain YAML keeps the last of two equal keys, so ``seeds`` written twice silently plans half
    the trials; here it is an error naming the line of both occurrences and the key.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):  # own keys only: a merge (<<) may be overridden
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    raise DuplicateKeyError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str, source: str = "<yaml>") -> Any:
    """Parse YAML text with :class:`StrictSafeLoader` (safe types only, no duplicate keys).

    Raises:
        ConfigError: invalid YAML or a duplicated key: ``source``, the line and the key.
    """
    try:
        return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(f"{source}: line {line}: {exc.problem}; remove one of them") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file with :func:`yaml_load` (duplicate keys refused); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    return yaml_load(p.read_text(), str(p))


def set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw['a']['b'] = value`` for ``dotted='a.b'``, creating mappings as needed."""
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a mapping")
        node = nxt
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a copy of ``raw``."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, text = item.split("=", 1)
        set_path(out, key.strip(), yaml_load(text, f"override {item!r}"))
    return out


def load_run_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """Read, override and validate a run config file."""
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_run_config(apply_overrides(raw, overrides), source=str(path))


# --------------------------------------------------------------------------- hashing, flatten
def _drop_neutral(model: BaseModel, data: Any) -> Any:
    """``data`` (``model``'s JSON dump) without the ``key_neutral_defaults`` fields that hold
    their default, at every depth."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    neutral = getattr(type(model), "key_neutral_defaults", frozenset())
    for name, field in type(model).model_fields.items():
        if name not in out:
            continue
        value = getattr(model, name)
        if name in neutral and value == field.get_default(call_default_factory=True):
            del out[name]
        else:
            out[name] = _drop_in(value, out[name])
    return out


def _drop_in(value: Any, data: Any) -> Any:
    if isinstance(value, BaseModel):
        return _drop_neutral(value, data)
    if isinstance(value, Mapping) and isinstance(data, dict):
        return {k: _drop_in(value[k], v) if k in value else v for k, v in data.items()}
    if isinstance(value, list | tuple) and isinstance(data, list) and len(value) == len(data):
        return [_drop_in(v, d) for v, d in zip(value, data, strict=True)]
    return data


def keyed_dump(model: BaseModel) -> dict[str, Any]:
    """``model.model_dump(mode="json")`` without the fields added after trial keys were
    published while they hold their default (``Section.key_neutral_defaults``): what trial keys,
    config hashes and the resume check are computed from."""
    return _drop_neutral(model, model.model_dump(mode="json"))


def _normalise(obj: Any, keyed: bool = False) -> Any:
    if isinstance(obj, BaseModel):
        return _normalise(keyed_dump(obj) if keyed else obj.model_dump(mode="json"), keyed)
    if isinstance(obj, Mapping):
        return {str(k): _normalise(v, keyed) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_normalise(v, keyed) for v in obj]
    if isinstance(obj, float):
        if math.isfinite(obj) and obj == int(obj) and abs(obj) < 2**53:
            return int(obj)  # 1.0 and 1 hash the same
        return float(repr(obj)) if math.isfinite(obj) else str(obj)
    return obj


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, integral floats written as ints; config fields
    added after keys were published are left out while at their default (:func:`keyed_dump`)."""
    return json.dumps(_normalise(obj, keyed=True), sort_keys=True, separators=(",", ":"))


def config_hash(obj: Any, length: int = 16) -> str:
    """sha256 of :func:`canonical_json`, truncated to ``length`` hex digits."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config (model or mapping) to ``{"method.alpha": 0.5, ...}``; lists stay values."""
    data = _normalise(obj)
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    else:
        out[prefix] = data
    return out
